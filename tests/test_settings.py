"""Settings that take effect: the ControlNet units setting (control_net_unit_count, default 3: how
many units a request may carry, what /controlnet/settings answers, how many unit tabs the accordion
has), where annotator weights are looked for, samples_format; the Saving, Paths, Infotext, img2img and
User interface groups (one test each) and the Settings tab's sections."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_api
from modules.context import AppContext, Paths
from modules.controlnet.units import ControlUnit
from modules.errors import UserError
from modules.processing.params import Txt2ImgParams
from modules.ui.generation_tab import build_generation_tab
from tests.tiny_controlnets import write_tiny_controlnet
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    home = tmp_path_factory.mktemp("unit-count")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny")
    write_tiny_controlnet(home / "models" / "ControlNet", "sd1", "ldm_prefixed", stem="cn")
    ctx = AppContext.create(Paths.make(data_dir=home), CPU)
    ctx.options.update({"sd_model_checkpoint": "tiny.safetensors"}, save=False)
    return ctx


def _unit() -> ControlUnit:
    return ControlUnit(enabled=True, module="none", model="cn", image=Image.new("RGB", (64, 64)))


def test_the_setting_limits_units_everywhere(ctx: AppContext) -> None:
    client = TestClient(create_api(ctx))
    assert client.get("/controlnet/settings").json()["control_net_unit_count"] == 3
    with gr.Blocks():
        assert len(build_generation_tab(ctx, "txt2img", 64).controlnet.units) == 3
    ctx.options.update({"control_net_unit_count": 4}, save=False)
    try:
        assert client.get("/controlnet/settings").json()["control_net_unit_count"] == 4
        with gr.Blocks():
            assert len(build_generation_tab(ctx, "txt2img", 64).controlnet.units) == 4
        params = Txt2ImgParams(prompt="x", steps=1, width=64, height=64, save=False, controlnet_units=(_unit(),) * 4)
        assert len(ctx.generate(params).images) == 1  # four units allowed now
        ctx.options.update({"control_net_unit_count": 1}, save=False)
        with pytest.raises(UserError, match="2 ControlNet units given; at most 1"):
            ctx.generate(Txt2ImgParams(prompt="x", steps=1, width=64, height=64, save=False,
                                       controlnet_units=(_unit(), _unit())))
        body = {"prompt": "x", "steps": 1, "width": 64, "height": 64,
                "alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "module": "none", "model": "cn",
                                                              "image": ""}] * 2}}}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 400 and "at most 1" in answer.json()["detail"]
    finally:
        ctx.options.update({"control_net_unit_count": 3}, save=False)


def test_annotators_are_looked_for_in_the_data_folder(ctx: AppContext) -> None:
    from modules.controlnet.preprocessors import DEFAULT_ANNOTATOR_DIR

    data_annotators = ctx.paths.controlnet_dir / "annotators"
    data_annotators.mkdir(parents=True, exist_ok=True)
    assert ctx.controlnets.annotator_dir == data_annotators != DEFAULT_ANNOTATOR_DIR
    client = TestClient(create_api(ctx))
    detail = client.get("/controlnet/module_list").json()["module_detail"]
    reasons = [d.get("unavailable_reason") or "" for d in detail.values() if not d.get("available", True)]
    where = [reason for reason in reasons if "put them into" in reason]
    assert where and all(str(data_annotators) in reason for reason in where)


@pytest.mark.parametrize("image_format", ["jpg", "webp"])
def test_samples_format_setting(ctx: AppContext, tmp_path_factory: pytest.TempPathFactory, image_format: str) -> None:
    from modules.images import read_infotext

    ctx.options.update({"samples_format": image_format}, save=False)
    try:
        result = ctx.generate(Txt2ImgParams(prompt="a dot", steps=1, seed=5, width=64, height=64))
    finally:
        ctx.options.update({"samples_format": "png"}, save=False)
    (path,) = result.paths
    assert path.suffix == f".{image_format}" and path.is_file()
    with Image.open(path) as picture:
        assert picture.format == {"jpg": "JPEG", "webp": "WEBP"}[image_format]
    assert read_infotext(path) == result.infotexts[0]  # in the EXIF user comment, as A1111 writes it
    with pytest.raises(UserError, match="samples_format must be one of png"):
        ctx.generate(Txt2ImgParams(prompt="a dot", steps=1, width=64, height=64,
                                   override_settings={"samples_format": "gif"}))


def _generate(ctx: AppContext, **overrides: object) -> object:
    return ctx.generate(Txt2ImgParams(prompt="a dot", steps=1, seed=5, width=64, height=64, batch_size=2,
                                      override_settings=dict(overrides)))


def test_saving_group(ctx: AppContext) -> None:
    from modules.images import read_infotext

    assert _generate(ctx, samples_save=False).paths == []
    first = _generate(ctx, save_images_add_number=False, samples_filename_pattern="dot-[seed]")
    assert [p.name for p in first.paths] == ["dot-5.png", "dot-6.png"]
    again = _generate(ctx, save_images_add_number=False, samples_filename_pattern="dot-[seed]")
    assert [p.name for p in again.paths] == ["dot-5-1.png", "dot-6-1.png"]  # never overwritten
    assert all(p.is_file() for p in first.paths)
    small = _generate(ctx, samples_format="jpg", jpeg_quality=5).paths[0]
    large = _generate(ctx, samples_format="jpg", jpeg_quality=100).paths[0]
    assert small.stat().st_size < large.stat().st_size
    bare = _generate(ctx, enable_pnginfo=False).paths[0]
    assert read_infotext(bare) is None
    with pytest.raises(UserError, match="jpeg_quality must be from 1 to 100"):
        _generate(ctx, jpeg_quality=0)


def test_paths_group(ctx: AppContext, tmp_path: Path) -> None:
    from modules.ui.extras import run_extras

    data = ctx.paths.data_dir
    result = _generate(ctx, outdir_txt2img_samples="mine/t2i", grid_save=True, outdir_txt2img_grids="mine/grids")
    assert all(p.parent.parent == data / "mine" / "t2i" for p in result.paths)
    result = ctx.generate(Txt2ImgParams(prompt="a dot", steps=1, seed=5, width=64, height=64, batch_size=2,
                                        save_grid=True, override_settings={"outdir_txt2img_grids": "mine/grids"}))
    assert result.grid_path is not None and result.grid_path.parent.parent == data / "mine" / "grids"
    everything = tmp_path / "all"
    result = _generate(ctx, outdir_samples=str(everything), outdir_txt2img_samples="mine/t2i")
    assert all(p.parent.parent == everything for p in result.paths)  # outdir_samples wins, no mode folder
    assert all(p.parent.parent == ctx.outdir / "txt2img-images" for p in _generate(ctx).paths)  # the default
    ctx.options.update({"outdir_extras_samples": str(tmp_path / "extras")}, save=False)
    try:
        _, _, message = run_extras(ctx, Image.new("RGB", (16, 16)), "Scale by", 2, 1, 1, True, "Lanczos", "None", 0)
    finally:
        ctx.options.update({"outdir_extras_samples": ""}, save=False)
    assert "Saved" in message and list((tmp_path / "extras").rglob("*.png"))


def test_infotext_group(ctx: AppContext) -> None:
    full = _generate(ctx).infotexts[0]
    assert "Model hash: " in full and "Model: tiny" in full
    text = _generate(ctx, add_model_hash_to_info=False, add_model_name_to_info=False).infotexts[0]
    assert "Model hash" not in text and "Model:" not in text and "Seed: 5" in text


def test_img2img_noise_multiplier(ctx: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch

    from modules.processing import run
    from modules.processing.params import Img2ImgParams

    added: list[torch.Tensor] = []  # the noise each run adds to the picture's latents
    make_scheduler = run.make_scheduler

    def spying(*args: object, **kwargs: object) -> object:
        scheduler = make_scheduler(*args, **kwargs)
        add_noise = scheduler.add_noise
        scheduler.add_noise = lambda x, noise, t: (added.append(noise.clone()), add_noise(x, noise, t))[1]
        return scheduler

    monkeypatch.setattr(run, "make_scheduler", spying)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))

    def img2img(**overrides: object) -> object:
        return ctx.generate(Img2ImgParams(prompt="a dot", steps=4, seed=5, width=64, height=64, init_image=init,
                                          denoising_strength=0.6, save=False, sampler="Euler",
                                          override_settings=dict(overrides)))

    plain, quiet = img2img(), img2img(initial_noise_multiplier=0.5)
    assert "Noise multiplier" not in plain.infotexts[0] and "Noise multiplier: 0.5" in quiet.infotexts[0]
    assert len(added) == 2 and torch.equal(added[1], added[0] * 0.5)  # A1111: x *= initial_noise_multiplier
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(quiet.images[0]))
    a, b = (ctx.generate(Txt2ImgParams(prompt="a dot", steps=2, seed=5, width=64, height=64, save=False,
                                       override_settings=o)) for o in ({}, {"initial_noise_multiplier": 0.5}))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0])) and "Noise multiplier" not in b.infotexts[0]


def test_upscaler_for_img2img_enlarges_small_pictures(ctx: AppContext) -> None:
    import numpy as np

    from modules.processing.params import Img2ImgParams

    small = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))

    def img2img(mode: str, **overrides: object) -> np.ndarray:
        # Strength 0 returns the resized picture itself: what the resize made is what comes out.
        result = ctx.generate(Img2ImgParams(prompt="x", steps=1, seed=1, width=96, height=64, init_image=small,
                                            denoising_strength=0.0, resize_mode=mode, save=False,
                                            override_settings=dict(overrides)))
        return np.asarray(result.images[0])

    lanczos, nearest = img2img("just resize"), img2img("just resize", upscaler_for_img2img="Nearest")
    # A1111: the upscaler takes the picture to the larger scale (6x, 96x96), Lanczos to 96x64.
    expected = np.asarray(small.resize((96, 96), Image.NEAREST).resize((96, 64), Image.LANCZOS))
    assert np.array_equal(nearest, expected) and not np.array_equal(nearest, lanczos)
    assert np.array_equal(lanczos, np.asarray(small.resize((96, 64), Image.LANCZOS)))
    # "Resize and fill" fits inside: the upscaler goes to the smaller scale (4x, 64x64), centred.
    filled = img2img("resize and fill", upscaler_for_img2img="Nearest")
    assert np.array_equal(filled[:, 16:80], np.asarray(small.resize((64, 64), Image.NEAREST)))
    with pytest.raises(UserError, match="Unknown upscaler 'Sharpest'"):
        img2img("just resize", upscaler_for_img2img="Sharpest")


def test_user_interface_group_return_grid(ctx: AppContext) -> None:
    api = TestClient(create_api(ctx))
    body = {"prompt": "a dot", "steps": 1, "width": 64, "height": 64, "batch_size": 2, "save_images": True}
    with_grid = api.post("/sdapi/v1/txt2img", json=body).json()
    assert len(with_grid["images"]) == 3  # the grid first, as A1111's default
    without = api.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"return_grid": False}}).json()
    assert len(without["images"]) == 2
    bad = api.post("/sdapi/v1/options", json={"face_restoration_model": "RestoreFormer"})
    assert bad.status_code == 400 and "face_restoration_model" in bad.json()["detail"]
    bad = api.post("/sdapi/v1/options", json={"jpeg_quality": "high"})
    assert bad.status_code == 400 and "jpeg_quality" in bad.json()["detail"]
    options = api.get("/sdapi/v1/options").json()
    assert options["jpeg_quality"] == 80 and options["samples_save"] is True and options["return_grid"] is True


def test_settings_tab_shows_every_option_in_sections() -> None:
    from dataclasses import fields

    from modules.options import Options
    from modules.ui.settings_layout import SECTIONS, setting_keys

    internal = {"sd_model_checkpoint", "disabled_extensions", "extension_settings"}
    keys = setting_keys()
    assert len(keys) == len(set(keys))
    assert set(keys) == {f.name for f in fields(Options)} - internal
    titles = [s.title for s in SECTIONS]
    assert titles[:3] == ["Saving images/grids", "Paths for saving", "Stable Diffusion"]


def test_settings_tab_checks_what_it_saves(ctx: AppContext) -> None:
    from modules.ui.settings import check_changes

    values = ctx.options.options.to_dict()
    good = check_changes(ctx, {**values, "samples_format": "JPG", "outdir_txt2img_samples": " out/t2i "})
    assert good["samples_format"] == "jpg" and good["outdir_txt2img_samples"] == "out/t2i"
    with pytest.raises(UserError, match="code_former_weight must be from 0 to 1"):
        check_changes(ctx, {**values, "code_former_weight": 2.0})
    with pytest.raises(UserError, match="Unknown filename tag"):
        check_changes(ctx, {**values, "samples_filename_pattern": "[nope]"})
