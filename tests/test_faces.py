"""Face restoration (GFPGAN, CodeFormer) with random-weight files of the real architectures.

The detector's weights are random too, so it finds no faces by itself: where a test needs a face,
the loaded RetinaFace is given one fixed detection (box and five landmarks); everything after it
(alignment, the restoration network, the face parser's mask, pasting back) is the real pipeline.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_api
from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.faces.files import FaceFolders
from modules.faces.restore import FACE_SIZE, FaceRestorers
from modules.processing.params import Txt2ImgParams
from tests.face_files import write_face_files
from tests.tiny_models import CPU, write_tiny_checkpoint

pytestmark = pytest.mark.slow

# One face: box and landmarks (eyes, nose, mouth corners) as fractions of the picture's side.
FACE = [0.35, 0.3, 0.65, 0.72, 0.99, 0.44, 0.42, 0.56, 0.42, 0.5, 0.5, 0.45, 0.6, 0.55, 0.6]


def fake_detections(image: np.ndarray, threshold: float) -> np.ndarray:
    h, w = image.shape[:2]
    scale = np.array([w, h, w, h, 1, w, h, w, h, w, h, w, h, w, h], dtype=np.float32)
    return (np.array(FACE, dtype=np.float32) * scale)[None]


def with_face(restorers: FaceRestorers, name: str) -> None:
    restorers.get(name).helper.face_det.detect_faces = fake_detections


def crop_bounds(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box that facexlib's aligned 512 px crop covers in a picture of `size` (x0, y0, x1, y1)."""
    w, h = size
    landmarks = np.array(FACE[5:], dtype=np.float32).reshape(5, 2) * [w, h]
    template = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                         [201.26117, 371.41043], [313.08905, 371.15118]])
    affine = cv2.estimateAffinePartial2D(landmarks, template, method=cv2.LMEDS)[0]
    inverse = cv2.invertAffineTransform(affine)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]]) @ inverse.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(axis=2) > 0


def picture(size: int = 128, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def assert_only_face_changed(before: Image.Image, after: Image.Image) -> None:
    diff = changed(before, after)
    x0, y0, x1, y1 = crop_bounds(before.size)
    assert diff[y0:y1, x0:x1].any(), "the face was not restored"
    outside = diff.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any(), "pixels outside the face's crop changed"
    w, h = before.size
    box = diff[int(FACE[1] * h):int(FACE[3] * h), int(FACE[0] * w):int(FACE[2] * w)]
    assert box.mean() > 0.5, "most of the detected face box should be restored"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("faces")
    write_face_files(data)
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    return data


@pytest.fixture(scope="module")
def ctx(data_dir: Path) -> AppContext:
    ctx = AppContext.create(Paths.make(data_dir=data_dir, outdir=data_dir / "outputs"), CPU)
    for name in ("GFPGAN", "CodeFormer"):
        with_face(ctx.faces, name)
    return ctx


def test_missing_files_are_named_and_nothing_runs(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion", "sd1", stem="tiny")
    ctx = AppContext.create(Paths.make(data_dir=tmp_path), CPU)
    listing = {f.name: f for f in ctx.faces.listing()}
    assert set(listing) == {"GFPGAN", "CodeFormer"} and not any(f.available for f in listing.values())
    assert "GFPGANv1.4.pth" in listing["GFPGAN"].missing and "detection_Resnet50_Final.pth" in listing["GFPGAN"].missing
    assert str(tmp_path / "models" / "Codeformer") in listing["CodeFormer"].missing
    api = TestClient(create_api(ctx))
    restorers = api.get("/sdapi/v1/face-restorers").json()
    assert [r["name"] for r in restorers] == ["CodeFormer", "GFPGAN"]
    assert all(not r["available"] and "nothing is downloaded" in r["message"] for r in restorers)
    answer = api.post("/sdapi/v1/txt2img", json={"prompt": "a face", "steps": 2, "width": 64, "height": 64,
                                                  "restore_faces": True, "face_restorer": "GFPGAN"})
    assert answer.status_code == 400 and "GFPGANv1.4.pth" in answer.json()["detail"]
    assert not (tmp_path / "outputs").exists()  # refused before anything was made
    answer = api.post("/sdapi/v1/extra-single-image", json={"image": _b64(picture()), "codeformer_visibility": 1})
    assert answer.status_code == 400 and "codeformer-v0.1.0.pth" in answer.json()["detail"]
    with pytest.raises(UserError, match="Unknown face restorer"):
        ctx.faces.check_available("RestoreFormer")


def test_gfpgan_changes_the_face_and_nothing_else(ctx: AppContext) -> None:
    before = picture(160, seed=1)
    after = ctx.faces.restore(before, "GFPGAN")
    assert after.size == before.size
    assert_only_face_changed(before, after)


def test_no_face_found_leaves_the_picture_as_it_is(data_dir: Path) -> None:
    restorers = FaceRestorers(FaceFolders.under(data_dir))
    restorer = restorers.get("CodeFormer")
    restorer.helper.face_det.detect_faces = lambda image, threshold: np.zeros((0, 15), dtype=np.float32)
    before = picture(96, seed=2)
    assert np.array_equal(np.asarray(restorer.restore(before)), np.asarray(before))


def test_txt2img_restores_faces_and_says_so(ctx: AppContext) -> None:
    params = Txt2ImgParams(prompt="a portrait", steps=3, seed=11, width=128, height=128, save=False)
    plain = ctx.generate(params).images[0]
    result = ctx.generate(Txt2ImgParams(**{**params.as_dict(), "restore_faces": True, "face_restorer": "CodeFormer",
                                           "codeformer_weight": 0.3}))
    assert "Face restoration: CodeFormer" in result.infotexts[0]
    assert result.infotexts[0].index("Seed: 11") < result.infotexts[0].index("Face restoration")
    assert_only_face_changed(plain, result.images[0])
    expected = ctx.faces.restore(plain, "CodeFormer", 0.3)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected))


