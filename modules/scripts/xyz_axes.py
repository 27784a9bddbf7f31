"""X/Y/Z plot's axis types as the best-known web UI numbers them, per tab.

Its API clients send `script_args` with axis types as indices into that UI's own axis list, which
differs between txt2img (with the hires. fix axes) and img2img (with Image CFG Scale and
Cond. Image Mask Weight). The list below is its order (scripts/xyz_grid.py, 1.10); an index is
turned into the axis name here, and names work too. Axes this program does not offer are refused
with the list of those it does.
"""

from __future__ import annotations

from collections.abc import Collection

from modules.errors import UserError

# (label, tab): None = both tabs.
A1111_AXES: tuple[tuple[str, str | None], ...] = (
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None),
    ("Sigma min", None), ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None),
    ("Schedule min sigma", None), ("Schedule max sigma", None), ("Schedule rho", None), ("Skip Early CFG", None),
    ("Beta schedule alpha", None), ("Beta schedule beta", None), ("Eta", None), ("Clip skip", None),
    ("Denoising", None), ("Initial noise multiplier", None), ("Extra noise", None), ("Hires upscaler", "txt2img"),
    ("Cond. Image Mask Weight", "img2img"), ("VAE", None), ("Styles", None), ("UniPC Order", None),
    ("Face restore", None), ("Token merging ratio", None), ("Token merging ratio high-res", None),
    ("Always discard next-to-last sigma", None), ("SGM noise multiplier", None), ("Refiner checkpoint", None),
    ("Refiner switch at", None), ("RNG source", None),
)


def tab_axes(mode: str) -> list[str]:
    """The axis labels of the tab `mode` belongs to, in that UI's order (its indices)."""
    tab = "txt2img" if mode == "txt2img" else "img2img"
    return [label for label, only in A1111_AXES if only in (None, tab)]


def resolve_axis(value: int | str, mode: str, offered: Collection[str]) -> str:
    """The axis label for an index into the tab's list or a name (any case); a UserError otherwise."""
    labels = tab_axes(mode)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(labels):
            raise UserError(f"X/Y/Z plot: axis type {value} is out of range: the {mode} list has {len(labels)} "
                            f"(0 to {len(labels) - 1}).")
        label = labels[value]
    else:
        by_name = {name.lower(): name for name in (*labels, *offered)}
        label = by_name.get(str(value).strip().lower(), str(value))
    if label not in offered:
        raise UserError(f"X/Y/Z plot: the axis {label!r} is not available here; available: {', '.join(offered)}.")
    return label
