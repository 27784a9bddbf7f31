"""Where extensions will plug into the UI later (the extension system itself lives elsewhere).

Two hooks, both plain data handed to `build_ui`:

* `ExtraTab`: a whole top-level tab (A1111's `on_ui_tabs`), built after the built-in ones.
* `ScriptHook`: controls inside every generation tab (A1111's "scripts" accordion) whose values
  are written into the params before generation; `apply` returns the (possibly replaced) params,
  usually with values put into `params.extra`, which the processing layer hands to image hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.processing.params import GenerationParams


@dataclass(frozen=True)
class ExtraTab:
    """A top-level tab. `build` runs inside an open `gr.Tab(label)` and creates its components."""

    label: str
    build: Callable[[AppContext], None]
    elem_id: str | None = None


@dataclass(frozen=True)
class ScriptControls:
    """What a script built inside one generation tab: its input components and how to apply them."""

    inputs: Sequence[gr.components.Component]
    apply: Callable[[GenerationParams, list[Any]], GenerationParams]


@dataclass(frozen=True)
class ScriptHook:
    """Called once per generation tab with the mode ("txt2img", "img2img", "inpaint", "outpaint");
    builds its controls (inside an accordion titled `title`) or returns None to stay out of that mode."""

    title: str
    build: Callable[[str], ScriptControls | None]


def apply_scripts(params: GenerationParams, scripts: Sequence[ScriptControls],
                  values: dict[Any, Any]) -> GenerationParams:
    """Let each script rewrite the params from its own input values, in registration order."""
    for script in scripts:
        params = script.apply(params, [values[c] for c in script.inputs])
    return params
