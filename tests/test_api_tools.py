"""The listing routes (upscalers, LoRAs, embeddings, scripts, ...) and the Extras routes of /sdapi/v1,
called in-process with FastAPI's TestClient: empty folders answer empty lists, files appear in
A1111's shapes, wrong upscaler names are 4xx naming the upscaler."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from modules.api import create_api
from modules.context import AppContext, Paths
from tests.test_upscalers import picture, write_esrgan
from tests.tiny_models import CPU

API = "/sdapi/v1"


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def make_client(data_dir: Path) -> TestClient:
    return TestClient(create_api(AppContext.create(Paths.make(data_dir=data_dir), CPU)))


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    return make_client(tmp_path_factory.mktemp("empty-home"))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    home = tmp_path_factory.mktemp("full-home")
    write_esrgan(home / "models" / "ESRGAN", "4x-tiny", 4)
    write_esrgan(home / "models" / "RealESRGAN", "RealESRGAN_x2tiny", 2, ".safetensors")
    lora_dir = home / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(4, 2)}, str(lora_dir / "style.safetensors"),
              metadata={"ss_output_name": "my-style", "ss_network_dim": "2"})
    emb = home / "embeddings"
    emb.mkdir()
    torch.save({"string_to_param": {"*": torch.zeros(3, 32)}, "step": 500, "sd_checkpoint": "abcd",
                "sd_checkpoint_name": "tiny"}, emb / "mood.pt")
    save_file({"emb_params": torch.zeros(2, 768)}, str(emb / "wide.safetensors"))
    (emb / "broken.pt").write_bytes(b"garbage")
    return make_client(home)


@pytest.mark.parametrize(("route", "expected"), [
    ("/hypernetworks", []), ("/realesrgan-models", []), ("/loras", []),
    ("/embeddings", {"loaded": {}, "skipped": {}}),
])
def test_listings_answer_when_empty(empty: TestClient, route: str, expected: Any) -> None:
    answer = empty.get(API + route)
    assert answer.status_code == 200 and answer.json() == expected


def test_upscalers_and_latent_modes(empty: TestClient, full: TestClient) -> None:
    builtin = empty.get(f"{API}/upscalers").json()
    assert [u["name"] for u in builtin] == ["None", "Lanczos", "Nearest"]
    assert set(builtin[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    listed = {u["name"]: u for u in full.get(f"{API}/upscalers").json()}
    assert listed["4x-tiny"]["scale"] == 4 and listed["4x-tiny"]["model_path"].endswith("4x-tiny.pth")
    assert listed["RealESRGAN_x2tiny"]["scale"] == 2
    modes = [m["name"] for m in empty.get(f"{API}/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes
    realesrgan = full.get(f"{API}/realesrgan-models").json()
    assert [m["name"] for m in realesrgan] == ["RealESRGAN_x2tiny"]


def test_loras_and_embeddings_in_a1111_shapes(full: TestClient) -> None:
    loras = full.get(f"{API}/loras").json()
    assert loras == [{"name": "style", "alias": "my-style", "path": loras[0]["path"],
                      "metadata": {"ss_output_name": "my-style", "ss_network_dim": "2"}}]
    assert full.post(f"{API}/refresh-loras").status_code == 200
    assert full.post(f"{API}/refresh-embeddings").status_code == 200
    embeddings = full.get(f"{API}/embeddings").json()
    # No model is loaded: every readable embedding is listed as loaded, unreadable ones skipped.
    assert embeddings["loaded"]["mood"] == {"step": 500, "sd_checkpoint": "abcd", "sd_checkpoint_name": "tiny",
                                            "shape": 32, "vectors": 3}
    assert embeddings["loaded"]["wide"]["shape"] == 768 and embeddings["loaded"]["wide"]["vectors"] == 2
    assert list(embeddings["skipped"]) == ["broken"]


def test_scripts_and_script_info(empty: TestClient) -> None:
    scripts = empty.get(f"{API}/scripts").json()
    assert scripts["txt2img"] == ["x/y/z plot", "prompt matrix", "controlnet"]  # ControlNet: always on, as A1111 lists it
    assert {"x/y/z plot", "prompt matrix", "sd upscale", "outpainting mk2"} <= set(scripts["img2img"])
    info = empty.get(f"{API}/script-info").json()
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert xyz["args"][0]["label"] == "X type" and "Steps" in xyz["args"][0]["choices"]


def test_extra_single_image_scales_by_and_to(full: TestClient) -> None:
    image = picture(20, 16)
    answer = full.post(f"{API}/extra-single-image", json={"image": b64(image), "upscaler_1": "4x-tiny",
                                                            "upscaling_resize": 2})
    assert answer.status_code == 200, answer.text
    out = unb64(answer.json()["image"])
    assert out.size == (40, 32) and "4x-tiny" in answer.json()["html_info"]
    # Scale to 50x30 with cropping: exactly that size.
    answer = full.post(f"{API}/extra-single-image", json={
        "image": b64(image), "resize_mode": 1, "upscaling_resize_w": 50, "upscaling_resize_h": 30,
        "upscaler_1": "Lanczos", "upscaler_2": "4x-tiny", "extras_upscaler_2_visibility": 0.5})
    assert answer.status_code == 200 and unb64(answer.json()["image"]).size == (50, 30)
    # Upscaler "None": the picture comes back unchanged.
    answer = full.post(f"{API}/extra-single-image", json={"image": b64(image)})
    assert np.array_equal(np.asarray(unb64(answer.json()["image"]).convert("RGB")), np.asarray(image))


def test_extra_batch_images(full: TestClient) -> None:
    items = [{"data": b64(picture(16, 16)), "name": "a.png"}, {"data": b64(picture(8, 12)), "name": "b.png"}]
    answer = full.post(f"{API}/extra-batch-images", json={"imageList": items, "upscaler_1": "Nearest",
                                                            "upscaling_resize": 3})
    assert answer.status_code == 200
    assert [unb64(i).size for i in answer.json()["images"]] == [(48, 48), (24, 36)]


def test_extras_errors_are_4xx_with_a_message(full: TestClient) -> None:
    answer = full.post(f"{API}/extra-single-image", json={"image": b64(picture(8, 8)), "upscaler_1": "4x-Ultra"})
    assert answer.status_code == 400
    assert "4x-Ultra" in answer.json()["detail"] and "4x-tiny" in answer.json()["detail"]
    answer = full.post(f"{API}/extra-single-image", json={"image": "not base64!", "upscaler_1": "Lanczos"})
    assert answer.status_code == 400 and "base64" in answer.json()["detail"]
    answer = full.post(f"{API}/extra-single-image", json={"image": b64(picture(8, 8)), "upscaler_1": "Lanczos",
                                                            "upscaling_resize": 100})
    assert answer.status_code == 400 and "upscaling_resize" in answer.json()["detail"]
