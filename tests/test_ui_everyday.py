"""The generation tabs' Hires. fix, Tiling, Styles and Refiner controls: the Generate handler run
directly (the function the button calls, no browser), and paste filling them from an infotext."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.ui.everyday import apply_styles
from modules.ui.generation_tab import build_generation_tab
from modules.ui.paste import paste_values
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    data = tmp_path_factory.mktemp("ui-everyday")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nSharp,sharp,blurry\n", encoding="utf-8")
    return AppContext.create(Paths.make(data_dir=data, outdir=tmp_path_factory.mktemp("out")), CPU)


def test_txt2img_hires_tiling_styles_from_the_tab(ctx: AppContext) -> None:
    with gr.Blocks() as demo:
        tab = build_generation_tab(ctx, "txt2img", 64)
    extras = tab.extras
    assert {"enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
            "denoising_strength", "hr_sampler", "hr_prompt", "hr_negative_prompt", "tiling", "styles",
            "refiner_checkpoint", "refiner_switch_at"} <= set(extras)
    assert extras["styles"].choices == [("Sharp", "Sharp")]
    (fn,) = [f for f in demo.fns.values() if f.api_name == "txt2img"]
    data = {c: (c.value() if callable(c.value) else c.value) for c in fn.inputs}
    data.update({tab.prompt: "a dot", tab.steps: 2, tab.width: 64, tab.height: 64, extras["enable_hr"]: True,
                 extras["hr_scale"]: 2.0, extras["denoising_strength"]: 0.5, extras["tiling"]: True,
                 extras["styles"]: ["Sharp"]})
    final = list(fn.fn(data))[-1]
    states = [v for v in final.values() if isinstance(v, dict) and v.get("seeds")]
    assert states, final
    assert states[0]["images"][0].size == (128, 128)
    text = states[0]["infotexts"][0]
    assert text.startswith("a dot, sharp\nNegative prompt: blurry\n")
    assert "Hires upscale: 2" in text and "Tiling: True" in text

    # Paste (send-to, PNG Info) fills the same controls back.
    pasted = paste_values(tab, text)
    assert pasted[extras["enable_hr"]] is True and pasted[extras["tiling"]] is True
    assert pasted[extras["hr_scale"]] == 2.0 and pasted[extras["denoising_strength"]] == 0.5
    assert pasted[extras["hr_upscaler"]] == "Latent"


def test_every_mode_has_tiling_styles_and_refiner(ctx: AppContext) -> None:
    for mode in ("img2img", "inpaint", "outpaint"):
        with gr.Blocks():
            tab = build_generation_tab(ctx, mode, 0)
        assert {"tiling", "styles", "refiner_checkpoint", "refiner_switch_at"} <= set(tab.extras)
        assert "enable_hr" not in tab.extras


def test_apply_styles_writes_them_into_the_prompts(ctx: AppContext) -> None:
    assert apply_styles(ctx.styles, "a dot", None, ["Sharp"]) == ("a dot, sharp", "blurry", [])
    assert apply_styles(ctx.styles, "a dot", "x", []) == ("a dot", "x", [])
    with pytest.raises(UserError, match="'Gone'"):
        apply_styles(ctx.styles, "a dot", "", ["Gone"])


def test_override_settings_box_generates_and_is_filled_by_paste(ctx: AppContext) -> None:
    with gr.Blocks() as demo:
        tab = build_generation_tab(ctx, "txt2img", 64)
    box = tab.extras["override_settings"]
    (fn,) = [f for f in demo.fns.values() if f.api_name == "txt2img"]
    data = {c: (c.value() if callable(c.value) else c.value) for c in fn.inputs}
    data.update({tab.prompt: "a dot", tab.steps: 2, tab.width: 64, tab.height: 64, tab.sampler: "Euler a",
                 box: '{"eta_noise_seed_delta": 31337, "sgm_noise_multiplier": true}'})
    final = list(fn.fn(data))[-1]
    text = next(v for v in final.values() if isinstance(v, dict) and v.get("seeds"))["infotexts"][0]
    assert "ENSD: 31337" in text and "SGM noise multiplier: True" in text
    assert ctx.options.options.eta_noise_seed_delta == 0  # for that generation only

    pasted = paste_values(tab, text)
    assert json.loads(pasted[box]) == {"eta_noise_seed_delta": 31337, "sgm_noise_multiplier": True}
    assert pasted[tab.sampler] == "Euler a"
    # An infotext without settings empties the box: nothing from before stays.
    assert paste_values(tab, "a dot\nSteps: 2, Sampler: Euler, Seed: 1")[box] == ""

    data[box] = '{"no_such_setting": 1}'
    final = list(fn.fn(data))[-1]
    assert any("Unknown option(s) no_such_setting" in str(v) for v in final.values())


def test_send_seed_and_send_size_settings(ctx: AppContext) -> None:
    from PIL import Image

    from modules.ui.paste import gallery_changes

    with gr.Blocks():
        tab = build_generation_tab(ctx, "img2img", 0)
    text = "a dot\nSteps: 2, Sampler: Euler, Seed: 7, Size: 64x64"
    picture = Image.new("RGB", (128, 96))  # a hires. fix result: larger than the first pass's Size
    sent = paste_values(tab, text, gallery_changes(picture, send_seed=True, send_size=True))
    # A1111 sends the picture's own size and the seed.
    assert (sent[tab.seed], sent[tab.width], sent[tab.height]) == (7, 128, 96)
    kept = paste_values(tab, text, gallery_changes(picture, send_seed=False, send_size=False))
    assert tab.seed not in kept and tab.width not in kept and tab.height not in kept
    assert kept[tab.prompt] == "a dot" and kept[tab.steps] == 2  # the rest still goes


def test_do_not_show_images_saves_without_showing(ctx: AppContext) -> None:
    with gr.Blocks() as demo:
        tab = build_generation_tab(ctx, "txt2img", 64)
    (fn,) = [f for f in demo.fns.values() if f.api_name == "txt2img"]
    data = {c: (c.value() if callable(c.value) else c.value) for c in fn.inputs}
    data.update({tab.prompt: "a dot", tab.steps: 1, tab.width: 64, tab.height: 64})
    before = set(ctx.output("txt2img").samples_dir.rglob("*.png"))
    ctx.options.update({"do_not_show_images": True}, save=False)
    try:
        final = list(fn.fn(data))[-1]
    finally:
        ctx.options.update({"do_not_show_images": False}, save=False)
    gallery = final[tab.outputs.gallery]
    assert gallery.value == []
    assert final[tab.outputs.infotext].startswith("a dot")
    assert len(set(ctx.output("txt2img").samples_dir.rglob("*.png")) - before) == 1


def test_save_button_keeps_the_selected_picture_with_a_log(ctx: AppContext) -> None:
    import csv

    from modules.images import read_infotext

    with gr.Blocks() as demo:
        tab = build_generation_tab(ctx, "txt2img", 64)
    (generate,) = [f for f in demo.fns.values() if f.api_name == "txt2img"]
    (save,) = [f for f in demo.fns.values() if f.fn.__name__ == "on_save"]
    data = {c: (c.value() if callable(c.value) else c.value) for c in generate.inputs}
    data.update({tab.prompt: "a dot", tab.negative_prompt: "blue", tab.steps: 1, tab.width: 64, tab.height: 64,
                 tab.batch_size: 2, tab.seed: 40})
    state = list(generate.fn(data))[-1][tab.outputs.result]
    message, _ = save.fn(None)
    assert "Nothing to save" in message
    message, file = save.fn({**state, "index": 1})  # the second picture is the one selected
    [path] = (ctx.paths.data_dir / "log" / "images").rglob("*.png")
    assert f"Saved: {path.name}" in message and file.visible  # offered for download too
    assert read_infotext(path) == state["infotexts"][1] and "Seed: 41" in read_infotext(path)
    with open(path.parents[1] / "log.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    # A1111's log.csv columns, one row per saved picture.
    assert rows[0] == ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename",
                       "negative_prompt", "sd_model_name", "sd_model_hash"]
    assert rows[1][:3] == ["a dot", "41", "64"] and rows[1][7] == path.name and rows[1][8] == "blue"
