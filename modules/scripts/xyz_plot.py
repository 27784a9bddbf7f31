"""X/Y/Z plot: one generation per combination of axis values, laid out as a labelled grid.

Arguments (A1111's order): x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids,
no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode. Axis types are
names (or indexes into AXIS_TYPES). The answer is the grid first, then every cell's picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.errors import UserError
from modules.images import make_grid
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult
from modules.sampling.noise import resolve_seed
from modules.sampling.samplers import validate_sampler
from modules.sampling.schedule_types import SCHEDULE_LABELS, find_schedule
from modules.scripts.axis_values import parse_numbers, split_values
from modules.scripts.base import Script, ScriptArg
from modules.scripts.grid import labelled_grid
from modules.scripts.xyz_axes import resolve_axis, tab_axes

if TYPE_CHECKING:
    from modules.context import AppContext


@dataclass(frozen=True)
class AxisType:
    """How an axis turns its text into values and a value into changed params."""

    label: str
    parse: Callable[[AppContext, GenerationParams, str], list[Any]]
    apply: Callable[[GenerationParams, Any, list[Any]], GenerationParams]
    show_name: bool = True  # label cells "Steps: 4" rather than just "4"


def _numbers(kind: type, label: str) -> Callable[[AppContext, GenerationParams, str], list[Any]]:
    return lambda ctx, params, text: parse_numbers(text, kind, label)


def _samplers(ctx: AppContext, params: GenerationParams, text: str) -> list[str]:
    return [validate_sampler(name)[0] for name in split_values(text)]


def _schedules(ctx: AppContext, params: GenerationParams, text: str) -> list[str]:
    labels = []
    for name in split_values(text):
        found = find_schedule(name)
        if found is None:
            raise UserError(f"Schedule type: unknown {name!r}; known: {', '.join(SCHEDULE_LABELS)}.")
        labels.append(found.label)
    return labels


def _booleans(ctx: AppContext, params: GenerationParams, text: str) -> list[bool]:
    values = []
    for item in split_values(text):
        if item.strip().lower() not in ("true", "false"):
            raise UserError(f"X/Y/Z plot: {item!r} is not True or False.")
        values.append(item.strip().lower() == "true")
    return values


def _setting(key: str) -> Callable[[GenerationParams, Any, list[Any]], GenerationParams]:
    """An axis over a setting: applied as that cell's override_settings, as A1111's apply_override."""
    return lambda p, v, vs: replace(p, override_settings={**p.override_settings, key: v})


def _checkpoints(ctx: AppContext, params: GenerationParams, text: str) -> list[str]:
    return [ctx.registry.find(name).name for name in split_values(text)]


def _prompt_sr(ctx: AppContext, params: GenerationParams, text: str) -> list[str]:
    values = split_values(text)
    if values and values[0] not in params.prompt and values[0] not in params.negative_prompt:
        raise UserError(f"Prompt S/R: the first value {values[0]!r} is the text to replace, but it is not in the "
                        "prompt or the negative prompt.")
    return values


def _replace_prompt(params: GenerationParams, value: str, values: list[Any]) -> GenerationParams:
    search = values[0]
    return replace(params, prompt=params.prompt.replace(search, value),
                   negative_prompt=params.negative_prompt.replace(search, value))


AXIS_TYPES: dict[str, AxisType] = {t.label: t for t in (
    AxisType("Nothing", lambda ctx, params, text: [None], lambda p, v, vs: p, show_name=False),
    AxisType("Seed", _numbers(int, "Seed"), lambda p, v, vs: replace(p, seed=v)),
    AxisType("Steps", _numbers(int, "Steps"), lambda p, v, vs: replace(p, steps=v)),
    AxisType("CFG Scale", _numbers(float, "CFG Scale"), lambda p, v, vs: replace(p, cfg_scale=v)),
    AxisType("Prompt S/R", _prompt_sr, _replace_prompt, show_name=False),
    AxisType("Sampler", _samplers, lambda p, v, vs: replace(p, sampler=v), show_name=False),
    AxisType("Checkpoint name", _checkpoints, lambda p, v, vs: replace(p, checkpoint=v), show_name=False),
    AxisType("Var. seed", _numbers(int, "Var. seed"), lambda p, v, vs: replace(p, subseed=v)),
    AxisType("Var. strength", _numbers(float, "Var. strength"), lambda p, v, vs: replace(p, subseed_strength=v)),
    AxisType("Denoising", _numbers(float, "Denoising"), lambda p, v, vs: replace(p, denoising_strength=v)),
    AxisType("Schedule type", _schedules, lambda p, v, vs: replace(p, schedule_type=v)),
    AxisType("Hires steps", _numbers(int, "Hires steps"), lambda p, v, vs: replace(p, hr_second_pass_steps=v)),
    AxisType("Hires sampler", _samplers, lambda p, v, vs: replace(p, hr_sampler=v)),
    AxisType("Clip skip", _numbers(int, "Clip skip"), lambda p, v, vs: replace(p, clip_skip=v)),
    AxisType("Refiner switch at", _numbers(float, "Refiner switch at"),
             lambda p, v, vs: replace(p, refiner_switch_at=v)),
    AxisType("Schedule rho", _numbers(float, "Schedule rho"), _setting("rho")),
    AxisType("Beta schedule alpha", _numbers(float, "Beta schedule alpha"), _setting("beta_dist_alpha")),
    AxisType("Beta schedule beta", _numbers(float, "Beta schedule beta"), _setting("beta_dist_beta")),
    AxisType("Always discard next-to-last sigma", _booleans, _setting("always_discard_next_to_last_sigma")),
    AxisType("SGM noise multiplier", _booleans, _setting("sgm_noise_multiplier")),
)}
MAX_CELLS = 400


def _axis(name: str, label: str) -> ScriptArg:
    return ScriptArg(f"{name}_type", f"{label} type", "choice", "Nothing", tuple(AXIS_TYPES))


class XYZPlot(Script):
    title = "X/Y/Z plot"
    args = (
        _axis("x", "X"), ScriptArg("x_values", "X values", "str", ""), ScriptArg("x_values_dropdown", "X values", "list", []),
        _axis("y", "Y"), ScriptArg("y_values", "Y values", "str", ""), ScriptArg("y_values_dropdown", "Y values", "list", []),
        _axis("z", "Z"), ScriptArg("z_values", "Z values", "str", ""), ScriptArg("z_values_dropdown", "Z values", "list", []),
        ScriptArg("draw_legend", "Draw legend", "bool", True),
        ScriptArg("include_lone_images", "Include sub images", "bool", True),
        ScriptArg("include_sub_grids", "Include sub grids", "bool", False),
        ScriptArg("no_fixed_seeds", "Keep -1 for seeds", "bool", False),
        ScriptArg("vary_seeds_x", "Vary seeds for X", "bool", False),
        ScriptArg("vary_seeds_y", "Vary seeds for Y", "bool", False),
        ScriptArg("vary_seeds_z", "Vary seeds for Z", "bool", False),
        ScriptArg("margin_size", "Grid margins (px)", "int", 0, minimum=0, maximum=500, step=2),
        ScriptArg("csv_mode", "Use text inputs instead of dropdowns", "bool", False),
    )

    def parse_args(self, raw: Sequence[Any] | dict[str, Any] | None) -> dict[str, Any]:
        """As every script, but the axis types stay as sent: A1111's clients send indices into the
        tab's own axis list, resolved by `axes` once the tab is known."""
        types: dict[str, Any] = {}
        if isinstance(raw, list | tuple):
            raw = list(raw)
            for index, key in ((0, "x_type"), (3, "y_type"), (6, "z_type")):
                if index < len(raw):
                    types[key], raw[index] = raw[index], "Nothing"
        elif isinstance(raw, dict):
            raw = dict(raw)
            types = {key: raw.pop(key) for key in ("x_type", "y_type", "z_type") if key in raw}
        args = super().parse_args(raw)
        for key, value in types.items():
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise UserError(f"X/Y/Z plot: {key} must be an axis index or name, got {value!r}.")
            args[key] = value
        return args

    def info(self, mode: str) -> dict[str, Any]:
        """A1111's /script-info entry: the axis type choices in that UI's order for the tab."""
        info = super().info(mode)
        for arg in info["args"]:
            if arg["label"] in ("X type", "Y type", "Z type"):
                arg["choices"] = tab_axes(mode)
        return info

    def axes(self, ctx: AppContext, params: GenerationParams, args: dict[str, Any]) -> list[tuple[AxisType, list[Any]]]:
        """[(type, values)] for x, y, z; every value checked before anything is generated."""
        axes = []
        for name in ("x", "y", "z"):
            kind = AXIS_TYPES[resolve_axis(args[f"{name}_type"], params.mode, AXIS_TYPES)]
            text = args[f"{name}_values"]
            if not text.strip() and args[f"{name}_values_dropdown"]:
                text = ",".join(f'"{v}"' for v in args[f"{name}_values_dropdown"])
            # txt2img has a denoising strength only for its hires. fix pass.
            if kind.label == "Denoising" and not (hasattr(params, "denoising_strength")
                                                  and getattr(params, "enable_hr", True)):
                raise UserError("X/Y/Z plot: the Denoising axis needs img2img, or txt2img with hires. fix.")
            values = kind.parse(ctx, params, text)
            if not values:
                raise UserError(f"X/Y/Z plot: the {name.upper()} axis ({kind.label}) has no values; "
                                "write them like 1,2,3 or 1-5 or 10-20 [3].")
            axes.append((kind, values))
        cells = len(axes[0][1]) * len(axes[1][1]) * len(axes[2][1])
        if cells > MAX_CELLS:
            raise UserError(f"X/Y/Z plot: {cells} pictures asked for; at most {MAX_CELLS} per run.")
        return axes

    def run(self, ctx: AppContext, params: GenerationParams, args: dict[str, Any]) -> GenerationResult:
        axes = self.axes(ctx, params, args)
        loaded = ctx.registry.current_info
        try:
            return self._run(ctx, params, args, axes)
        finally:
            # A Checkpoint name axis switches models: put back the one loaded before, as A1111 does.
            if loaded is not None and ctx.registry.current_info != loaded and params.checkpoint is None:
                ctx.registry.load(loaded)

    def _run(self, ctx: AppContext, params: GenerationParams, args: dict[str, Any],
             axes: list[tuple[AxisType, list[Any]]]) -> GenerationResult:
        if not args["no_fixed_seeds"]:  # the same seed everywhere, so only the axes change the picture
            params = replace(params, seed=resolve_seed(params.seed), subseed=resolve_seed(params.subseed))
        base = replace(params, save_grid=False)
        (xt, xs), (yt, ys), (zt, zs) = axes
        images: list[Image.Image] = []
        texts: list[str] = []
        seeds: list[int] = []
        grids: list[Image.Image] = []
        paths: list[Path] = []
        last: GenerationResult | None = None
        for iz, z in enumerate(zs):
            rows = []
            for iy, y in enumerate(ys):
                row = []
                for ix, x in enumerate(xs):
                    cell = zt.apply(yt.apply(xt.apply(base, x, xs), y, ys), z, zs)
                    offset = (ix if args["vary_seeds_x"] else 0) + (iy if args["vary_seeds_y"] else 0) \
                        + (iz if args["vary_seeds_z"] else 0)
                    if offset and cell.seed >= 0:
                        cell = replace(cell, seed=cell.seed + offset)
                    last = ctx.generate(cell)
                    if not last.images:  # interrupted
                        break
                    picture = last.images[0] if len(last.images) == 1 else make_grid(last.images)
                    row.append(picture)
                    images.append(picture)
                    texts.append(last.infotexts[0])
                    seeds.append(last.seeds[0])
                    paths += last.paths
                if row:
                    rows.append(row)
                if last is not None and last.interrupted:
                    break
            if not rows:
                break
            legend = args["draw_legend"]
            grids.append(labelled_grid(rows, _labels(xt, xs) if legend else (), _labels(yt, ys) if legend else (),
                                       args["margin_size"]))
            if last is not None and last.interrupted:
                break
        if not grids:
            return GenerationResult(images=[], infotexts=[], seeds=[], params=params, interrupted=True)
        if len(grids) > 1:
            titles = _labels(zt, zs)[:len(grids)] if args["draw_legend"] else ()
            grid = labelled_grid([grids], titles, (), args["margin_size"])
        else:
            grid = grids[0]
        result = GenerationResult(images=[grid], infotexts=[texts[0]], seeds=[seeds[0]], params=params,
                                  interrupted=bool(last and last.interrupted), grids=1, paths=paths)
        if args["include_sub_grids"] and len(grids) > 1:
            result.images += grids
            result.infotexts += [texts[0]] * len(grids)
            result.seeds += [seeds[0]] * len(grids)
            result.grids += len(grids)
        if args["include_lone_images"]:
            result.images += images
            result.infotexts += texts
            result.seeds += seeds
        if params.save:
            result.grid_path = ctx.output(params.mode).save_grid(grid, texts[0])
        return result


def _labels(kind: AxisType, values: list[Any]) -> list[str]:
    if kind.label == "Nothing":
        return []
    return [f"{kind.label}: {v:g}" if isinstance(v, float) else f"{kind.label}: {v}" if kind.show_name else str(v)
            for v in values]
