"""Filling a generation tab from an infotext and a picture: "Send to img2img / inpaint / outpaint".

Used by the gallery's send-to buttons and by PNG Info. The infotext is parsed with the same code
that reads it back from saved files, so what a tab pastes is exactly what the image records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from modules.processing.infotext import SETTING_FIELDS, infotext_to_params, parse_infotext
from modules.sampling.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from modules.ui.generation_tab import GenerationTab

# (picture, infotext) of the thing being sent; either may be None.
Source = tuple[Image.Image | None, str | None]


def infotext_values(infotext: str) -> dict[str, Any]:
    """prompt, negative_prompt and the typed parameters (A1111 API names) of an infotext."""
    prompt, negative, fields = parse_infotext(infotext)
    values = infotext_to_params(fields)
    values.update(prompt=prompt, negative_prompt=negative)
    return values


def _fits(component: gr.components.Component, value: Any) -> bool:
    # A value the control cannot hold (a sampler this UI lacks, 200 steps on a 1-150 slider) is
    # left out rather than making the tab unusable; the infotext box still shows it.
    if isinstance(component, gr.Slider):
        return isinstance(value, (int, float)) and component.minimum <= value <= component.maximum
    return True


def paste_values(tab: GenerationTab, infotext: str | None, changes: dict[str, Any] | None = None
                 ) -> dict[gr.components.Component, Any]:
    """Component -> value for every field of the infotext the tab has a control for; `changes` replace
    values (None: the field is left as it is)."""
    if not infotext:
        return {}
    values = infotext_values(infotext)
    for name, value in (changes or {}).items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    if values.get("sampler_name") not in SAMPLER_NAMES:
        values.pop("sampler_name", None)
    if values.get("scheduler") not in SCHEDULE_TYPES:
        values.pop("scheduler", None)
    settings = {name: values.pop(name) for name in SETTING_FIELDS if name in values}
    targets = tab.paste_fields()
    pasted = {targets[name]: value for name, value in values.items()
              if name in targets and _fits(targets[name], value)}
    if "override_settings" in targets:  # what the infotext records, and nothing left from before
        pasted[targets["override_settings"]] = json.dumps(settings) if settings else ""
    if tab.controlnet is not None:  # the units' settings; their pictures are not recorded
        pasted.update(tab.controlnet.paste_values(parse_infotext(infotext)[2]))
    return pasted


def image_value(tab: GenerationTab, image: Image.Image) -> Any:
    """The picture in the form the tab's input takes (the inpaint editor wants a background)."""
    if isinstance(tab.image, gr.ImageEditor):
        return {"background": image, "layers": [], "composite": image}
    return image


def gallery_changes(image: Image.Image | None, send_seed: bool, send_size: bool) -> dict[str, Any]:
    """What a send from a result gallery changes, by A1111's settings send_seed and send_size: the seed
    stays behind when send_seed is off; the size sent is the picture's own, or none with send_size off."""
    changes: dict[str, Any] = {} if send_seed else {"seed": None}
    if send_size and image is not None:
        changes.update(width=image.width, height=image.height)
    elif not send_size:
        changes.update(width=None, height=None)
    return changes


def wire_send_to(button: gr.Button, inputs: list[gr.components.Component], source: Callable[..., Source],
                 target: GenerationTab, tabs: gr.Tabs, rules: Callable[[], tuple[bool, bool]] | None = None) -> None:
    """On click: put the source's picture and parameters into `target` and switch to its tab. `rules`: for
    sends from a result gallery, the settings (send_seed, send_size) in force."""
    outputs: list[Any] = [tabs, *target.paste_fields().values()]
    if target.controlnet is not None:
        outputs.extend(target.controlnet.paste_targets())
    if target.image is not None:
        outputs.append(target.image)

    def send(*args: Any) -> dict[Any, Any]:
        image, text = source(*args)
        if image is None and not text:
            gr.Warning("Nothing to send yet: generate or drop in a picture first.")
            return {}
        update: dict[Any, Any] = {tabs: gr.Tabs(selected=target.mode)}
        update.update(paste_values(target, text, gallery_changes(image, *rules()) if rules else None))
        if target.image is not None and image is not None:
            update[target.image] = image_value(target, image)
        return update

    button.click(send, inputs=inputs, outputs=outputs, concurrency_limit=None, show_progress="hidden",
                 api_visibility="undocumented")


def selected_result(state: dict[str, Any] | None) -> Source:
    """The gallery's selected image and its infotext, from a tab's result state."""
    if not state or not state["images"]:
        return None, None
    index = state["index"]
    return state["images"][index], state["infotexts"][index]
