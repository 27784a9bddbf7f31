"""ControlNet over the API as the extension's clients speak it: `alwayson_scripts.ControlNet.args` in
txt2img / img2img (raw JSON in every image shape, and webuiapi's ControlNetUnit on a real server),
the /controlnet endpoints, and bad units refused with a 4xx naming the field before anything runs.

A tiny SD 1.x checkpoint with a tiny SD 1.x ControlNet (and an SDXL one for the architecture
error). Expected values follow the extension's rules: `ControlNet N` infotext fields, module
defaults for -1, `name [legacy hash]` titles, its endpoint answers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from modules.api import create_api
from modules.context import AppContext, Paths
from modules.errors import UserError
from tests.test_api import client, serve_api
from tests.tiny_controlnets import write_tiny_controlnet
from tests.tiny_models import CPU, write_tiny_checkpoint

webuiapi = pytest.importorskip("webuiapi")

SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3,
                         "prompt": "a square"}


def edge_map() -> Image.Image:
    """A white square outline on black: what a canny map of a square looks like."""
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 20, 44, 48), outline="white", width=2)
    return image


def scribble_mask() -> Image.Image:
    """A partial mask: the extension reads a non-empty, non-full mask as the unit's drawing."""
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((8, 8, 40, 40), fill=255)
    return mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def legacy_title(path: Path) -> str:
    """The extension's model title: stem and sha256 of the 64 KiB at 1 MiB, 8 hex digits."""
    data = path.read_bytes()
    return f"{path.stem} [{hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}]"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("api-controlnet")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    write_tiny_controlnet(data / "models" / "ControlNet", "sd1", stem="tiny_canny")
    write_tiny_controlnet(data / "models" / "ControlNet" / "xl", "sdxl", stem="tiny_xl_canny")
    return data


