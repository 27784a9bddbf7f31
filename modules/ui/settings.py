"""Settings tab: every option, in the sections of modules/ui/settings_layout.py; Apply checks them all and
writes config.json through `ctx.options.update`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError
from modules.images import expand_pattern
from modules.options import Options, checked_changes
from modules.sampling.samplers import SCHEDULE_TYPES, list_samplers, validate_sampler
from modules.ui.common import REFRESH, error_html, info_html
from modules.ui.generation_tab import GenerationTab
from modules.ui.settings_layout import SECTIONS, Setting

VAE_FIXED = ["Automatic", "None"]


def vae_choices(ctx: AppContext) -> list[str]:
    return VAE_FIXED + [info.name for info in ctx.registry.vaes]


def check_changes(ctx: AppContext, changes: dict[str, Any]) -> dict[str, Any]:
    """Validate the form's values; returns them in canonical form or raises UserError naming the setting."""
    changes = checked_changes(changes)  # types, bounds and choices, as POST /options checks them
    sampler, schedule = validate_sampler(changes["default_sampler"], changes["default_scheduler"])
    for key in [k for k in changes if k.startswith("outdir_")]:
        folder = changes[key].strip()
        if folder and Path(folder).expanduser().is_file():
            raise UserError(f"{key} {folder!r} is a file; give a folder (empty = the default under outputs/).")
        changes[key] = folder
    pattern = changes["samples_filename_pattern"].strip()
    expand_pattern(pattern, 0, None)  # raises for unknown [tags], naming the allowed ones
    if changes["upscaler_for_img2img"] not in ("", "None"):
        ctx.upscalers.find(changes["upscaler_for_img2img"])  # names the upscalers there are
    vae = changes["sd_vae"] or "Automatic"
    if vae not in VAE_FIXED:
        ctx.registry.find_vae(vae)
    return {**changes, "default_sampler": sampler, "default_scheduler": schedule,
            "samples_filename_pattern": pattern or "[seed]", "sd_vae": vae}


def _control(ctx: AppContext, setting: Setting, value: Any) -> gr.components.Component:
    """The control of one setting: by its choices, bounds, or the option's type."""
    elem_id = f"setting_{setting.key}"
    common = {"label": setting.label, "elem_id": elem_id, "info": setting.info}
    if setting.key == "default_sampler":
        return gr.Dropdown([s.name for s in list_samplers()], value=value, **common)
    if setting.key == "default_scheduler":
        return gr.Dropdown(list(SCHEDULE_TYPES), value=value, **common)
    if setting.key == "sd_vae":
        return gr.Dropdown(vae_choices(ctx), value=value or "Automatic", **common)
    if setting.key == "upscaler_for_img2img":
        names = [u.name for u in ctx.upscalers.pixel_upscalers()]  # "None" first: Lanczos
        return gr.Dropdown(names, value=value or "None", **common)
    if setting.choices:
        return gr.Dropdown(list(setting.choices), value=value, **common)
    if isinstance(value, bool):
        return gr.Checkbox(value=value, **common)
    if setting.minimum is not None and setting.maximum is not None:
        whole = isinstance(value, int)
        return gr.Slider(setting.minimum, setting.maximum, value=value, step=setting.step, precision=0 if whole else None,
                         **common)
    if isinstance(value, int | float):
        return gr.Number(value=value, precision=0 if isinstance(value, int) else None, **common)
    return gr.Textbox(value=value, max_lines=1, **common)


def _typed(key: str, value: Any) -> Any:
    """Gradio hands numbers back as floats; whole-number options get ints."""
    default = getattr(Options(), key)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build_settings_tab(ctx: AppContext, tabs: Sequence[GenerationTab]) -> None:
    opts = ctx.options.options
    fields: dict[str, gr.components.Component] = {}
    with gr.Column(elem_id="settings"):
        with gr.Row():
            apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
            vae_refresh = gr.Button(f"{REFRESH} VAE list", size="sm", elem_id="refresh_sd_vae")
        result = gr.HTML("", elem_id="settings_result")
        for section in SECTIONS:
            with gr.Group(elem_id=f"settings_section_{section.title.lower().replace(' ', '_').replace('/', '_')}"):
                gr.Markdown(f"### {section.title}")
                for setting in section.settings:
                    fields[setting.key] = _control(ctx, setting, getattr(opts, setting.key))

    tab_fields = [(tab.sampler, "default_sampler") for tab in tabs] + \
                 [(tab.schedule_type, "default_scheduler") for tab in tabs] + [(tab.steps, "default_steps") for tab in tabs]

    def on_apply(data: dict[Any, Any]) -> dict[Any, Any]:
        before = opts.to_dict()
        try:
            changes = check_changes(ctx, {name: _typed(name, data[c]) for name, c in fields.items()})
            ctx.options.update(changes)
            if ctx.registry.current_info is not None:
                ctx.registry.use_vae(ctx.vae_choice())  # the VAE the settings now pick, at once
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
    vae_refresh.click(lambda: gr.Dropdown(choices=_refreshed_vaes(ctx)), inputs=None, outputs=fields["sd_vae"],
                      concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")


def _refreshed_vaes(ctx: AppContext) -> list[str]:
    ctx.registry.refresh()
    return vae_choices(ctx)
