"""Scripts through the API's script_name / script_args, on tiny checkpoints: X/Y/Z plot grids,
prompt matrix, SD upscale, and the 4xx answers for unknown scripts and malformed arguments."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_api
from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.processing.params import Img2ImgParams, Txt2ImgParams
from modules.processing.run import GenerationResult
from modules.scripts.axis_values import parse_numbers
from modules.scripts.grid import label_margins
from modules.scripts.prompt_matrix import combinations
from modules.scripts.registry import find_script
from modules.scripts.sd_upscale import SDUpscale, blend_tiles
from modules.scripts.xyz_plot import XYZPlot
from modules.upscalers import UpscalerRegistry
from tests.test_api_tools import b64, unb64
from tests.tiny_models import CPU, write_tiny_checkpoint

API = "/sdapi/v1"
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2, "seed": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    home = tmp_path_factory.mktemp("scripts-home")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny-a", seed=0)
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny-b", seed=1)
    ctx = AppContext.create(Paths.make(data_dir=home), CPU)
    ctx.options.update({"sd_model_checkpoint": "tiny-a.safetensors"}, save=False)
    client = TestClient(create_api(ctx))
    client.ctx = ctx  # type: ignore[attr-defined] - for the tests that run a script directly
    return client


def xyz_args(x: tuple[str, str], y: tuple[str, str] = ("Nothing", ""), z: tuple[str, str] = ("Nothing", ""),
             **flags: Any) -> list[Any]:
    args = [x[0], x[1], [], y[0], y[1], [], z[0], z[1], []]
    return args + [flags.get("draw_legend", True), flags.get("include_lone_images", True)]


def images_of(answer: Any) -> list[Image.Image]:
    assert answer.status_code == 200, answer.text
    return [unb64(i).convert("RGB") for i in answer.json()["images"]]


def test_axis_values_as_a1111_writes_them() -> None:
    assert parse_numbers("1,2,3", int, "Steps") == [1, 2, 3]
    assert parse_numbers("1-5", int, "Steps") == [1, 2, 3, 4, 5]
    assert parse_numbers("1-10 (+2)", int, "Steps") == [1, 3, 5, 7, 9]
    assert parse_numbers("10-20 [3]", int, "Steps") == [10, 15, 20]
    assert parse_numbers("5-7.5 (+1.25)", float, "CFG") == [5.0, 6.25, 7.5]
    with pytest.raises(UserError, match="'abc' is not a number"):
        parse_numbers("1, abc", int, "Steps")
    with pytest.raises(UserError, match="whole number"):
        parse_numbers("1.5", int, "Steps")


def test_xyz_plot_grid_has_the_asked_shape_labels_and_cells(client: TestClient) -> None:
    args = xyz_args(("Steps", "1,3"), ("CFG Scale", "1-7 [3]"))
    answer = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cat", "script_name": "X/Y/Z plot",
                                                  "script_args": args})
    grid, *cells = images_of(answer)
    assert len(cells) == 6 and all(c.size == (64, 64) for c in cells)
    left, top = label_margins(["Steps: 1", "Steps: 3"], ["CFG Scale: 1", "CFG Scale: 4", "CFG Scale: 7"])
    assert left > 0 and top > 0
    assert grid.size == (left + 2 * 64, top + 3 * 64)
    pixels = np.asarray(grid, dtype=int)
    # Labels are drawn: dark text in the white margins.
    assert (pixels[:top, left:] < 100).any() and (pixels[top:, :left] < 100).any()
    # The grid holds the cells in order x fastest, and cells differ where the axis values differ.
    for i, cell in enumerate(cells):
        r, c = divmod(i, 2)
        assert np.array_equal(pixels[top + r * 64:top + (r + 1) * 64, left + c * 64:left + (c + 1) * 64],
                              np.asarray(cell, dtype=int))
    arrays = [np.asarray(c, dtype=int) for c in cells]
    assert np.abs(arrays[0] - arrays[1]).mean() > 1  # steps 1 vs 3
    assert np.abs(arrays[0] - arrays[2]).mean() > 1  # cfg 1 vs 4
    info = json.loads(answer.json()["info"])
    assert "Steps: 1" in info["infotexts"][0] or "Steps: 1," in info["infotexts"][1]
    assert info["index_of_first_image"] == 1  # the grid comes first


def test_xyz_plot_seed_prompt_sr_checkpoint_and_no_legend(client: TestClient) -> None:
    args = xyz_args(("Prompt S/R", "cat,dog"), ("Checkpoint name", "tiny-a,tiny-b"), draw_legend=False)
    answer = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cat", "script_name": "x/y/z plot",
                                                  "script_args": args})
    grid, *cells = images_of(answer)
    assert grid.size == (128, 128) and len(cells) == 4  # no legend: no margins
    texts = json.loads(answer.json()["info"])["infotexts"]
    assert texts[2].startswith("a dog") and "Model: tiny-b" in texts[4] and "Model: tiny-a" in texts[1]
    arrays = [np.asarray(c, dtype=int) for c in cells]
    assert np.abs(arrays[0] - arrays[2]).mean() > 1  # another checkpoint, another picture
    # Same seed axis values give identical pictures; different seeds differ.
    answer = client.post(f"{API}/txt2img", json={**SMALL, "script_name": "X/Y/Z plot",
                                                  "script_args": xyz_args(("Seed", "7,7,8"))})
    _, a, b, c = images_of(answer)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_prompt_matrix_makes_every_combination(client: TestClient) -> None:
    assert combinations("a|b|c")[1] == ["a", "a, b", "a, c", "a, b, c"]
    answer = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cat|red|at night",
                                                  "script_name": "Prompt matrix", "script_args": []})
    grid, *cells = images_of(answer)
    assert len(cells) == 4
    left, top = label_margins(["-", "red"], ["-", "at night"])
    assert grid.size == (left + 2 * 64, top + 2 * 64)
    info = json.loads(answer.json()["info"])
    prompts = [t.split("\n")[0] for t in info["infotexts"][1:]]
    assert prompts == ["a cat", "a cat, red", "a cat, at night", "a cat, red, at night"]
    assert info["index_of_first_image"] == 1


def test_sd_upscale_returns_twice_the_size(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    answer = client.post(f"{API}/img2img", json={**SMALL, "init_images": [b64(init)], "denoising_strength": 0.3,
                                                  "script_name": "SD upscale", "script_args": ["", 16, "Lanczos", 2.0]})
    (image,) = images_of(answer)
    assert image.size == (128, 128)
    text = json.loads(answer.json()["info"])["infotexts"][0]
    assert "Size: 128x128" in text and "SD upscale upscaler: Lanczos" in text


def test_sd_upscale_tiles_cover_the_picture_and_join_exactly() -> None:
    """With a stand-in generation that returns its input tile, the tiles joined again must give
    exactly the upscaled picture: every pixel covered, overlaps blended without seams."""
    calls: list[Img2ImgParams] = []

    def generate(params: Img2ImgParams) -> GenerationResult:
        calls.append(params)
        return GenerationResult([params.init_image], [f"p\nSize: {params.width}x{params.height}"], [params.seed], params)

    ctx = SimpleNamespace(upscalers=UpscalerRegistry(), generate=generate, outdir=None)
    rng = np.random.default_rng(2)
    init = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    params = Img2ImgParams(init_image=init, width=64, height=64, seed=5, save=False)
    script = SDUpscale()
    result = script.run(ctx, params, script.parse_args(["", 16, "Lanczos", 2.0]))  # type: ignore[arg-type]
    assert result.images[0].size == (80, 96)
    assert len(calls) == 2 * 2 and all(c.init_image.size == (64, 64) and c.seed == 5 for c in calls)
    expected = np.asarray(init.resize((80, 96), Image.Resampling.LANCZOS), dtype=int)
    assert np.abs(np.asarray(result.images[0], dtype=int) - expected).max() <= 1


def test_blend_tiles_is_seamless_for_equal_tiles() -> None:
    tile = Image.new("RGB", (64, 64), (10, 200, 30))
    out = blend_tiles((112, 64), [(0, 0, tile), (48, 0, tile)], 16)
    assert np.all(np.asarray(out) == np.array([10, 200, 30]))


def test_unknown_script_is_422_listing_the_scripts(client: TestClient) -> None:
    answer = client.post(f"{API}/txt2img", json={**SMALL, "script_name": "Loopback wave"})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "Loopback wave" in detail and "X/Y/Z plot" in detail and "Prompt matrix" in detail
    answer = client.post(f"{API}/txt2img", json={**SMALL, "script_name": "SD upscale"})  # img2img only
    assert answer.status_code == 422 and "SD upscale" in answer.json()["detail"]


@pytest.mark.parametrize(("script", "args", "message"), [
    ("X/Y/Z plot", ["Steps", "1, many"], "not a number"),
    ("X/Y/Z plot", ["Colour", "1,2"], "the axis 'Colour' is not available here"),
    ("X/Y/Z plot", [99, "1,2"], "axis type 99 is out of range"),
    ("X/Y/Z plot", ["Steps", "1,2", [], "Nothing", "", [], "Nothing", "", [], True, True, False, False,
                    False, False, False, 0, False, "extra"], "at most 18"),
    ("X/Y/Z plot", ["Prompt S/R", "horse,dog"], "'horse'"),
    ("X/Y/Z plot", ["Checkpoint name", "tiny-a,missing"], "missing"),
    ("X/Y/Z plot", "Steps", "valid list"),
    ("Prompt matrix", [True, False, "sideways"], "sideways"),
])
def test_malformed_script_args_are_4xx(client: TestClient, script: str, args: Any, message: str) -> None:
    answer = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cat", "script_name": script,
                                                  "script_args": args})
    assert 400 <= answer.status_code < 500, answer.text
    assert message in json.dumps(answer.json())


def test_registry_lookup() -> None:
    assert find_script("x/y/z PLOT", "txt2img").title == "X/Y/Z plot"
    assert find_script("SD upscale", "inpaint").title == "SD upscale"


def test_xyz_plot_on_img2img_with_denoising_and_sampler_axes(client: TestClient) -> None:
    rng = np.random.default_rng(4)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    args = xyz_args(("Denoising", "0.2,0.9"), ("Sampler", "Euler,DDIM"))
    answer = client.post(f"{API}/img2img", json={**SMALL, "init_images": [b64(init)], "script_name": "X/Y/Z plot",
                                                  "script_args": args})
    grid, *cells = images_of(answer)
    assert len(cells) == 4
    texts = json.loads(answer.json()["info"])["infotexts"]
    assert "Denoising strength: 0.9" in texts[2] and "Sampler: DDIM" in texts[3]
    left, top = label_margins(["Denoising: 0.2", "Denoising: 0.9"], ["Euler", "DDIM"])
    assert grid.size == (left + 128, top + 128)
    # The Denoising axis needs a picture to denoise: refused on txt2img without hires. fix.
    answer = client.post(f"{API}/txt2img", json={**SMALL, "script_name": "X/Y/Z plot", "script_args": args})
    assert answer.status_code == 400 and "Denoising" in answer.json()["detail"]


def test_xyz_checkpoint_axis_puts_the_loaded_model_back(client: TestClient) -> None:
    ctx = client.ctx  # type: ignore[attr-defined]
    ctx.registry.load("tiny-a.safetensors")
    script = XYZPlot()
    args = script.parse_args(["Checkpoint name", "tiny-b"])
    result = script.run(ctx, Txt2ImgParams(prompt="a", width=64, height=64, steps=1, seed=1, save=False), args)
    assert "Model: tiny-b" in result.infotexts[1]
    assert ctx.registry.current_info.name == "tiny-a.safetensors"


def test_xyz_axis_indices_are_a1111s_per_tab(client: TestClient) -> None:
    from modules.scripts.xyz_axes import tab_axes

    # A1111's xyz_grid.py order: txt2img has the hires axes, img2img Image CFG Scale instead.
    txt = tab_axes("txt2img")
    img = tab_axes("img2img")
    assert txt[:14] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                        "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name",
                        "Negative Guidance minimum sigma", "Sigma Churn"]
    assert img[:12] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale",
                        "Prompt S/R", "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma"]
    script = XYZPlot()
    params = Txt2ImgParams(prompt="a cat", steps=2, seed=3, width=64, height=64)
    expected = {4: "Steps", 6: "CFG Scale", 1: "Seed", 9: "Sampler", 11: "Checkpoint name"}
    for index, label in expected.items():
        args = script.parse_args([index, "1,2" if label != "Sampler" else "Euler", [], 0, "", [], 0, "", []])
        if label == "Checkpoint name":
            args["x_values"] = "tiny-a"
        (kind, _), _, _ = script.axes(client.ctx, params, args)
        assert kind.label == label
    img_params = Img2ImgParams(prompt="a cat", steps=2, seed=3, init_image=Image.new("RGB", (64, 64)))
    for index, label in {4: "Steps", 5: "CFG Scale", 9: "Sampler", 10: "Checkpoint name"}.items():
        values = {"Sampler": "Euler", "Checkpoint name": "tiny-a"}.get(label, "1,2")
        args = script.parse_args([index, values, [], 0, "", [], 0, "", []])
        assert script.axes(client.ctx, img_params, args)[0][0].label == label
    # Names work too; an axis this program lacks is refused with what it offers.
    assert script.axes(client.ctx, params, script.parse_args(["steps", "1,2"]))[0][0].label == "Steps"
    with pytest.raises(UserError, match="'Prompt order' is not available here"):
        script.axes(client.ctx, params, script.parse_args([8, "a,b"]))
    # Through the API as a client sends it, and listed in /script-info in that order.
    answer = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cat", "script_name": "X/Y/Z plot",
                                                  "script_args": [4, "1,2", [], 6, "3,7", []]})
    grid, *cells = images_of(answer)
    assert len(cells) == 4
    infos = {(i["name"], i["is_img2img"]): i for i in client.get(f"{API}/script-info").json()}
    assert infos[("x/y/z plot", False)]["args"][0]["choices"] == txt
    assert infos[("x/y/z plot", True)]["args"][0]["choices"] == img