@pytest.fixture(scope="module")
def api(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    ctx = AppContext.create(Paths.make(data_dir=data_dir, outdir=tmp_path_factory.mktemp("out")), CPU)
    ctx.options.update({"sd_model_checkpoint": "tiny"}, save=False)
    return TestClient(create_api(ctx))


def unit(**fields: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "none", "model": "tiny_canny", "image": b64(edge_map()), **fields}


def txt2img(api: TestClient, *units: Any, key: str = "ControlNet", **body: Any) -> Any:
    payload = {**SMALL, **body}
    if units:
        payload["alwayson_scripts"] = {key: {"args": list(units)}}
    return api.post("/sdapi/v1/txt2img", json=payload)


def picture_and_field(answer: Any) -> tuple[np.ndarray, str | None]:
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    first = info["index_of_first_image"]
    image = np.asarray(decode(answer.json()["images"][first]).convert("RGB"))
    return image, info["extra_generation_params"].get("ControlNet 0")


# ------------------------------------------------------------------------------------------ generation

def test_a_unit_changes_the_picture_and_is_recorded(api: TestClient, data_dir: Path) -> None:
    plain, none_field = picture_and_field(txt2img(api))
    controlled, field = picture_and_field(txt2img(api, unit(weight=1.5, guidance_end=0.9)))
    assert none_field is None
    assert np.abs(plain.astype(int) - controlled.astype(int)).max() > 0
    # The extension's serialisation: eleven settings in its order, -1 replaced by the module's defaults.
    title = legacy_title(data_dir / "models" / "ControlNet" / "tiny_canny.safetensors")
    assert field == (f"Module: none, Model: {title}, Weight: 1.5, Resize Mode: Crop and Resize, "
                     "Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, "
                     "Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced")


def test_script_key_any_case_and_disabled_units_do_nothing(api: TestClient) -> None:
    plain, _ = picture_and_field(txt2img(api))
    reference, _ = picture_and_field(txt2img(api, unit()))
    lower, field = picture_and_field(txt2img(api, unit(), key="controlnet"))
    assert np.array_equal(lower, reference) and field is not None
    # Disabled units are not read at all (the extension skips them), whatever they hold; a unit
    # without `enabled` is off, the extension's default.
    off = {"enabled": False, "model": "no such model", "weight": 5, "image": "not base64"}
    missing = {k: v for k, v in unit().items() if k != "enabled"}
    for units in ([off], [missing], []):
        image, field = picture_and_field(txt2img(api, *units))
        assert np.array_equal(image, plain) and field is None


def variants() -> dict[str, dict[str, Any]]:
    """Unit objects the extension reads as the same unit as `unit(...)` with the edge map, canny at
    its defaults, Just Resize and "My prompt is more important"."""
    data = b64(edge_map())
    named = {"module": "canny", "resize_mode": "Just Resize", "control_mode": "My prompt is more important"}
    return {
        "names": unit(**named),
        "numbers": unit(module="canny", resize_mode=0, control_mode=1),
        "number strings": unit(module="canny", resize_mode="0", control_mode="1"),
        "minus one is the default": unit(**named, processor_res=-1, threshold_a=-1, threshold_b=-1),
        "explicit defaults": unit(**named, processor_res=512, threshold_a=100, threshold_b=200),
        "data URL": unit(**named, image="data:image/png;base64," + data),
        "old alias input_image": {k: v for k, v in unit(**named, input_image=data).items() if k != "image"},
        "module by its label, any case": unit(**{**named, "module": "CANNY"}),
        "old aliases guidance and lowvram": unit(**named, guidance=1.0, lowvram=True),
        "null means default": unit(**named, weight=None, guidance_start=None, pixel_perfect=None,
                                   advanced_weighting=None, effective_region_mask=None),
        "fields of other features ignored": unit(**named, pulid_mode="Fidelity", union_control_type="Unknown",
                                                 is_ui=False, batch_images=""),
    }


def test_every_unit_shape_gives_the_same_picture(api: TestClient) -> None:
    shapes = variants()
    first, field = picture_and_field(txt2img(api, shapes.pop("names")))
    assert "Module: canny," in field and "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0" in field
    assert "Resize Mode: Just Resize" in field and "Control Mode: My prompt is more important" in field
    for name, shape in shapes.items():
        image, other = picture_and_field(txt2img(api, shape))
        assert other == field, name
        assert np.array_equal(image, first), name


def test_image_and_mask_shapes(api: TestClient) -> None:
    """{"image", "mask"}, [image, mask], image + mask and Forge's mask_image are one unit; the
    partial mask is read as the drawing (the extension's canvas scribble), so the picture differs
    from the image alone."""
    image, mask = b64(edge_map()), b64(scribble_mask())
    alone, _ = picture_and_field(txt2img(api, unit()))
    shapes = [unit(image={"image": image, "mask": mask}), unit(image=[image, mask]), unit(mask=mask),
              unit(mask_image=mask), unit(image=[{"image": image, "mask": mask}])]
    results = [picture_and_field(txt2img(api, shape))[0] for shape in shapes]
    assert not np.array_equal(results[0], alone)
    for index, result in enumerate(results[1:], 1):
        assert np.array_equal(result, results[0]), index
    # An all-black mask marks nothing: the image itself is the input.
    black = b64(Image.new("L", (64, 64), 0))
    assert np.array_equal(picture_and_field(txt2img(api, unit(mask=black)))[0], alone)


def test_img2img_unit_without_image_uses_the_input_picture(api: TestClient) -> None:
    body = {**SMALL, "init_images": [b64(edge_map())], "denoising_strength": 0.6}
    plain = api.post("/sdapi/v1/img2img", json=body)
    own = api.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [unit()]}}})
    # webuiapi sends "" for a unit without a picture of its own.
    borrowed = api.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [unit(image="")]}}})
    (p, _), (o, field), (b, _) = (picture_and_field(a) for a in (plain, own, borrowed))
    assert field is not None and not np.array_equal(p, o)
    assert np.array_equal(o, b)  # the input picture is the edge map itself


