"""The ControlNet accordion of the generation tabs, driven through the Generate handler (the function
the button calls, no browser): a unit set in the accordion reaches the params and steers the
picture; Preview shows the module's map; paste fills the units' settings from an infotext."""

from __future__ import annotations

from typing import Any

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.processing.params import GenerationParams
from modules.ui.controlnet_ui import model_choices, module_sliders, preview_map
from modules.ui.generation_tab import GenerationTab, build_generation_tab
from modules.ui.paste import paste_values
from tests.tiny_controlnets import write_tiny_controlnet
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    data = tmp_path_factory.mktemp("ui-controlnet")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    write_tiny_controlnet(data / "models" / "ControlNet", "sd1", stem="tiny_canny")
    return AppContext.create(Paths.make(data_dir=data, outdir=tmp_path_factory.mktemp("out")), CPU)


def edge_map() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 20, 44, 48), outline="white", width=2)
    return image


def tab_and_handler(ctx: AppContext, mode: str) -> tuple[GenerationTab, Any]:
    with gr.Blocks() as demo:
        tab = build_generation_tab(ctx, mode, 64)
    (fn,) = [f for f in demo.fns.values() if f.api_name == mode]
    return tab, fn


def defaults(fn: Any) -> dict[Any, Any]:
    return {c: (c.value() if callable(c.value) else c.value) for c in fn.inputs}


def generate(fn: Any, data: dict[Any, Any]) -> dict[str, Any]:
    final = list(fn.fn(data))[-1]
    states = [v for v in final.values() if isinstance(v, dict) and v.get("seeds")]
    assert states, final
    return states[0]


def title(ctx: AppContext) -> str:
    return next(t for t in model_choices(ctx) if t.startswith("tiny_canny ["))


def test_every_tab_has_three_units(ctx: AppContext) -> None:
    for mode in ("txt2img", "img2img", "inpaint", "outpaint"):
        tab, _ = tab_and_handler(ctx, mode)
        units = tab.controlnet.units
        assert len(units) == 3
        assert (units[0].use_input is None) == (mode == "txt2img")  # the input picture exists elsewhere
        assert (units[0].hr_option is not None) == (mode == "txt2img")  # hires. fix is txt2img's
        assert units[0].model.choices[0] == ("None", "None") and (title(ctx), title(ctx)) in units[0].model.choices


def test_a_unit_from_the_accordion_steers_the_picture(ctx: AppContext) -> None:
    tab, fn = tab_and_handler(ctx, "txt2img")
    base = defaults(fn)
    base.update({tab.prompt: "a square", tab.steps: 2, tab.width: 64, tab.height: 64, tab.seed: 5})
    plain = generate(fn, base)
    u = tab.controlnet.units[1]  # any unit: the second one becomes "ControlNet 0", the first enabled
    data = {**base, u.enabled: True, u.image: edge_map(), u.model: title(ctx), u.module: "none", u.weight: 1.5,
            u.guidance_end: 0.9, u.control_mode: "ControlNet is more important"}
    made = generate(fn, data)
    text = made["infotexts"][0]
    assert (f'ControlNet 0: "Module: none, Model: {title(ctx)}, Weight: 1.5, Resize Mode: Crop and Resize, '
            "Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, Guidance End: 0.9, "
            'Pixel Perfect: False, Control Mode: ControlNet is more important"') in text
    difference = np.abs(np.asarray(plain["images"][0], dtype=int) - np.asarray(made["images"][0], dtype=int))
    assert difference.max() > 0
    # The detected map is shown after the picture (not among the pictures send-to picks from).
    final = list(fn.fn(data))[-1]
    assert len(final[tab.outputs.gallery].value) == 2 and len(made["images"]) == 1
    assert len(list(fn.fn({**data, u.save_detected_map: False}))[-1][tab.outputs.gallery].value) == 1

    # The same values reach the params as ControlUnits (disabled units kept in place).
    seen: list[GenerationParams] = []
    original = ctx.generate

    def capture(params: GenerationParams) -> Any:
        seen.append(params)
        return original(params)

    ctx.generate = capture  # type: ignore[method-assign]
    try:
        generate(fn, data)
    finally:
        ctx.generate = original  # type: ignore[method-assign]
    units = seen[0].controlnet_units
    assert [x.enabled for x in units] == [False, True, False]
    assert units[1].model == title(ctx) and units[1].weight == 1.5 and units[1].image is not None
    # Nothing enabled: no units at all on the params.
    ctx.generate = capture  # type: ignore[method-assign]
    try:
        generate(fn, base)
    finally:
        ctx.generate = original  # type: ignore[method-assign]
    assert seen[-1].controlnet_units == ()


