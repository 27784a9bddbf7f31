"""The "Script" dropdown of a generation tab: None, X/Y/Z plot, Prompt matrix, SD upscale (img2img),
each with its controls built from the script's argument list, shown when it is chosen.

Generate then runs the chosen script instead of one plain generation (`ScriptSelector.runner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult
from modules.scripts.base import Script, ScriptArg
from modules.scripts.registry import find_script, run_script, scripts_for

NONE = "None"
HIDDEN_ARGS = {"info", "x_values_dropdown", "y_values_dropdown", "z_values_dropdown", "csv_mode"}
Runner = Callable[[GenerationParams], GenerationResult]


@dataclass
class ScriptSelector:
    mode: str
    dropdown: gr.Dropdown
    controls: dict[str, dict[str, gr.components.Component]] = field(default_factory=dict)  # title -> key -> comp

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.dropdown, *(c for group in self.controls.values() for c in group.values())]

    def runner(self, ctx: AppContext, data: dict[Any, Any]) -> Runner:
        """What Generate calls with the params: the chosen script with its values, or plain generation.
        Bad values raise UserError here, before anything runs."""
        title = data[self.dropdown] or NONE
        if title == NONE:
            return ctx.generate
        script = find_script(title, self.mode)
        args = script.parse_args({key: data[c] for key, c in self.controls[script.title].items()})
        return lambda params: run_script(ctx, script, params, args)


def _component(ctx: AppContext, script: Script, arg: ScriptArg, elem_id: str) -> gr.components.Component:
    if arg.key == "upscaler":  # SD upscale: the pixel upscalers, model files included
        names = [u.name for u in ctx.upscalers.pixel_upscalers() if u.name != "None"]
        return gr.Dropdown(names, value=arg.default, label=arg.label, elem_id=elem_id)
    if arg.kind == "bool":
        return gr.Checkbox(value=arg.default, label=arg.label, elem_id=elem_id)
    if arg.kind == "choice":
        return gr.Dropdown(list(arg.choices), value=arg.default, label=arg.label, elem_id=elem_id)
    if arg.kind in ("int", "float") and arg.minimum is not None and arg.maximum is not None:
        return gr.Slider(arg.minimum, arg.maximum, value=arg.default, step=arg.step or (1 if arg.kind == "int" else 0.05),
                         label=arg.label, elem_id=elem_id)
    placeholder = "e.g. 1,2,3 or 1-5 or 1-10 (+2) or 10-20 [3]" if arg.key.endswith("_values") else None
    return gr.Textbox(value=arg.default, label=arg.label, elem_id=elem_id, placeholder=placeholder)


def build_script_selector(ctx: AppContext, mode: str) -> ScriptSelector:
    """The dropdown and every script's controls (hidden until chosen), inside the open layout."""
    scripts = scripts_for(mode)
    dropdown = gr.Dropdown([NONE, *(s.title for s in scripts)], value=NONE, label="Script", elem_id=f"{mode}_script")
    selector = ScriptSelector(mode=mode, dropdown=dropdown)
    groups = []
    for script in scripts:
        slug = script.name.replace("/", "").replace(" ", "_")
        with gr.Group(visible=False, elem_id=f"{mode}_script_{slug}") as group:
            selector.controls[script.title] = {
                arg.key: _component(ctx, script, arg, f"{mode}_script_{slug}_{arg.key}")
                for arg in script.args if arg.key not in HIDDEN_ARGS}
        groups.append(group)

    def on_choose(title: str) -> list[Any]:
        return [gr.Group(visible=s.title == title) for s in scripts]

    dropdown.change(on_choose, inputs=dropdown, outputs=groups, concurrency_limit=None, show_progress="hidden",
                    api_visibility="undocumented")
    return selector