def test_webuiapi_controlnet_unit(data_dir: Path, tmp_path: Path) -> None:
    ctx = AppContext.create(Paths.make(data_dir=data_dir, outdir=tmp_path), CPU)
    ctx.options.update({"sd_model_checkpoint": "tiny"}, save=False)
    with serve_api(ctx) as server:
        api = client(server)
        assert api.controlnet_version() == 3
        assert legacy_title(data_dir / "models" / "ControlNet" / "tiny_canny.safetensors") in api.controlnet_model_list()
        assert "canny" in api.controlnet_module_list()
        kwargs = {"prompt": "a square", "seed": 3, "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
        plain = api.txt2img(**kwargs)
        cn = webuiapi.ControlNetUnit(image=edge_map(), module="canny", model="tiny_canny", weight=0.8,
                                     guidance_start=0.0, guidance_end=1.0, control_mode=2)
        made = api.txt2img(controlnet_units=[cn], **kwargs)
        # webuiapi's defaults: Resize and Fill, processor_res 512, thresholds 64 (in canny's range, so used).
        field = made.info["extra_generation_params"]["ControlNet 0"]
        assert field.startswith("Module: canny, Model: tiny_canny [") and ", Weight: 0.8, Resize Mode: Resize and Fill, " \
            "Processor Res: 512, Threshold A: 64.0, Threshold B: 64.0, Guidance Start: 0.0, Guidance End: 1.0, " \
            "Pixel Perfect: False, Control Mode: ControlNet is more important" in field
        assert np.abs(np.asarray(plain.image, dtype=int) - np.asarray(made.image, dtype=int)).max() > 0
        # img2img: a unit without a picture of its own (webuiapi sends "") takes the input picture.
        moved = api.img2img(images=[edge_map()], denoising_strength=0.6, controlnet_units=[
            webuiapi.ControlNetUnit(module="invert", model="tiny_canny")], **kwargs)
        assert "Module: invert, Model: tiny_canny [" in moved.info["extra_generation_params"]["ControlNet 0"]
        assert len(moved.images) == 2  # the picture and the unit's detected map
        assert np.array_equal(np.asarray(moved.images[1].convert("RGB")), 255 - np.asarray(edge_map()))
        detected = api.controlnet_detect([edge_map()], module="canny", processor_res=64, threshold_a=100,
                                         threshold_b=200)
        # webuiapi posts them as `controlnet_images`, as data URLs.
        assert detected.info == "Success" and len(detected.images) == 1
        edges = cv2.Canny(np.asarray(edge_map()), 100, 200)
        assert np.array_equal(np.asarray(detected.image.convert("RGB")), np.stack([edges] * 3, axis=2))


# ------------------------------------------------------------------------------------------ bad units

@pytest.mark.parametrize(("units", "words"), [
    ([unit(model="no_such_model")], ["ControlNet unit 0", "model", "no_such_model"]),
    ([unit(model="None")], ["ControlNet unit 0", "no ControlNet model"]),
    ([unit(model="")], ["ControlNet unit 0", "no ControlNet model"]),
    ([unit(module="no_such_module")], ["ControlNet unit 0", "no_such_module"]),
    ([unit(weight=5)], ["ControlNet unit 0", "weight"]),
    ([unit(weight="heavy")], ["ControlNet unit 0", "weight"]),
    ([unit(guidance_start=0.8, guidance_end=0.2)], ["ControlNet unit 0", "guidance_start"]),
    ([unit(image="bm90IGEgcGljdHVyZQ==")], ["ControlNet unit 0 image", "not a picture"]),
    ([unit(image="%%%")], ["ControlNet unit 0 image", "base64"]),
    ([unit(image=[1, 2, 3])], ["ControlNet unit 0", "image"]),
    ([unit(control_mode=7)], ["ControlNet unit 0", "control_mode"]),
    ([unit(resize_mode="Sideways")], ["resize_mode", "Sideways"]),
    ([unit(hr_option="Sometimes")], ["ControlNet unit 0", "hr_option"]),
    ([unit(enabled="maybe")], ["ControlNet unit 0", "enabled"]),
    ([unit(input_image=b64(edge_map()))], ["ControlNet unit 0", "input_image", "image"]),
    ([unit(), unit(processor_res="big")], ["ControlNet unit 1", "processor_res"]),
    ([unit(mask=b64(Image.new("L", (32, 32))))], ["ControlNet unit 0", "mask"]),
    ([unit(image=None, mask=b64(scribble_mask()))], ["ControlNet unit 0", "mask", "without an image"]),
    ([unit()] * 4, ["4 ControlNet units", "at most 3"]),
    (["canny"], ["ControlNet unit 0", "str"]),
    ([unit(model="tiny_xl_canny")], ["ControlNet unit 0", "SDXL", "SD 1.x"]),
    ([unit(advanced_weighting=[1.0] * 13)], ["ControlNet unit 0", "advanced_weighting", "not supported"]),
    ([unit(image=None)], ["ControlNet unit 0", "no image"]),
])
def test_bad_units_are_refused_naming_the_field(api: TestClient, units: list[Any], words: list[str]) -> None:
    answer = txt2img(api, *units)
    assert answer.status_code == 400, answer.text
    for word in words:
        assert word.lower() in answer.json()["detail"].lower(), (word, answer.json()["detail"])


def test_bad_units_write_nothing_and_the_server_keeps_going(data_dir: Path, tmp_path: Path) -> None:
    ctx = AppContext.create(Paths.make(data_dir=data_dir, outdir=tmp_path / "out"), CPU)
    api = TestClient(create_api(ctx))
    body = {"override_settings": {"sd_model_checkpoint": "tiny"}, "save_images": True}
    for bad in (unit(weight=5), unit(model="tiny_xl_canny"), unit(image="%%%")):
        assert txt2img(api, bad, **body).status_code == 400
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
    assert txt2img(api, unit(), **body).status_code == 200
    assert any((tmp_path / "out").rglob("*.png"))


def test_other_always_on_scripts_are_still_refused(api: TestClient) -> None:
    answer = api.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert answer.status_code == 422 and "ADetailer" in answer.json()["detail"]
    answer = api.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"ControlNet": {"args": "x"}}})
    assert answer.status_code == 400 and "alwayson_scripts.ControlNet" in answer.json()["detail"]


