"""Settings tab: defaults and saving options; Apply writes config.json through `ctx.options.update`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError
from modules.images import expand_pattern
from modules.processing.params import MAX_STEPS
from modules.sampling.samplers import SCHEDULE_TYPES, list_samplers, validate_sampler
from modules.ui.common import REFRESH, error_html, info_html
from modules.ui.generation_tab import GenerationTab

VAE_FIXED = ["Automatic", "None"]


def vae_choices(ctx: AppContext) -> list[str]:
    return VAE_FIXED + [info.name for info in ctx.registry.vaes]


def check_changes(ctx: AppContext, changes: dict[str, Any]) -> dict[str, Any]:
    """Validate the form's values; returns them in canonical form or raises UserError."""
    sampler, schedule = validate_sampler(changes["default_sampler"], changes["default_scheduler"])
    steps = changes["default_steps"]
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise UserError(f"Default sampling steps must be from 1 to {MAX_STEPS}, got {steps!r}.")
    outdir = changes["outdir_samples"].strip()
    if outdir and Path(outdir).expanduser().is_file():
        raise UserError(f"Output folder {outdir!r} is a file; give a folder (empty = outputs in the data folder).")
    pattern = changes["samples_filename_pattern"].strip()
    expand_pattern(pattern, 0, None)  # raises for unknown [tags], naming the allowed ones
    vae = changes["sd_vae"] or "Automatic"
    if vae not in VAE_FIXED:
        ctx.registry.find_vae(vae)
    every = changes["show_progress_every_n_steps"]
    if not isinstance(every, int) or every < 1:
        raise UserError(f"Live preview interval must be a whole number of steps, 1 or more, got {every!r}.")
    return {**changes, "default_sampler": sampler, "default_scheduler": schedule, "outdir_samples": outdir,
            "samples_filename_pattern": pattern or "[seed]", "sd_vae": vae}


def build_settings_tab(ctx: AppContext, tabs: Sequence[GenerationTab]) -> None:
    opts = ctx.options.options
    with gr.Column(elem_id="settings"):
        with gr.Row():
            sampler = gr.Dropdown([s.name for s in list_samplers()], value=opts.default_sampler,
                                  label="Default sampling method", elem_id="setting_default_sampler")
            schedule = gr.Dropdown(list(SCHEDULE_TYPES), value=opts.default_scheduler,
                                   label="Default schedule type", elem_id="setting_default_scheduler")
            steps = gr.Slider(1, MAX_STEPS, value=opts.default_steps, step=1, precision=0,
                              label="Default sampling steps", elem_id="setting_default_steps")
        outdir = gr.Textbox(value=opts.outdir_samples, label="Output folder for images (empty = outputs/ in the "
                            "data folder; each mode saves into <folder>/<mode>-images)", elem_id="setting_outdir_samples")
        pattern = gr.Textbox(value=opts.samples_filename_pattern, elem_id="setting_samples_filename_pattern",
                             label="Images filename pattern after the number, e.g. [seed]-[prompt_words]")
        grid = gr.Checkbox(value=opts.grid_save, label="Save a grid of each batch of several images",
                           elem_id="setting_grid_save")
        with gr.Row():
            vae = gr.Dropdown(vae_choices(ctx), value=opts.sd_vae or "Automatic", label="SD VAE",
                              elem_id="setting_sd_vae", info="Automatic = the checkpoint's own VAE")
            vae_refresh = gr.Button(REFRESH, elem_classes="tool-button", elem_id="refresh_sd_vae")
        with gr.Row():
            previews = gr.Checkbox(value=opts.live_previews_enable, label="Show live previews while generating",
                                   elem_id="setting_live_previews_enable")
            every = gr.Slider(1, 32, value=opts.show_progress_every_n_steps, step=1, precision=0,
                              label="Live preview every N steps", elem_id="setting_show_progress_every_n_steps")
        tiling = gr.Checkbox(value=opts.vae_tiling, elem_id="setting_vae_tiling",
                             label="Decode images in tiles at every size (less memory; large pictures always "
                                   "are)")
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        result = gr.HTML("", elem_id="settings_result")

    fields = {"default_sampler": sampler, "default_scheduler": schedule, "default_steps": steps,
              "outdir_samples": outdir, "samples_filename_pattern": pattern, "grid_save": grid, "sd_vae": vae,
              "live_previews_enable": previews, "show_progress_every_n_steps": every, "vae_tiling": tiling}
    tab_fields = [(tab.sampler, "default_sampler") for tab in tabs] + \
                 [(tab.schedule_type, "default_scheduler") for tab in tabs] + [(tab.steps, "default_steps") for tab in tabs]

    def on_apply(data: dict[Any, Any]) -> dict[Any, Any]:
        before = opts.to_dict()
        try:
            changes = check_changes(ctx, {name: data[c] for name, c in fields.items()})
            ctx.options.update(changes)
            if changes["sd_vae"] != before["sd_vae"] and ctx.registry.current_info is not None:
                # Reloads the checkpoint with the chosen VAE ("Automatic" = its own one back).
                ctx.registry.load(ctx.registry.current_info, vae=changes["sd_vae"])
        except UserError as exc:
            return {result: error_html(str(exc))}
        ctx.control.preview_every = changes["show_progress_every_n_steps"] if changes["live_previews_enable"] else 0
        update: dict[Any, Any] = {result: info_html(f"Settings saved to {ctx.options.path}.")}
        # Tabs follow a changed default at once; a default left alone keeps what the user set there.
        for component, name in tab_fields:
            if changes[name] != before[name]:
                update[component] = changes[name]
        return update

    apply.click(on_apply, inputs=set(fields.values()), outputs=[result, *(c for c, _ in tab_fields)],
                concurrency_limit=None, api_visibility="undocumented")
    vae_refresh.click(lambda: gr.Dropdown(choices=_refreshed_vaes(ctx)), inputs=None, outputs=vae,
                      concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")


def _refreshed_vaes(ctx: AppContext) -> list[str]:
    ctx.registry.refresh()
    return vae_choices(ctx)
