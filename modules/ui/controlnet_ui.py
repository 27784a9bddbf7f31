"""The ControlNet accordion of a generation tab: one sub-tab per unit, as A1111's extension lays it out.

Each unit has its picture (upload, drag and drop, paste), in img2img / inpaint / outpaint a "use the
input picture" switch, the preprocessor ("module") and model dropdowns with a refresh button, the
unit's settings and a Preview button showing the map the preprocessor detects. The tab hands the
values to `ControlNetPanel.apply`, which puts the units on the params as `controlnet_units`; paste
fills the settings (never the pictures) back from an infotext's `ControlNet N` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.context import AppContext
from modules.controlnet.discovery import find_controlnet
from modules.controlnet.display import visible_map
from modules.controlnet.infotext import units_from_fields
from modules.controlnet.preprocessors import (
    DEFAULT_ANNOTATOR_DIR,
    RESIZE_MODES,
    ModuleInfo,
    SliderSpec,
    list_modules,
    parse_resize_mode,
    pixel_perfect_resolution,
    resolve_module,
    run_module,
)
from modules.controlnet.units import CONTROL_MODES, HR_OPTIONS, MAX_UNITS, ControlUnit
from modules.errors import UserError
from modules.processing.params import GenerationParams

NO_MODEL = "None"
# The unit settings an infotext records, by the unit field they fill.
PASTED = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
          "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
SLIDERS = ("processor_res", "threshold_a", "threshold_b")  # labelled and ranged by the module


@dataclass
class UnitControls:
    """The components of one unit's sub-tab."""

    enabled: gr.Checkbox
    image: gr.Image
    use_input: gr.Checkbox | None  # img2img / inpaint / outpaint: the unit takes the tab's picture
    module: gr.Dropdown
    model: gr.Dropdown
    refresh: gr.Button
    weight: gr.Slider
    guidance_start: gr.Slider
    guidance_end: gr.Slider
    control_mode: gr.Radio
    resize_mode: gr.Radio
    processor_res: gr.Slider
    threshold_a: gr.Slider
    threshold_b: gr.Slider
    pixel_perfect: gr.Checkbox
    hr_option: gr.Radio | None  # txt2img only (hires. fix lives there)
    save_detected_map: gr.Checkbox
    preview_button: gr.Button
    preview: gr.Image

    def settings(self) -> dict[str, gr.components.Component]:
        """Unit field name -> its component, for everything but the pictures."""
        fields = {name: getattr(self, name) for name in (
            "enabled", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode", "resize_mode",
            "processor_res", "threshold_a", "threshold_b", "pixel_perfect", "save_detected_map")}
        if self.hr_option is not None:
            fields["hr_option"] = self.hr_option
        return fields

    @property
    def inputs(self) -> list[gr.components.Component]:
        extra = [self.use_input] if self.use_input is not None else []
        return [self.image, *extra, *self.settings().values()]

    def unit(self, data: Mapping[Any, Any]) -> ControlUnit:
        """The unit the components hold (checked later, with the params)."""
        values = {name: data[c] for name, c in self.settings().items()}
        use_input = self.use_input is not None and bool(data[self.use_input])
        image = None if use_input else data[self.image]
        return ControlUnit(**values, image=image)


@dataclass
class ControlNetPanel:
    """Every unit of one tab and how their values become `params.controlnet_units`."""

    units: list[UnitControls]
    ctx: AppContext  # where pasted model names are looked up

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [c for u in self.units for c in u.inputs]

    def apply(self, params: GenerationParams, data: Mapping[Any, Any]) -> GenerationParams:
        """The params with the tab's units (none when no unit is enabled: nothing else is read)."""
        units = tuple(u.unit(data) for u in self.units)
        if not any(u.enabled for u in units):
            return params
        return replace(params, controlnet_units=units)

    def paste_targets(self) -> list[gr.components.Component]:
        return [u.settings()[name] for u in self.units for name in ("enabled", *PASTED)]

    def paste_values(self, fields: Mapping[str, str]) -> dict[gr.components.Component, Any]:
        """Component -> value for the units an infotext records (`ControlNet 0` fills the first sub-tab).

        The three module sliders get the recorded module's labels and ranges with the recorded values.
        """
        pasted: dict[gr.components.Component, Any] = {}
        for controls, settings in zip(self.units, units_from_fields(fields), strict=False):
            targets = controls.settings()
            pasted[targets["enabled"]] = True
            for name in PASTED:
                value = _paste_value(self.ctx, name, settings[name]) if name in settings else None
                if value is not None and name not in SLIDERS:
                    pasted[targets[name]] = value
            module = pasted.get(targets["module"])
            if module is None:
                continue
            for name, spec in zip(SLIDERS, _specs(module), strict=True):
                update = _slider_update(spec)
                value = _paste_value(self.ctx, name, settings.get(name))
                if value is not None and spec.minimum <= value <= spec.maximum:
                    update["value"] = value
                pasted[targets[name]] = gr.Slider(**update)
        return pasted