# ------------------------------------------------------------------------------------------ endpoints

def test_version_settings_and_model_list(api: TestClient, data_dir: Path) -> None:
    assert api.get("/controlnet/version").json() == {"version": 3}
    assert api.get("/controlnet/settings").json() == {"control_net_unit_count": 3, "control_net_max_models_num": 3}
    folder = data_dir / "models" / "ControlNet"
    titles = api.get("/controlnet/model_list").json()["model_list"]
    # Sorted by name, "None" not listed (the extension lists only files), sub-folders included.
    mine = [t for t in titles if t.startswith("tiny_")]
    assert mine == [legacy_title(folder / "tiny_canny.safetensors"), legacy_title(folder / "xl" / "tiny_xl_canny.safetensors")]
    added = folder / "tiny_added.safetensors"
    write_tiny_controlnet(folder, "sd1", stem="tiny_added", seed=5)
    try:
        assert legacy_title(added) not in api.get("/controlnet/model_list?update=false").json()["model_list"]
        assert legacy_title(added) in api.get("/controlnet/model_list?update=true").json()["model_list"]
    finally:
        added.unlink()
        api.get("/controlnet/model_list")


def test_listed_as_an_always_on_script(api: TestClient) -> None:
    scripts = api.get("/sdapi/v1/scripts").json()
    assert scripts["txt2img"][-1] == "controlnet" and scripts["img2img"][-1] == "controlnet"
    info = [i for i in api.get("/sdapi/v1/script-info").json() if i["name"] == "controlnet"]
    assert [(i["is_alwayson"], i["is_img2img"]) for i in info] == [(True, False), (True, True)]


def test_module_list_and_control_types(api: TestClient, data_dir: Path) -> None:
    answer = api.get("/controlnet/module_list").json()
    assert answer["module_list"][0] == "none" and "canny" in answer["module_list"]
    assert answer["module_detail"]["canny"]["sliders"] == [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}]
    aliases = api.get("/controlnet/module_list?alias_names=true").json()
    assert "invert (from white bg & black line)" in aliases["module_list"] and "invert" not in aliases["module_list"]
    assert set(aliases["module_detail"]) == set(aliases["module_list"])
    types = api.get("/controlnet/control_types").json()["control_types"]
    canny = types["Canny"]
    title = legacy_title(data_dir / "models" / "ControlNet" / "tiny_canny.safetensors")
    assert canny["module_list"][:2] == ["none", "canny"] and canny["default_option"] == "canny"
    assert canny["model_list"][0] == "None" and title in canny["model_list"]
    # The extension's default: the first file after None, unless a ControlNet 1.1 file is there.
    files = canny["model_list"][1:]
    assert canny["default_model"] == next((x for x in files if "11" in x.split("[")[0]), files[0])
    assert types["All"]["default_option"] == "none" and types["All"]["default_model"] == "None"
    assert types["Depth"]["model_list"] == ["None"] and types["Depth"]["default_model"] == "None"


