"""Pieces every tab shares: the checkpoint picker at the top, the seed row, messages in the page."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError

log = logging.getLogger(__name__)

RANDOM = "\U0001f3b2"  # 🎲
REUSE = "\u267b\ufe0f"  # ♻️
REFRESH = "\U0001f504"  # 🔄


# ---------------------------------------------------------------------------------- messages

def error_html(message: str) -> str:
    return f'<div class="error-box" role="alert"><b>Error:</b> {html.escape(message)}</div>'


def info_html(message: str) -> str:
    return f'<div class="ok-box">{html.escape(message)}</div>'


def describe_exception(exc: BaseException) -> str:
    """A message for the page: a UserError as written; anything else is a bug, so say where to look."""
    if isinstance(exc, UserError):
        return str(exc)
    log.error("Unexpected error in the UI", exc_info=exc)
    return f"{type(exc).__name__}: {exc} (an internal error; the console has the details)."


# ---------------------------------------------------------------------------------- checkpoint

def checkpoint_names(ctx: AppContext) -> list[str]:
    return [info.name for info in ctx.registry.checkpoints]


def loaded_native_size(ctx: AppContext) -> int:
    """The loaded model's native side in pixels, or 0 (= "native", resolved at generation) when
    none is loaded yet. Reads without the registry lock: a page load must not wait for a generation."""
    model = ctx.registry._current  # noqa: SLF001 - a plain read; registry.current() would load or block
    return model.arch.native_size if model is not None else 0


def selected_checkpoint(ctx: AppContext) -> str | None:
    """What the dropdown shows: the loaded model, else --ckpt, else the saved choice, else the default."""
    if ctx.registry.current_info is not None:
        return ctx.registry.current_info.name
    preferred = getattr(ctx.registry, "preferred", None)  # set by webui.py for --ckpt
    if preferred is not None:
        return preferred.name
    saved = ctx.options.options.sd_model_checkpoint
    if saved:
        try:
            return ctx.registry.find(saved).name
        except UserError:
            pass  # the saved file is gone; fall back to the default choice
    default = ctx.registry.default_checkpoint()
    return default.name if default else None


def load_checkpoint(ctx: AppContext, name: str | None) -> None:
    """Switch models (shared by the whole server, as in A1111) and remember the choice."""
    if not name:
        return
    try:
        info = ctx.registry.find(name)
        ctx.registry.load(info)
        ctx.registry.use_vae(ctx.vae_choice())
    except UserError as exc:
        raise gr.Error(str(exc)) from exc
    ctx.options.update({"sd_model_checkpoint": info.name})


@dataclass
class CheckpointRow:
    dropdown: gr.Dropdown
    refresh: gr.Button


def build_checkpoint_row(ctx: AppContext) -> CheckpointRow:
    """The "Stable Diffusion checkpoint" dropdown with 🔄 at the top of the page (wired later)."""
    with gr.Row(elem_id="quicksettings"):
        dropdown = gr.Dropdown(choices=checkpoint_names(ctx), value=selected_checkpoint(ctx),
                               label="Stable Diffusion checkpoint", elem_id="sd_checkpoint",
                               interactive=True, allow_custom_value=False)
        refresh = gr.Button(REFRESH, elem_id="refresh_sd_checkpoint", elem_classes="tool-button")
    return CheckpointRow(dropdown=dropdown, refresh=refresh)


def wire_checkpoint_row(ctx: AppContext, row: CheckpointRow, sizes: list[tuple[Any, Any]]) -> None:
    """Selecting loads the model; width/height still at the old model's native size follow the new one."""
    size_outputs = [c for pair in sizes for c in pair]

    def on_change(name: str | None, *values: int) -> list[Any]:
        old = loaded_native_size(ctx)
        load_checkpoint(ctx, name)
        new = loaded_native_size(ctx)
        return [new if value in (old, 0) and new else gr.skip() for value in values]

    def on_refresh() -> gr.Dropdown:
        ctx.registry.refresh()  # picks up files dropped into the folders since start-up
        return gr.Dropdown(choices=checkpoint_names(ctx), value=selected_checkpoint(ctx))

    # Not in the generation queue slot: loading waits for a running generation on the registry's
    # lock by itself, and the refresh button must answer while a picture is being made.
    row.dropdown.input(on_change, inputs=[row.dropdown, *size_outputs], outputs=size_outputs,
                       concurrency_limit=None, show_progress="full", api_visibility="undocumented")
    row.refresh.click(on_refresh, inputs=None, outputs=row.dropdown, concurrency_limit=None,
                      api_visibility="undocumented")


# ---------------------------------------------------------------------------------- seed

@dataclass
class SeedRow:
    seed: gr.Number
    random: gr.Button
    reuse: gr.Button


def build_seed_row(mode: str) -> SeedRow:
    """Seed box with 🎲 (back to -1, random) and ♻️ (reuse the selected image's seed; wired by the tab)."""
    with gr.Row():
        seed = gr.Number(label="Seed", value=-1, precision=0, minimum=-1, elem_id=f"{mode}_seed", scale=4)
        random = gr.Button(RANDOM, elem_id=f"{mode}_random_seed", elem_classes="tool-button")
        reuse = gr.Button(REUSE, elem_id=f"{mode}_reuse_seed", elem_classes="tool-button")
    random.click(lambda: -1, inputs=None, outputs=seed, concurrency_limit=None, show_progress="hidden")
    return SeedRow(seed=seed, random=random, reuse=reuse)
