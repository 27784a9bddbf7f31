"""The /sdapi/v1 API on a real server, driven by `webuiapi`, the PyPI client written for A1111.

Each server runs uvicorn in a background thread on a free 127.0.0.1 port (port 0, read back after
start-up), with tiny checkpoints in a temporary data folder. `serve_api` and `client` are the two
helpers a new test needs; checks with the real default model go at the end of this file and use
the same helpers (see `test_default_model_draws_the_prompt`).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import uvicorn
from PIL import Image, ImageDraw

from modules.api import create_api, mount
from modules.api.auth import parse_credentials
from modules.context import AppContext, Paths
from modules.errors import UserError
from tests.tiny_models import CPU, write_tiny_checkpoint

webuiapi = pytest.importorskip("webuiapi")

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "default-shapes.safetensors"
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2}  # every generation here stays this cheap


# ------------------------------------------------------------------------------------------ helpers

@dataclass
class ApiServer:
    ctx: AppContext
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base}/sdapi/v1"


@contextmanager
def serve_api(ctx: AppContext, auth: str | None = None, app: Any = None) -> Iterator[ApiServer]:
    """Serve `create_api(ctx, auth)` (or a given app) with uvicorn in a thread until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app or create_api(ctx, auth), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield ApiServer(ctx=ctx, port=server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client(server: ApiServer, user: str | None = None, password: str | None = None) -> Any:
    """A webuiapi client for `server`, with the test's small default step count."""
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=SMALL["steps"],
                             username=user, password=password)


def picture(size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (30, 60, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 40, 40))
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("api-data")
    folder = data / "models" / "Stable-diffusion"
    write_tiny_checkpoint(folder, "sd1", stem="tiny-a", seed=0)
    write_tiny_checkpoint(folder, "sd1", stem="tiny-b", seed=1)
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[ApiServer]:
    ctx = AppContext.create(Paths.make(data_dir=data_dir), CPU)
    ctx.options.update({"sd_model_checkpoint": "tiny-a.safetensors"}, save=False)
    with serve_api(ctx) as running:
        yield running


@pytest.fixture()
def api(server: ApiServer) -> Any:
    return client(server)


# ------------------------------------------------------------------------------------------ generation

def test_txt2img_images_info_and_parameters(api: Any) -> None:
    result = api.txt2img(prompt="a red circle", negative_prompt="blue", seed=5, batch_size=2, cfg_scale=5, **SMALL)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    info = result.info
    assert info["all_seeds"] == [5, 6] and info["seed"] == 5
    assert (info["prompt"], info["negative_prompt"], info["width"], info["height"]) == ("a red circle", "blue", 64, 64)
    assert (info["sampler_name"], info["steps"], info["cfg_scale"], info["batch_size"]) == ("Euler a", 2, 5, 2)
    assert info["sd_model_name"] == "tiny-a" and len(info["sd_model_hash"]) == 10
    assert info["index_of_first_image"] == 0 and len(info["infotexts"]) == 2
    # The infotext travels inside each PNG, as A1111 sends it.
    assert result.images[1].info["parameters"] == info["infotexts"][1]
    assert "Seed: 6," in info["infotexts"][1] and "Negative prompt: blue" in info["infotexts"][0]
    assert result.parameters["prompt"] == "a red circle" and result.parameters["save_images"] is False


def test_same_seed_same_picture_and_unknown_fields_are_ignored(server: ApiServer) -> None:
    body = {"prompt": "x", "seed": 11, "sampler_name": "Euler", **SMALL}
    one = requests.post(f"{server.api}/txt2img", json=body, timeout=120)
    two = requests.post(f"{server.api}/txt2img", json={**body, "some_new_a1111_field": [1, 2], "eta": 0.5},
                        timeout=120)
    assert one.status_code == two.status_code == 200, two.text
    assert one.json()["images"] == two.json()["images"]  # Euler has no eta (A1111 passes it to ancestral ones)
    # eta is the running sampler's: Euler a without ancestral noise steps as Euler.
    quiet = requests.post(f"{server.api}/txt2img", json={**body, "sampler_name": "Euler a", "eta": 0}, timeout=120)
    assert quiet.status_code == 200, quiet.text
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))), dtype=np.int16)
            for r in (quiet, one))
    assert np.abs(a - b).max() <= 1
    assert "Eta: 0" in json.loads(quiet.json()["info"])["infotexts"][0]