def test_detect(api: TestClient) -> None:
    photo = Image.new("RGB", (64, 64), (20, 30, 40))
    ImageDraw.Draw(photo).rectangle((16, 16, 47, 47), fill=(230, 220, 210))
    answer = api.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(photo), b64(edge_map())],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 100, "controlnet_threshold_b": 200})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"images", "info"} and body["info"] == "Success" and len(body["images"]) == 2
    # At its own size (64 = the processor resolution) canny is OpenCV's, the map in all three channels.
    edges = cv2.Canny(np.asarray(photo), 100, 200)
    assert np.array_equal(np.asarray(decode(body["images"][0]).convert("RGB")), np.stack([edges] * 3, axis=2))
    # The inpaint modules take a mask per image and show it half-transparent (alpha 255 - mask // 2).
    masked = api.post("/controlnet/detect", json={"controlnet_module": "inpaint_only",
                                                  "controlnet_input_images": [b64(photo)],
                                                  "controlnet_masks": [b64(scribble_mask())]}).json()
    alpha = np.asarray(decode(masked["images"][0]))[:, :, 3]
    assert np.array_equal(alpha, 255 - np.asarray(scribble_mask()) // 2)


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"controlnet_module": "nope", "controlnet_input_images": ["x"]}, 422, ["controlnet_module", "nope"]),
    ({"controlnet_module": "canny"}, 422, ["controlnet_input_images", "no image"]),
    ({"controlnet_module": "inpaint_only", "controlnet_input_images": [b64(edge_map())]}, 422, ["controlnet_masks"]),
    ({"controlnet_module": "canny", "controlnet_input_images": ["%%%"]}, 400, ["controlnet_input_images[0]"]),
    ({"controlnet_module": "depth", "controlnet_input_images": [b64(edge_map())]}, 422, ["controlnet_module"]),
])
def test_detect_refuses_bad_input(api: TestClient, body: dict[str, Any], status: int, words: list[str]) -> None:
    answer = api.post("/controlnet/detect", json=body)
    assert answer.status_code == status, answer.text
    for word in words:
        assert word.lower() in answer.json()["detail"].lower(), answer.json()["detail"]


def test_controlnet_routes_use_the_api_login(data_dir: Path) -> None:
    api = TestClient(create_api(AppContext.create(Paths.make(data_dir=data_dir), CPU), "user:secret"))
    assert api.get("/controlnet/version").status_code == 401
    assert api.get("/controlnet/version", auth=("user", "secret")).json() == {"version": 3}


def test_controlnet_dir_flag_adds_a_folder(data_dir: Path, tmp_path: Path) -> None:
    import webui

    extra = tmp_path / "elsewhere"
    write_tiny_controlnet(extra, "sd1", stem="tiny_elsewhere", seed=7)
    args = webui.build_parser().parse_args(["--data-dir", str(data_dir), "--controlnet-dir", str(extra),
                                            "--skip-load-model-at-start"])
    api = TestClient(create_api(webui.create_context(args)))
    titles = api.get("/controlnet/model_list").json()["model_list"]
    assert legacy_title(extra / "tiny_elsewhere.safetensors") in titles
    assert legacy_title(data_dir / "models" / "ControlNet" / "tiny_canny.safetensors") in titles
    missing = webui.build_parser().parse_args(["--controlnet-dir", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="--controlnet-dir"):
        webui.create_context(missing)


def test_detected_maps_follow_the_pictures(api: TestClient) -> None:
    """One map per unit that saves it, after the pictures and without infotext (the extension's
    count: n_iter * batch_size + the units); save_detected_map false leaves it out."""
    two = txt2img(api, unit(), unit(module="invert", save_detected_map=False), unit(), batch_size=2)
    assert two.status_code == 200, two.text
    images = two.json()["images"]
    assert len(images) == 2 + 2
    maps = [decode(data) for data in images[2:]]
    assert all("parameters" not in m.info for m in maps) and "parameters" in decode(images[0]).info
    # Module none at the generation's own size: the map is the edge map as given.
    assert np.array_equal(np.asarray(maps[0].convert("RGB")), np.asarray(edge_map()))
    quiet = txt2img(api, unit(save_detected_map=False))
    assert len(quiet.json()["images"]) == 1