def _paste_value(ctx: AppContext, name: str, value: Any) -> Any:
    """A recorded value as the component takes it (None: leave the component as it is)."""
    try:
        if name == "module":
            return resolve_module(str(value)).name
        if name == "model":
            found = find_controlnet(ctx.controlnets.files, str(value))
            return found.title() if found is not None else str(value)
        if name == "resize_mode":
            return parse_resize_mode(str(value))
        if name == "control_mode":
            return value if value in CONTROL_MODES else None
        if name == "pixel_perfect":
            return bool(value)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except UserError:
        return None  # a module or mode this version lacks: the infotext box still shows it


def _specs(module: str) -> tuple[SliderSpec, SliderSpec, SliderSpec]:
    info: ModuleInfo = resolve_module(module)
    return info.resolution, info.threshold_a, info.threshold_b


def model_choices(ctx: AppContext) -> list[str]:
    return [NO_MODEL, *ctx.controlnets.titles()]


def _module_choices() -> list[tuple[str, str]]:
    return [(m.label, m.name) for m in list_modules(DEFAULT_ANNOTATOR_DIR)]


def _slider_update(spec: SliderSpec) -> dict[str, Any]:
    return {"label": spec.label, "minimum": spec.minimum, "maximum": spec.maximum, "value": spec.value,
            "step": spec.step, "visible": spec.visible}


def module_sliders(name: str) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """The processor resolution and threshold sliders as `name` labels and ranges them."""
    res, a, b = (gr.Slider(**_slider_update(spec)) for spec in _specs(name))
    return res, a, b


def build_controlnet(ctx: AppContext, mode: str, width: gr.Slider | None = None, height: gr.Slider | None = None,
                     source: gr.components.Component | None = None, count: int = MAX_UNITS) -> ControlNetPanel:
    """The accordion, inside the tab's settings column. `width`/`height` feed pixel perfect in Preview,
    `source` (the tab's input picture) is what Preview shows the map of for a unit without its own."""
    units = []
    with gr.Accordion("ControlNet", open=False, elem_id=f"{mode}_controlnet"):
        with gr.Tabs(elem_id=f"{mode}_controlnet_units"):
            for index in range(count):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{mode}_controlnet_unit_{index}"):
                    units.append(_build_unit(ctx, mode, index, width, height, source))
    return ControlNetPanel(units, ctx)


def _build_unit(ctx: AppContext, mode: str, index: int, width: gr.Slider | None, height: gr.Slider | None,
                source: gr.components.Component | None) -> UnitControls:
    eid = f"{mode}_controlnet_{index}"
    none = resolve_module("none")
    with gr.Row():
        image = gr.Image(label="Control image", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                         elem_id=f"{eid}_image", height=240)
        preview = gr.Image(label="Preprocessor preview", type="pil", interactive=False, visible=True,
                           elem_id=f"{eid}_preview", height=240)
    with gr.Row():
        enabled = gr.Checkbox(False, label="Enable", elem_id=f"{eid}_enable")
        use_input = None
        if mode != "txt2img":
            use_input = gr.Checkbox(False, label="Use the input picture", elem_id=f"{eid}_use_input",
                                    info="the tab's picture instead of a control image of its own")
        pixel_perfect = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{eid}_pixel_perfect",
                                    info="processor resolution from the generation size")
        save_map = gr.Checkbox(True, label="Save the detected map", elem_id=f"{eid}_save_detected_map")
    with gr.Row():
        module = gr.Dropdown(_module_choices(), value="none", label="Preprocessor", elem_id=f"{eid}_module")
        model = gr.Dropdown(model_choices(ctx), value=NO_MODEL, label="Model", allow_custom_value=True,
                            elem_id=f"{eid}_model")
        refresh = gr.Button("\U0001f504", size="sm", min_width=40, scale=0, elem_id=f"{eid}_refresh")
        preview_button = gr.Button("Preview", size="sm", min_width=80, scale=0, elem_id=f"{eid}_preview_button")
    with gr.Row():
        weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{eid}_weight")
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                          elem_id=f"{eid}_guidance_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{eid}_guidance_end")
    with gr.Row():
        res = gr.Slider(**_slider_update(none.resolution), elem_id=f"{eid}_processor_res")
        threshold_a = gr.Slider(**_slider_update(none.threshold_a), elem_id=f"{eid}_threshold_a")
        threshold_b = gr.Slider(**_slider_update(none.threshold_b), elem_id=f"{eid}_threshold_b")
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                            elem_id=f"{eid}_control_mode")
    resize_mode = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                           elem_id=f"{eid}_resize_mode")
    hr_option = None
    if mode == "txt2img":
        hr_option = gr.Radio(list(HR_OPTIONS), value=HR_OPTIONS[0], label="Hires. fix: apply in",
                             elem_id=f"{eid}_hr_option")
    controls = UnitControls(enabled=enabled, image=image, use_input=use_input, module=module, model=model,
                            refresh=refresh, weight=weight, guidance_start=start, guidance_end=end,
                            control_mode=control_mode, resize_mode=resize_mode, processor_res=res,
                            threshold_a=threshold_a, threshold_b=threshold_b, pixel_perfect=pixel_perfect,
                            hr_option=hr_option, save_detected_map=save_map, preview_button=preview_button,
                            preview=preview)
    _wire_unit(ctx, controls, width, height, source)
    return controls


