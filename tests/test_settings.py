"""Settings that take effect: the ControlNet units setting (control_net_unit_count, default 3: how
many units a request may carry, what /controlnet/settings answers, how many unit tabs the accordion
has), where annotator weights are looked for, and samples_format."""

from __future__ import annotations

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
    with pytest.raises(UserError, match="samples_format is 'gif'"):
        ctx.generate(Txt2ImgParams(prompt="a dot", steps=1, width=64, height=64,
                                   override_settings={"samples_format": "gif"}))
