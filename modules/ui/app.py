"""The whole page: checkpoint picker on top, then the tabs, wired to each other (send-to, paste)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.ui import modes
from modules.ui.common import (
    build_checkpoint_row,
    checkpoint_names,
    loaded_native_size,
    selected_checkpoint,
    wire_checkpoint_row,
)
from modules.ui.extras import build_extras_tab
from modules.ui.generation_tab import GenerationTab, build_generation_tab
from modules.ui.hooks import ExtraTab, ScriptHook
from modules.ui.merger_tab import build_merger_tab
from modules.ui.paste import selected_result, wire_send_to
from modules.ui.png_info import build_png_info_tab, read_picture
from modules.ui.queue_tab import build_queue_tab, job_source
from modules.ui.settings import build_settings_tab
from modules.ui.train_tab import build_train_tab

TITLE = "Stable Diffusion"


def build_ui(ctx: AppContext, extra_tabs: Sequence[ExtraTab] = (), scripts: Sequence[ScriptHook] = ()) -> gr.Blocks:
    """Build the page. `extra_tabs` and `scripts` are the hooks for extensions (see modules/ui/hooks.py)."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        checkpoint = build_checkpoint_row(ctx)
        with gr.Tabs(elem_id="tabs") as tabs:
            generation: dict[str, GenerationTab] = {}
            for mode in modes.MODES:
                with gr.Tab(modes.MODE_LABELS[mode], id=mode, elem_id=f"tab_{mode}"):
                    # txt2img follows the loaded model's size; the picture modes default to the picture's.
                    size = loaded_native_size(ctx) if mode == "txt2img" else 0
                    generation[mode] = build_generation_tab(ctx, mode, size, scripts)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                build_extras_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png_info = build_png_info_tab()
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                merger = build_merger_tab(ctx)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                build_train_tab(ctx)
            with gr.Tab("Queue", id="queue", elem_id="tab_queue"):
                queue_tab = build_queue_tab(ctx)
            for extra in extra_tabs:
                with gr.Tab(extra.label, id=extra.elem_id or extra.label, elem_id=extra.elem_id):
                    extra.build(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                build_settings_tab(ctx, list(generation.values()))

        wire_checkpoint_row(ctx, checkpoint, [(generation["txt2img"].width, generation["txt2img"].height)])
        merger.merged.then(lambda: gr.Dropdown(choices=checkpoint_names(ctx)), inputs=None, outputs=checkpoint.dropdown,
                           api_visibility="undocumented")
        _wire_page_load(ctx, demo, checkpoint.dropdown, list(generation.values()))
        send_rules = lambda: (ctx.options.options.send_seed, ctx.options.options.send_size)  # noqa: E731
        for source in generation.values():
            for target_mode, button in source.send_to.items():
                wire_send_to(button, [source.outputs.result], selected_result, generation[target_mode], tabs, send_rules)
        for target_mode, button in png_info.send_to.items():
            wire_send_to(button, [png_info.image], read_picture, generation[target_mode], tabs)
        for target_mode, button in queue_tab.send_to.items():
            wire_send_to(button, [queue_tab.task_id], lambda task_id: job_source(ctx, task_id), generation[target_mode],
                         tabs, send_rules)
    return demo


# Set on <body> once a new page holds the current defaults, for scripts and tests that must not
# type into a field the page-load event would still overwrite.
READY_JS = "() => { document.body.dataset.uiReady = '1'; }"


def _wire_page_load(ctx: AppContext, demo: gr.Blocks, checkpoint: gr.Dropdown, tabs: list[GenerationTab]) -> None:
    """One page-load event: the defaults from Settings and the current model, which may have changed
    since the page was built (one event, not one per field: a page load costs one request)."""
    outputs: list[gr.components.Component] = [checkpoint]
    for tab in tabs:
        outputs.extend(tab.page_defaults(ctx))

    def on_load() -> dict[gr.components.Component, Any]:
        values: dict[gr.components.Component, Any] = {
            checkpoint: gr.Dropdown(choices=checkpoint_names(ctx), value=selected_checkpoint(ctx))}
        for tab in tabs:
            values.update(tab.page_defaults(ctx))
        return values

    demo.load(on_load, inputs=None, outputs=outputs, concurrency_limit=None, show_progress="hidden",
              api_visibility="undocumented").then(None, js=READY_JS)