def _wire_unit(ctx: AppContext, u: UnitControls, width: gr.Slider | None, height: gr.Slider | None,
               source: gr.components.Component | None) -> None:
    quiet = {"concurrency_limit": None, "show_progress": "hidden", "api_visibility": "undocumented"}
    # `input`, not `change`: a paste sets the module and the recorded slider values together, and
    # must not see them reset to the module's defaults afterwards.
    u.module.input(module_sliders, inputs=u.module, outputs=[u.processor_res, u.threshold_a, u.threshold_b],
                    **quiet)
    # Uploading a picture switches the unit on, as the extension does: a picture is what users forget least.
    u.image.upload(lambda: True, inputs=None, outputs=u.enabled, **quiet)

    def on_refresh(current: str | None) -> gr.Dropdown:
        ctx.controlnets.refresh()
        choices = model_choices(ctx)
        return gr.Dropdown(choices=choices, value=current if current in choices else NO_MODEL)

    u.refresh.click(on_refresh, inputs=u.model, outputs=u.model, **quiet)
    size = [width, height] if width is not None and height is not None else []
    borrow = [u.use_input, source] if u.use_input is not None and source is not None else []

    def on_preview(image: Image.Image | None, module: str, res: float, a: float, b: float, pixel_perfect: bool,
                   resize_mode: str, *rest: Any) -> Any:
        wh = rest[:len(size)]
        if borrow:
            use_input, picture = rest[len(size):]
            image = input_picture(picture) if use_input or image is None else image
        try:
            return preview_map(image, module, res, a, b, pixel_perfect, resize_mode, *wh,
                               annotator_dir=ctx.controlnets.annotator_dir)
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip()

    u.preview_button.click(on_preview, inputs=[u.image, u.module, u.processor_res, u.threshold_a, u.threshold_b,
                                               u.pixel_perfect, u.resize_mode, *size, *borrow],
                           outputs=u.preview, concurrency_limit=1, concurrency_id="controlnet_preview",
                           show_progress="minimal", api_visibility="undocumented")


def input_picture(value: Any) -> Image.Image | None:
    """The tab's input picture (the inpaint editor's background), or None."""
    if isinstance(value, dict):
        value = value.get("background")
    return value if isinstance(value, Image.Image) else None


def preview_map(image: Image.Image | None, module: str, resolution: float, threshold_a: float, threshold_b: float,
                pixel_perfect: bool = False, resize_mode: str = "Crop and Resize", width: int = 0,
                height: int = 0, annotator_dir: Path = DEFAULT_ANNOTATOR_DIR) -> Image.Image:
    """The map `module` detects in `image` (what the unit will be given, before fitting to the size)."""
    if image is None:
        raise UserError("Upload a control image into this unit first, then press Preview.")
    if pixel_perfect and width and height:
        resolution = pixel_perfect_resolution((image.height, image.width), (int(height), int(width)), resize_mode)
    detected = run_module(module, image.convert("RGB"), resolution, threshold_a, threshold_b,
                          pixel_perfect=pixel_perfect and bool(width and height), annotator_dir=annotator_dir)
    return visible_map(detected)
