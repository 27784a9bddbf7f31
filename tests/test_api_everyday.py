"""/sdapi/v1 fields for hires. fix, tiling, styles, prompt editing and the refiner; prompt-styles;
bad values answered 4xx naming the problem. A tiny checkpoint, FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_api
from modules.context import AppContext, Paths
from tests.tiny_models import CPU, write_tiny_checkpoint

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 1,
         "override_settings": {"sd_model_checkpoint": "tiny"}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("api-everyday")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny-other", seed=1)
    (data / "styles.csv").write_text('name,prompt,negative_prompt\nSharp,"sharp, detailed",blurry\n'
                                     'Oil,oil painting of {prompt},\n', encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def api(data_dir: Path) -> TestClient:
    return TestClient(create_api(AppContext.create(Paths.make(data_dir=data_dir), CPU)))


def _images(answer) -> list[Image.Image]:
    assert answer.status_code == 200, answer.text
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in answer.json()["images"]]


def _info(answer) -> dict:
    return json.loads(answer.json()["info"])


def test_hires_fields(api: TestClient) -> None:
    answer = api.post("/sdapi/v1/txt2img", json={
        **SMALL, "prompt": "a dot", "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
        "hr_second_pass_steps": 2, "denoising_strength": 0.5, "hr_sampler_name": "DPM++ 2M",
        "hr_prompt": "a square", "hr_negative_prompt": "noise"})
    (image,) = _images(answer)
    assert image.size == (96, 96)
    text = _info(answer)["infotexts"][0]
    for part in ("Size: 64x64", "Hires upscale: 1.5", "Hires steps: 2", "Hires upscaler: Lanczos",
                 "Denoising strength: 0.5", "Hires sampler: DPM++ 2M", "Hires prompt: a square"):
        assert part in text, text
    assert image.info["parameters"] == text
    resized = api.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_resize_x": 128,
                                                  "hr_sampler_name": "Use same sampler"})
    assert _images(resized)[0].size == (128, 128)
    assert "Hires resize: 128x128" in _info(resized)["infotexts"][0]


def test_tiling_styles_editing_refiner_fields(api: TestClient) -> None:
    tiled = api.post("/sdapi/v1/txt2img", json={**SMALL, "tiling": True})
    assert len(_images(tiled)) == 1 and "Tiling: True" in _info(tiled)["infotexts"][0]
    styled = api.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat", "styles": ["Oil", "Sharp"]})
    assert len(_images(styled)) == 1
    info = _info(styled)
    assert info["prompt"] == "oil painting of a cat, sharp, detailed" and info["negative_prompt"] == "blurry"
    assert info["styles"] == ["Oil", "Sharp"]
    edited = api.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a [red:blue:0.5] circle [x|y]"})
    assert len(_images(edited)) == 1
    refined = api.post("/sdapi/v1/txt2img", json={**SMALL, "refiner_checkpoint": "tiny-other",
                                                  "refiner_switch_at": 0.5})
    assert len(_images(refined)) == 1
    text = _info(refined)["infotexts"][0]
    assert "Refiner: tiny-other" in text and "Refiner switch at: 0.5" in text
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture, format="PNG")
    img2img = api.post("/sdapi/v1/img2img", json={
        **SMALL, "init_images": [base64.b64encode(picture.getvalue()).decode()], "tiling": True,
        "styles": ["Sharp"], "refiner_checkpoint": "tiny-other", "refiner_switch_at": 0.5})
    assert len(_images(img2img)) == 1
    text = _info(img2img)["infotexts"][0]
    assert "Tiling: True" in text and "Refiner: tiny-other" in text
    assert text.startswith("sharp, detailed\nNegative prompt: blurry\n")


def test_prompt_styles(api: TestClient, tmp_path: Path) -> None:
    answer = api.get("/sdapi/v1/prompt-styles")
    assert answer.status_code == 200
    assert answer.json() == [{"name": "Sharp", "prompt": "sharp, detailed", "negative_prompt": "blurry"},
                             {"name": "Oil", "prompt": "oil painting of {prompt}", "negative_prompt": ""}]
    empty = TestClient(create_api(AppContext.create(Paths.make(data_dir=tmp_path), CPU)))
    assert empty.get("/sdapi/v1/prompt-styles").json() == []


@pytest.mark.parametrize("body, status, message", [
    ({"enable_hr": True, "hr_upscaler": "UltraSharp 9x"}, 400, "UltraSharp 9x"),
    ({"enable_hr": True, "hr_scale": 0}, 400, "hr_scale"),
    ({"enable_hr": True, "hr_scale": -1.5}, 400, "hr_scale"),
    ({"styles": ["No such style"]}, 400, "No such style"),
    ({"refiner_checkpoint": "no-such-refiner"}, 400, "no-such-refiner"),
    ({"refiner_checkpoint": "tiny-other", "refiner_switch_at": 2}, 400, "refiner switch at"),
])
def test_bad_values(api: TestClient, body: dict, status: int, message: str) -> None:
    answer = api.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
