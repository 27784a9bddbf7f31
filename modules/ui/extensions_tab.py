"""The Extensions tab (what was found, loaded or failed; on/off; extension settings) and the
conversion of what extensions registered into the page's hooks (modules/ui/hooks.py)."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError
from modules.extensions import (
    FAILED,
    LOADED,
    Extension,
    LoadedExtensions,
    Setting,
    save_settings,
    set_disabled,
)
from modules.ui.common import error_html, info_html
from modules.ui.hooks import ExtraTab, ScriptHook

RESTART_NOTE = ("Restart the web UI (Ctrl+C in its console, then ./webui.sh again) to load or unload "
                "the extensions switched on or off.")


def ui_hooks(loaded: LoadedExtensions) -> tuple[list[ExtraTab], list[ScriptHook]]:
    """The extensions' own tabs followed by the Extensions tab, and their generation-tab scripts."""
    tabs = [ExtraTab(t.label, t.build, t.elem_id) for t in loaded.tabs]
    tabs.append(ExtraTab("Extensions", lambda ctx: build_extensions_tab(ctx, loaded), "tab_extensions"))
    return tabs, [ScriptHook(s.title, s.build) for s in loaded.scripts]


def _status_html(ext: Extension) -> str:
    where = "shipped" if ext.builtin else "user"
    status = {LOADED: "✅ loaded", FAILED: "❌ failed"}.get(ext.status, "⏸ disabled")
    text = f"<b>{status}</b> · {where} · <code>{html.escape(str(ext.path))}</code>"
    if ext.error:
        text += f'<pre class="extension-error">{html.escape(ext.error)}</pre>'
    return f'<div id="extension_status_{html.escape(ext.name)}">{text}</div>'


def _setting_component(setting: Setting) -> gr.components.Component:
    elem_id = f"extsetting_{setting.extension}_{setting.key}"
    if setting.choices is not None:
        return gr.Dropdown(list(setting.choices), value=setting.value, label=setting.label, elem_id=elem_id)
    if isinstance(setting.default, bool):
        return gr.Checkbox(value=setting.value, label=setting.label, elem_id=elem_id)
    if isinstance(setting.default, int | float):
        return gr.Number(value=setting.value, label=setting.label, elem_id=elem_id,
                         precision=0 if isinstance(setting.default, int) else None)
    return gr.Textbox(value=setting.value, label=setting.label, elem_id=elem_id)


def build_extensions_tab(ctx: AppContext, loaded: LoadedExtensions) -> None:
    """One row per extension (enabled checkbox, status, folder, error), then the loaded extensions'
    settings; Apply saves both to config.json."""
    gr.Markdown("Extensions live in `extensions/` of the data folder, one folder each (see docs/extensions.md). "
                "Switching one on or off takes effect after a restart; settings apply at once.")
    enabled: dict[str, gr.Checkbox] = {}
    for ext in loaded.extensions:
        with gr.Row(equal_height=True):
            enabled[ext.name] = gr.Checkbox(value=ext.enabled, label=ext.name, scale=1, min_width=200,
                                            elem_id=f"extension_enabled_{ext.name}")
            gr.HTML(_status_html(ext), padding=False)
    if not loaded.extensions:
        gr.Markdown(f"No extensions found in `{ctx.paths.extensions_dir}`.")
    settings = loaded.settings
    components: list[gr.components.Component] = []
    if settings:
        gr.Markdown("### Extension settings")
        components = [_setting_component(s) for s in settings]
    apply = gr.Button("Apply and save", variant="primary", elem_id="extensions_apply")
    message = gr.HTML("", elem_id="extensions_message")
    names = list(enabled)

    def on_apply(*values: Any) -> str:
        switches, setting_values = values[:len(names)], values[len(names):]
        before = set(ctx.options.options.disabled_extensions or [])
        disabled = [name for name, on in zip(names, switches, strict=True) if not on]
        try:
            save_settings(ctx, settings, list(setting_values))
            set_disabled(ctx, disabled)
        except UserError as exc:
            return error_html(str(exc))
        note = f" {RESTART_NOTE}" if set(disabled) != before else ""
        return info_html(f"Saved to {ctx.paths.config_file}.{note}")

    apply.click(on_apply, inputs=[*enabled.values(), *components], outputs=message, concurrency_limit=None,
                show_progress="hidden", api_visibility="undocumented")