def test_img2img_keeps_the_requested_size(api: Any) -> None:
    result = api.img2img(images=[picture((80, 48))], prompt="a circle", denoising_strength=0.5, seed=3, **SMALL)
    assert result.image.size == (64, 64)
    assert result.info["denoising_strength"] == 0.5
    assert result.parameters["init_images"] is None  # include_init_images is false, as in A1111


def test_inpainting_changes_only_the_masked_area(api: Any) -> None:
    source = picture()
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)  # repaint the left half
    result = api.img2img(images=[source], mask_image=mask, inpainting_fill=1, inpaint_full_res=False,
                         denoising_strength=1.0, mask_blur=4, seed=9, **SMALL)
    out = arr(result.image)
    assert result.image.size == (64, 64)
    assert np.abs(out[:, 32:] - arr(source)[:, 32:]).max() <= 1  # outside the mask: the original
    assert np.abs(out[:, :28] - arr(source)[:, :28]).mean() > 5  # inside: new pixels
    assert "Mask blur: 4" in result.info["infotexts"][0]


def test_outpainting_through_the_a1111_script(api: Any) -> None:
    source = picture()
    result = api.img2img(images=[source], script_name="Outpainting mk2", denoising_strength=0.8, seed=2,
                         script_args=["", 32, 4, ["left", "right"], 1.0, 0.05], **SMALL)
    assert result.image.size == (128, 64)
    assert np.abs(arr(result.image)[:, 32:96] - arr(source)).max() <= 1  # the old picture is untouched
    named = api.img2img(images=[source], script_name="outpainting", script_args={"top": 16, "fill": "edge"},
                        denoising_strength=0.8, seed=2, **SMALL)
    assert named.image.size == (64, 80)
    assert "outpainting mk2" in api.get_scripts()["img2img"]


# ------------------------------------------------------------------------------------------ models and options

def test_sd_models_and_switching_the_model(api: Any, server: ApiServer) -> None:
    models = {m["model_name"]: m for m in api.get_sd_models()}
    assert {"tiny-a", "tiny-b"} <= set(models)
    b = models["tiny-b"]
    assert b["filename"].endswith("tiny-b.safetensors") and b["config"].endswith("tiny-b.yaml")
    try:
        assert api.set_options({"sd_model_checkpoint": b["title"]}) is None
        assert server.ctx.registry.current_info.stem == "tiny-b"  # loaded before the answer, as in A1111
        assert api.get_options()["sd_model_checkpoint"].startswith("tiny-b.safetensors")
        assert api.txt2img(prompt="x", **SMALL).info["sd_model_name"] == "tiny-b"
        # override_settings: this request only; the next one is back on the selected model.
        once = api.txt2img(prompt="x", override_settings={"sd_model_checkpoint": "tiny-a", "CLIP_stop_at_last_layers": 2},
                           **SMALL)
        assert once.info["sd_model_name"] == "tiny-a" and once.info["clip_skip"] == 2
        assert "Clip skip: 2" in once.info["infotexts"][0]
        again = api.txt2img(prompt="x", **SMALL).info
        assert again["sd_model_name"] == "tiny-b" and again["clip_skip"] == 1
    finally:
        api.set_options({"sd_model_checkpoint": "tiny-a.safetensors"})


def test_refresh_checkpoints_finds_new_files(api: Any, server: ApiServer) -> None:
    folder = server.ctx.paths.data_dir / "models" / "Stable-diffusion"
    (folder / "sub").mkdir(exist_ok=True)
    shutil.copy(folder / "tiny-a.safetensors", folder / "sub" / "copy.safetensors")
    assert api.refresh_checkpoints() is None
    assert "sub_copy" in {m["model_name"] for m in api.get_sd_models()}