def test_img2img_use_the_input_picture(ctx: AppContext) -> None:
    tab, fn = tab_and_handler(ctx, "img2img")
    u = tab.controlnet.units[0]
    data = defaults(fn)
    data.update({tab.prompt: "a square", tab.steps: 2, tab.width: 64, tab.height: 64, tab.seed: 5,
                 tab.image: edge_map(), u.enabled: True, u.model: title(ctx), u.use_input: True,
                 u.image: Image.new("RGB", (64, 64), "white")})
    borrowed = generate(fn, data)
    own = generate(fn, {**data, u.use_input: False, u.image: edge_map()})
    # "Use the input picture" ignores the unit's own picture: same as giving it the input picture.
    assert "ControlNet 0:" in borrowed["infotexts"][0]
    assert np.array_equal(np.asarray(borrowed["images"][0]), np.asarray(own["images"][0]))


def test_a_bad_unit_is_reported_in_the_tab(ctx: AppContext) -> None:
    tab, fn = tab_and_handler(ctx, "txt2img")
    u = tab.controlnet.units[0]
    data = defaults(fn)
    data.update({tab.prompt: "x", tab.steps: 2, tab.width: 64, tab.height: 64, u.enabled: True, u.image: edge_map()})
    final = list(fn.fn(data))[-1]
    message = str(final.get(tab.outputs.message, ""))
    assert "ControlNet unit 0" in message and "no ControlNet model" in message


def test_preview_shows_the_detected_map(ctx: AppContext) -> None:
    photo = Image.new("RGB", (64, 64), (20, 30, 40))
    ImageDraw.Draw(photo).rectangle((16, 16, 47, 47), fill=(230, 220, 210))
    shown = preview_map(photo, "canny", 64, 100, 200)
    edges = cv2.Canny(np.asarray(photo), 100, 200)
    assert np.array_equal(np.asarray(shown), np.stack([edges] * 3, axis=2))
    with pytest.raises(UserError, match="Upload a control image"):
        preview_map(None, "canny", 64, 100, 200)


def test_module_change_relabels_the_sliders() -> None:
    res, a, b = module_sliders("canny")
    assert (a.label, a.minimum, a.maximum, a.value) == ("Low Threshold", 1, 255, 100)
    assert (b.label, b.value, b.visible) == ("High Threshold", 200, True)
    res, a, b = module_sliders("invert (from white bg & black line)")
    assert res.visible is False and a.visible is False


def test_paste_restores_the_units_settings(ctx: AppContext) -> None:
    tab, _ = tab_and_handler(ctx, "img2img")
    text = ("a square\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, "
            'ControlNet 0: "Module: canny, Model: tiny_canny [00000000], Weight: 0.5, Resize Mode: Just Resize, '
            "Processor Res: 256, Threshold A: 50.0, Threshold B: 150.0, Guidance Start: 0.1, Guidance End: 0.9, "
            'Pixel Perfect: True, Control Mode: My prompt is more important", '
            'ControlNet 1: "Module: invert, Model: other [12345678], Weight: 1.0, Resize Mode: Crop and Resize, '
            "Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, Guidance End: 1.0, "
            'Pixel Perfect: False, Control Mode: Balanced"')
    pasted = paste_values(tab, text)
    first, second, third = tab.controlnet.units
    assert pasted[first.enabled] is True and pasted[second.enabled] is True and third.enabled not in pasted
    # A recorded model is matched to the file here whatever hash the other copy had.
    assert pasted[first.model] == title(ctx) and pasted[second.model] == "other [12345678]"
    assert pasted[first.module] == "canny" and pasted[second.module] == "invert"
    assert pasted[first.weight] == 0.5 and pasted[first.resize_mode] == "Just Resize"
    assert pasted[first.guidance_start] == 0.1 and pasted[first.guidance_end] == 0.9
    assert pasted[first.pixel_perfect] is True and pasted[first.control_mode] == "My prompt is more important"
    low = pasted[first.threshold_a]
    assert (low.label, low.value, low.minimum, low.maximum) == ("Low Threshold", 50.0, 1, 255)
    assert pasted[first.processor_res].value == 256.0 and pasted[first.threshold_b].value == 150.0
    assert first.image not in pasted  # pictures are not in infotexts


def test_preview_of_a_unit_using_the_input_picture(ctx: AppContext) -> None:
    for mode, picture in (("img2img", edge_map()), ("inpaint", {"background": edge_map(), "layers": []})):
        with gr.Blocks() as demo:
            tab = build_generation_tab(ctx, mode, 64)
        u = tab.controlnet.units[0]
        (fn,) = [f for f in demo.fns.values() if f.fn.__name__ == "on_preview" and u.image in f.inputs]
        values = {u.image: None, u.module: "invert", u.processor_res: 512, u.threshold_a: 0.5, u.threshold_b: 0.5,
                  u.pixel_perfect: False, u.resize_mode: "Crop and Resize", tab.width: 64, tab.height: 64,
                  u.use_input: True, tab.image: picture}
        shown = fn.fn(*[values[c] for c in fn.inputs])
        assert np.array_equal(np.asarray(shown), 255 - np.asarray(edge_map())), mode
