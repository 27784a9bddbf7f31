"""The Checkpoint Merger tab: A, B and C from the checkpoint list, the method and multiplier, the
options of the best-known web UI's merger, and Merge; the result is listed at once."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError
from modules.models.merge import CONFIG_SOURCES, METHODS, merge_checkpoints, request_from_names
from modules.ui.common import REFRESH, checkpoint_names, error_html

NONE = "None"


@dataclass
class MergerTab:
    merge: gr.Button
    result: gr.HTML
    models: list[gr.Dropdown]
    merged: object  # the Merge click's event: `.then(...)` runs after a merge (the page's lists)


def _choices(ctx: AppContext, with_none: bool) -> list[str]:
    return ([NONE] if with_none else []) + checkpoint_names(ctx)


def run_merge(ctx: AppContext, primary: str | None, secondary: str | None, tertiary: str | None, method: str,
              multiplier: float, save_as_half: bool, custom_name: str, checkpoint_format: str, config_source: str,
              bake_in_vae: str | None, discard_weights: str, save_metadata: bool, add_merge_recipe: bool,
              overwrite: bool) -> str:
    """Merge and return the message shown under the button (errors included)."""
    try:
        request = request_from_names(
            ctx.registry, _strip_hash(primary), _strip_hash(secondary), _strip_hash(tertiary), bake_in_vae,
            method=method, multiplier=float(multiplier), save_as_half=bool(save_as_half),
            custom_name=(custom_name or "").strip(), checkpoint_format=checkpoint_format,
            config_source=config_source, discard_weights=discard_weights or "", save_metadata=bool(save_metadata),
            add_merge_recipe=bool(add_merge_recipe), overwrite=bool(overwrite))
        path = merge_checkpoints(request, ctx.registry.checkpoint_dirs[0], ctx.registry.hashes)
    except UserError as exc:
        return error_html(str(exc))
    ctx.registry.refresh()
    return f"<p>Checkpoint saved to <code>{path}</code></p>"


def _strip_hash(name: str | None) -> str | None:
    # The list shows "name [hash]"; the registry finds the name.
    return name.rsplit(" [", 1)[0] if name and name.endswith("]") else name


def build_merger_tab(ctx: AppContext) -> MergerTab:
    with gr.Row():
        primary = gr.Dropdown(_choices(ctx, False), label="Primary model (A)", elem_id="modelmerger_primary_model_name")
        secondary = gr.Dropdown(_choices(ctx, True), value=NONE, label="Secondary model (B)",
                                elem_id="modelmerger_secondary_model_name")
        tertiary = gr.Dropdown(_choices(ctx, True), value=NONE, label="Tertiary model (C)",
                               elem_id="modelmerger_tertiary_model_name")
        refresh = gr.Button(REFRESH, elem_id="modelmerger_refresh", elem_classes="tool-button")
    custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
    multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                           elem_id="modelmerger_interp_amount")
    method = gr.Radio(list(METHODS), value="Weighted sum", label="Interpolation Method",
                      info="Weighted sum: A * (1 - M) + B * M. Add difference: A + (B - C) * M.",
                      elem_id="modelmerger_interp_method")
    with gr.Row():
        checkpoint_format = gr.Radio(["ckpt", "safetensors"], value="safetensors", label="Checkpoint format",
                                     elem_id="modelmerger_checkpoint_format")
        save_as_half = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
        overwrite = gr.Checkbox(False, label="Overwrite a file of the same name", elem_id="modelmerger_overwrite")
    config_source = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0], label="Copy config from",
                             elem_id="modelmerger_config_method")
    with gr.Row():
        bake_in_vae = gr.Dropdown([NONE, *(v.name for v in ctx.registry.vaes)], value=NONE, label="Bake in VAE",
                                  elem_id="modelmerger_bake_in_vae")
        discard_weights = gr.Textbox(label="Discard weights with matching name (regular expression)",
                                     elem_id="modelmerger_discard_weights")
    with gr.Row():
        save_metadata = gr.Checkbox(True, label="Save metadata", elem_id="modelmerger_save_metadata")
        add_merge_recipe = gr.Checkbox(True, label="Add merge recipe metadata", elem_id="modelmerger_add_recipe")
    merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
    result = gr.HTML("", elem_id="modelmerger_result")

    models = [primary, secondary, tertiary]

    def refreshed() -> list[gr.Dropdown]:
        ctx.registry.refresh()
        return [gr.Dropdown(choices=_choices(ctx, i > 0)) for i in range(3)]

    refresh.click(refreshed, inputs=None, outputs=models, concurrency_limit=None, api_visibility="undocumented")
    merged = merge.click(lambda *args: [run_merge(ctx, *args), *refreshed()],
                inputs=[primary, secondary, tertiary, method, multiplier, save_as_half, custom_name,
                        checkpoint_format, config_source, bake_in_vae, discard_weights, save_metadata,
                        add_merge_recipe, overwrite],
                outputs=[result, *models], concurrency_id="generate", concurrency_limit=1,
                api_visibility="undocumented")
    return MergerTab(merge=merge, result=result, models=models, merged=merged)