def test_lists_a1111_clients_read(api: Any, server: ApiServer) -> None:
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert "k_euler_a" in samplers["Euler a"]["aliases"]
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    schedulers = api.get_schedulers()
    assert [s["label"] for s in schedulers] == ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential",
                                               "SGM Uniform", "KL Optimal", "Align Your Steps", "Simple", "Normal",
                                               "DDIM", "Beta"]
    by_label = {s["label"]: s for s in schedulers}
    assert by_label["SGM Uniform"]["name"] == "sgm_uniform" and by_label["SGM Uniform"]["aliases"] == ["SGMUniform"]
    assert by_label["Karras"]["default_rho"] == 7.0 and by_label["Polyexponential"]["default_rho"] == 1.0
    assert by_label["Uniform"]["need_inner_model"] and not by_label["Karras"]["need_inner_model"]
    assert api.get_sd_vae() == []
    memory = api.get_memory()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    assert isinstance(api.get_cmd_flags(), dict)
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0  # webuiapi's "ready" test
    assert requests.get(f"{server.base}/docs", timeout=30).status_code == 200
    assert "/sdapi/v1/txt2img" in requests.get(f"{server.base}/openapi.json", timeout=30).json()["paths"]


def test_png_info_reads_a_generated_picture(api: Any) -> None:
    made = api.txt2img(prompt="a green star", seed=21, **SMALL)
    answer = api.png_info(made.image)
    assert answer.info == made.info["infotexts"][0]
    params = answer.json["parameters"]
    assert (params["Prompt"], params["Seed"], params["Size-1"], params["Size-2"]) == ("a green star", "21", "64", "64")


# ------------------------------------------------------------------------------------------ control