def test_settings_choose_the_restorer_when_the_request_does_not(ctx: AppContext) -> None:
    params = Txt2ImgParams(prompt="x", steps=2)
    assert ctx.face_step(params, ctx.options.effective()) is None  # face_restoration is off by default
    options = ctx.options.effective({"face_restoration": True, "face_restoration_model": "GFPGAN"})
    assert ctx.face_step(params, options).name == "GFPGAN"
    assert ctx.face_step(Txt2ImgParams(restore_faces=False), options) is None  # the request's own choice wins
    assert ctx.face_step(Txt2ImgParams(face_restorer="codeformer"), options).name == "CodeFormer"


def test_extras_api_blends_codeformer_by_its_visibility(ctx: AppContext) -> None:
    api = TestClient(create_api(ctx))
    source = picture(128, seed=3)
    answer = api.post("/sdapi/v1/extra-single-image", json={
        "image": _b64(source), "codeformer_visibility": 0.5, "codeformer_weight": 0.7})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["html_info"] == "CodeFormer visibility: 0.5, CodeFormer weight: 0.7"
    result = Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB")
    expected = Image.blend(source, ctx.faces.restore(source, "CodeFormer", 0.7), 0.5)
    assert np.array_equal(np.asarray(result), np.asarray(expected))
    assert_only_face_changed(source, result)
    listing = api.get("/sdapi/v1/face-restorers").json()
    assert all(r["available"] and r["message"] == "" for r in listing)


def test_a_code_carrying_pickle_is_refused(tmp_path: Path, data_dir: Path) -> None:
    folders = FaceFolders.under(tmp_path)
    for source, target in ((data_dir / "models" / "facedetection", folders.detection),):
        target.mkdir(parents=True)
        for file in source.iterdir():
            (target / file.name).symlink_to(file)
    folders.gfpgan.mkdir(parents=True)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    (folders.gfpgan / "GFPGANv1.4.pth").write_bytes(pickle.dumps({"params_ema": Payload()}))
    with pytest.raises(UserError, match="Refused"):
        FaceRestorers(folders).restore(picture(64), "GFPGAN")
    assert not marker.exists()


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_command_line_switches(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from modules.images import read_infotext
    from modules.processing.infotext import infotext_to_params, parse_infotext

    # Importing webui sets the offline variables: kept to this test (as tests/test_cli.py does).
    for key in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    import webui

    args = ["txt2img", "--data-dir", str(data_dir), "--outdir", str(tmp_path), "--threads", "1", "--steps", "2",
            "--width", "64", "--height", "64", "--seed", "5", "--restore-faces", "--face-restorer", "gfpgan",
            "--codeformer-weight", "0.2"]
    assert webui.main(args) == 0
    path = Path(capsys.readouterr().out.strip())
    fields = infotext_to_params(parse_infotext(read_infotext(path))[2])
    assert fields["restore_faces"] is True and fields["face_restorer"] == "GFPGAN"