def test_progress_during_a_generation_and_interrupt(server: ApiServer) -> None:
    api = client(server)
    answer: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: answer.update(result=client(server).txt2img(
        prompt="x", width=64, height=64, steps=40, seed=1)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = api.get_progress()
            if seen["state"]["sampling_step"] >= 2 and seen["current_image"]:
                break
            time.sleep(0.05)
        state = seen["state"]
        assert state["job_count"] == 1 and state["job_no"] == 0 and state["sampling_steps"] == 40, seen
        assert 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0
        preview = Image.open(io.BytesIO(base64.b64decode(seen["current_image"])))
        assert preview.width > 0
        assert api.interrupt() == {}
    finally:
        worker.join(timeout=180)
    result = answer["result"]
    assert result.info["interrupted"] is True and len(result.images) == 1  # what was done comes back
    assert api.get_progress()["state"]["job_count"] == 0


def test_concurrent_requests_queue_and_all_complete(server: ApiServer) -> None:
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = client(server).txt2img(prompt=f"shape {i}", seed=100 + i, **SMALL)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    # Malformed requests while the queue is full are answered at once and disturb nothing.
    bad_size = requests.post(f"{server.api}/txt2img", json={**SMALL, "width": 100}, timeout=60)
    bad_sampler = requests.post(f"{server.api}/txt2img", json={**SMALL, "sampler_name": "nope"}, timeout=60)
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert bad_size.status_code == 400 and "multiple of 8" in bad_size.json()["detail"]
    assert bad_sampler.status_code == 404 and "nope" in bad_sampler.json()["detail"]
    assert sorted(results) == list(range(8))
    for i, result in results.items():
        assert result.image.size == (64, 64) and result.info["seed"] == 100 + i


# ------------------------------------------------------------------------------------------ bad requests

@pytest.mark.parametrize(("body", "status", "words"), [
    ({"override_settings": {"sd_model_checkpoint": "../../etc/passwd"}}, 400, "not paths"),
    ({"override_settings": {"sd_model_checkpoint": "no-such-model"}}, 404, "Unknown checkpoint"),
    ({"sampler_name": "nope"}, 404, "Unknown sampler"),
    ({"scheduler": "sideways"}, 400, "schedule type"),
    ({"override_settings": {"no_such_setting": 1}}, 400, "Unknown option(s) no_such_setting"),
    ({"override_settings": {"eta_noise_seed_delta": "lots"}}, 400, "eta_noise_seed_delta must be a whole number"),
    ({"width": 100}, 400, "multiple of 8"),
    ({"batch_size": 1000}, 400, "batch size"),
    ({"steps": 0}, 400, "steps"),
    ({"script_name": "no such script"}, 422, "Script not found"),
    ({"alwayson_scripts": {"ADetailer": {"args": []}}}, 422, "ADetailer"),
])
def test_bad_txt2img_requests_get_4xx_with_a_reason(server: ApiServer, body: dict[str, Any], status: int,
                                                     words: str) -> None:
    answer = requests.post(f"{server.api}/txt2img", json={**SMALL, **body}, timeout=60)
    assert answer.status_code == status, answer.text
    assert words.lower() in answer.json()["detail"].lower() and answer.json()["error"]


def test_settings_from_override_and_infotext(server: ApiServer) -> None:
    base = {**SMALL, "prompt": "x", "seed": 4, "sampler_name": "Euler a", "scheduler": "Align Your Steps"}
    plain = requests.post(f"{server.api}/txt2img", json=base, timeout=120).json()
    ensd = requests.post(f"{server.api}/txt2img", json={**base, "override_settings": {"eta_noise_seed_delta": 31337}},
                         timeout=120).json()
    text = json.loads(ensd["info"])["infotexts"][0]
    assert "ENSD: 31337" in text and "Schedule type: Align Your Steps" in text
    assert ensd["images"][0] != plain["images"][0]
    # An infotext with ENSD gives ENSD's picture (A1111 applies it as an override for the request).
    again = requests.post(f"{server.api}/txt2img", json={"infotext": text, "steps": SMALL["steps"]}, timeout=120).json()
    assert again["images"][0] == ensd["images"][0]
    # The setting was for those requests only.
    assert requests.get(f"{server.api}/options", timeout=30).json()["eta_noise_seed_delta"] == 0


def test_wrong_types_get_422(server: ApiServer) -> None:
    for body in ({"width": "wide"}, {"steps": 2.5}, {"prompt": ["a", "b"]}):
        answer = requests.post(f"{server.api}/txt2img", json={**SMALL, **body}, timeout=60)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][:2] == ["body", next(iter(body))]
    not_json = requests.post(f"{server.api}/txt2img", data="{not json", timeout=60,
                             headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422


def test_bad_pictures_get_400(server: ApiServer) -> None:
    cases = [
        ("img2img", {"init_images": ["not base64 at all!"]}, 400, "base64"),
        ("img2img", {"init_images": [base64.b64encode(b"no picture").decode()]}, 400, "not a picture"),
        ("img2img", {"init_images": [b64(picture())], "mask": "@@@"}, 400, "base64"),
        ("img2img", {"init_images": ["http://example.com/a.png"]}, 400, "offline"),
        ("img2img", {"init_images": []}, 404, "init image"),
        ("img2img", {"init_images": [b64(picture())], "inpainting_fill": 7, "mask": b64(picture())}, 400, "inpainting_fill"),
        ("img2img", {"init_images": [b64(picture())], "script_name": "Outpainting mk2",
                     "script_args": ["", 32, 4, ["sideways"]]}, 400, "direction"),
        ("png-info", {"image": "%%%"}, 400, "base64"),
    ]
    for route, body, status, words in cases:
        answer = requests.post(f"{server.api}/{route}", json={**SMALL, **body}, timeout=60)
        assert answer.status_code == status, (body, answer.text)
        assert words.lower() in answer.json()["detail"].lower(), answer.text


def test_bad_options_are_refused_and_change_nothing(server: ApiServer) -> None:
    before = server.ctx.options.options.to_dict()
    for body, status in (({"sd_model_checkpoint": "../../etc/passwd"}, 400), ({"sd_model_checkpoint": "nope"}, 404),
                         ({"CLIP_stop_at_last_layers": "two"}, 400), ({"CLIP_stop_at_last_layers": 13}, 400),
                         ({"default_sampler": "nope"}, 400)):
        answer = requests.post(f"{server.api}/options", json=body, timeout=60)
        assert answer.status_code == status, answer.text
    assert server.ctx.options.options.to_dict() == before
    # Unknown keys and wrong types are refused naming the key; read-only keys (GET /options posted back) pass.
    for body, words in (({"sd_checkpoint_hash": "x", "not_an_option": 1}, "not_an_option"),
                        ({"eta_noise_seed_delta": "31337"}, "eta_noise_seed_delta must be a whole number"),
                        ({"sgm_noise_multiplier": 1}, "sgm_noise_multiplier must be true or false"),
                        ({"samples_format": 5}, "samples_format must be text")):
        answer = requests.post(f"{server.api}/options", json=body, timeout=60)
        assert answer.status_code == 400 and words in answer.json()["detail"], answer.text
    assert server.ctx.options.options.to_dict() == before
    whole = requests.get(f"{server.api}/options", timeout=30).json()
    assert requests.post(f"{server.api}/options", json=whole, timeout=60).status_code == 200


# ------------------------------------------------------------------------------------------ auth and mounting

def test_parse_credentials() -> None:
    assert parse_credentials(None) == [] and parse_credentials("a:b, c:d:e") == [("a", "b"), ("c", "d:e")]
    assert parse_credentials([("a", "b")]) == [("a", "b")]
    with pytest.raises(UserError, match="user:password"):
        parse_credentials("nopassword")


def test_api_auth(data_dir: Path) -> None:
    ctx = AppContext.create(Paths.make(data_dir=data_dir), CPU)
    with serve_api(ctx, auth="alice:s3cret,bob:pa:ss") as server:
        anonymous = requests.get(f"{server.api}/sd-models", timeout=30)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Basic"
        assert requests.get(f"{server.api}/sd-models", auth=("alice", "wrong"), timeout=30).status_code == 401
        assert requests.get(f"{server.api}/sd-models", auth=("mallory", "s3cret"), timeout=30).status_code == 401
        assert requests.post(f"{server.api}/txt2img", json=SMALL, timeout=30).status_code == 401
        assert requests.get(f"{server.api}/sd-models", auth=("bob", "pa:ss"), timeout=30).status_code == 200
        api = client(server, "alice", "s3cret")
        assert {"tiny-a", "tiny-b"} <= {m["model_name"] for m in api.get_sd_models()}
        assert api.txt2img(prompt="x", seed=1, **SMALL).image.size == (64, 64)
        # Passwords are not handed out by /cmd-flags.
        assert "s3cret" not in requests.get(f"{server.api}/cmd-flags", auth=("alice", "s3cret"), timeout=30).text


def test_mount_on_a_running_app_without_docs(data_dir: Path) -> None:
    """The web UI's app is already serving (and has FastAPI's docs off, as Gradio's has) when the
    routes are mounted; they and /docs must work there, with their own error answers."""
    from fastapi import FastAPI

    ctx = AppContext.create(Paths.make(data_dir=data_dir), CPU)
    app = FastAPI(docs_url=None, redoc_url=None)
    with serve_api(ctx, app=app) as server:
        requests.get(f"{server.base}/openapi.json", timeout=30)  # the app has started answering
        mount(app, ctx, [("u", "p")], {"api_auth": [("u", "p")], "port": server.port})
        assert requests.get(f"{server.api}/samplers", timeout=30).status_code == 401
        assert requests.get(f"{server.api}/samplers", auth=("u", "p"), timeout=30).status_code == 200
        assert requests.get(f"{server.base}/docs", timeout=30).status_code == 200
        bad = requests.post(f"{server.api}/txt2img", json={"sampler_name": "nope"}, auth=("u", "p"), timeout=30)
        assert bad.status_code == 404 and bad.json()["error"]
        flags = requests.get(f"{server.api}/cmd-flags", auth=("u", "p"), timeout=30).json()
        assert flags == {"api_auth": "<hidden>", "port": server.port}


# ------------------------------------------------------------------------------------------ the default model

@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server whose only user data is empty, so the embedded default model is the one it uses."""
    if not DEFAULT_MODEL.exists():
        pytest.skip("the default model is still being trained")
    ctx = AppContext.create(Paths.make(data_dir=tmp_path_factory.mktemp("api-default")), CPU)
    with serve_api(ctx) as running:
        yield running


def test_default_model_draws_the_prompt(default_server: ApiServer) -> None:
    """The prompt reaches the model through the API: the default model draws the colours asked for."""
    from modules.training.default_model.judge import judge

    api = client(default_server)
    # width/height 0: the model's native size (an extension; A1111 has no such value).
    result = api.txt2img(prompt="a red circle on a blue background", seed=1, steps=20, width=0, height=0)
    assert result.info["sd_model_name"] == "default-shapes"
    verdict = judge(result.image)
    # Background colour adherence is not reached by the shipped model yet (issue 4); shape colour is.
    assert (verdict.foreground, verdict.shape) == ("red", "circle"), verdict
