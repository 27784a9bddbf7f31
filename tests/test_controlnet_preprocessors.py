"""ControlNet preprocessors: each module against the rule it follows, computed here in plain numpy.

The rules are those of A1111's ControlNet extension: shorter side to the processor resolution
(cubic when enlarging, area when shrinking), edge padding to multiples of 64, the map cropped back.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from modules.controlnet import model_free
from modules.controlnet import preprocessors as pp
from modules.errors import UserError


def _picture(h: int = 150, w: int = 230) -> np.ndarray:
    """White background, a faint and a dark rectangle, a grey circle and a black line."""
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    cv2.rectangle(img, (100, 5), (140, 25), (205, 205, 205), thickness=-1)
    cv2.rectangle(img, (20, 30), (90, 110), (30, 60, 90), thickness=-1)
    cv2.circle(img, (160, 70), 35, (128, 128, 128), thickness=-1)
    cv2.line(img, (10, h - 12), (w - 10, h - 20), (0, 0, 0), thickness=3)
    return img


def _resized_padded(img: np.ndarray, res: int) -> tuple[np.ndarray, int, int]:
    """The rule written out: scale so min(h, w) == res, pad (edge) to the next multiple of 64."""
    h, w = img.shape[:2]
    k = res / min(h, w)
    th, tw = int(round(h * k)), int(round(w * k))
    scaled = cv2.resize(img, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    ph, pw = -th % 64, -tw % 64
    return np.pad(scaled, ((0, ph), (0, pw), (0, 0)), mode="edge"), th, tw


def test_canny_is_opencv_canny_on_the_resized_padded_image_and_thresholds_matter():
    img = _picture()
    out = pp.run_module("canny", img, resolution=200, threshold_a=50, threshold_b=150)
    padded, th, tw = _resized_padded(img, 200)
    assert (th, tw) == (200, 307) and padded.shape[:2] == (256, 320)
    expected = cv2.Canny(padded, 50, 150)[:th, :tw]
    assert out.shape == (200, 307, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, 0], expected)
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
    assert set(np.unique(out)) <= {0, 255} and out.max() == 255
    strict = pp.run_module("canny", img, resolution=200, threshold_a=250, threshold_b=255)
    assert (strict > 0).sum() < (out > 0).sum()


def test_minus_one_means_the_module_defaults():
    img = _picture()
    default = pp.run_module("canny", img, -1, -1, -1)
    explicit = pp.run_module("canny", img, 512, 100, 200)
    assert np.array_equal(default, explicit)
    assert min(default.shape[:2]) == 512
    # Out of a slider's range counts as its default too (the extension's rule; webuiapi sends 64).
    assert pp.effective_settings(pp.resolve_module("tile_resample"), 64, 64, 64) == (64, 1.0, 0.5)
    assert pp.effective_settings(pp.resolve_module("canny"), 5000, 0, 300) == (512, 100, 200)
    assert pp.effective_settings(pp.resolve_module("shuffle"), 768, -1, -1)[0] == 512
    # A pixel-perfect resolution is set after the range check in the extension: used as it is.
    assert pp.effective_settings(pp.resolve_module("shuffle"), 300, pixel_perfect=True)[0] == 300
    assert pp.effective_settings(pp.resolve_module("canny"), 40, pixel_perfect=True)[0] == 40
    assert min(pp.run_module("shuffle", _picture(), 300, pixel_perfect=True).shape[:2]) == 300


def test_invert_inverts_at_the_image_size_and_composes_alpha_over_white():
    img = _picture(40, 60)
    assert np.array_equal(pp.run_module("invert", img, resolution=512), 255 - img)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = pp.run_module("invert (from white bg & black line)", grey)
    assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], 255 - grey)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black = white
    assert np.array_equal(pp.run_module("invert", rgba), np.zeros((2, 2, 3), dtype=np.uint8))


def test_lineart_standard_follows_its_formula():
    img = _picture()
    out = pp.run_module("lineart_standard", img, resolution=256)
    padded, th, tw = _resized_padded(img, 256)
    x = padded.astype(np.float32)
    intensity = np.clip(np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2), 0, 255)
    intensity = intensity / max(16.0, float(np.median(intensity[intensity > 8]))) * 127
    expected = np.clip(intensity, 0, 255).astype(np.uint8)[:th, :tw]
    assert out.shape == (th, tw, 3)
    assert np.array_equal(out[:, :, 0], expected)
    # Dark strokes light up, flat white stays black, a blank page gives an empty map.
    assert out[5, 5, 0] == 0
    assert not pp.run_module("lineart_standard", np.full((64, 64, 3), 255, np.uint8), 64).any()


def test_scribble_xdog_follows_its_formula_and_its_threshold():
    img = _picture()
    out = pp.run_module("scribble_xdog", img, resolution=192, threshold_a=20)
    padded, th, tw = _resized_padded(img, 192)
    x = padded.astype(np.float32)
    dog = np.clip(255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2),
                  0, 255).astype(np.int64)
    # The extension computes 2 * (255 - dog) in uint8, i.e. modulo 256.
    expected = np.where((2 * (255 - dog)) % 256 > 20, 255, 0)[:th, :tw]
    assert out.shape == (th, tw, 3)
    assert np.array_equal(out[:, :, 0], expected)
    assert set(np.unique(out)) <= {0, 255} and out.max() == 255
    assert not np.array_equal(out, pp.run_module("scribble_xdog", img, 192, 60))
    assert np.array_equal(pp.run_module("scribble_xdog", img, 192, -1), pp.run_module("scribble_xdog", img, 192, 32))


def test_threshold_binarises_on_the_darkest_channel():
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:, :32] = (200, 150, 130)  # min 130
    img[:, 32:] = (200, 120, 250)  # min 120
    out = pp.run_module("threshold", img, resolution=64, threshold_a=125)
    assert (out[:, :32] == 255).all() and (out[:, 32:] == 0).all()


def test_tile_resample_downsamples_by_the_rate():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    out = pp.run_module("tile_resample", img, resolution=512, threshold_a=2.0)
    assert out.shape == (48, 64, 3)
    block_mean = img.astype(np.float64).reshape(48, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(out.astype(np.float64) - block_mean).max() <= 1.0
    assert pp.run_module("tile_resample", img, threshold_a=3.0).shape == (32, 42, 3)
    assert np.array_equal(pp.run_module("tile_resample", img, threshold_a=1.05), img)
    assert np.array_equal(pp.run_module("tile_resample", img), img)  # default rate 1


def test_shuffle_is_seeded_and_moves_pixels_without_inventing_colours():
    img = np.zeros((128, 128, 3), dtype=np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    img[:64, :64], img[:64, 64:], img[64:, :64], img[64:, 64:] = colours
    a = pp.run_module("shuffle", img, seed=1)
    assert a.shape == (512, 512, 3) and a.dtype == np.uint8  # resolution fixed at 512
    assert np.array_equal(a, pp.run_module("shuffle", img, seed=1))
    b = pp.run_module("shuffle", img, seed=2)
    assert not np.array_equal(a, b)
    scaled, _, _ = _resized_padded(img, 512)
    assert not np.array_equal(a, scaled)
    for out in (a, b):
        # Each output pixel is sampled from the picture: nearly all are one of its four colours.
        dist = np.abs(out[:, :, None, :].astype(int) - colours[None, None].astype(int)).sum(axis=3).min(axis=2)
        assert (dist <= 6).mean() > 0.9
    # The same numbers as the extension's `np.random.seed(s)` then two uniform draws.
    np.random.seed(7)
    first = np.random.uniform(0, 1, size=(4, 4, 1))
    assert np.array_equal(first, np.random.RandomState(7).uniform(low=0, high=1, size=(4, 4, 1)))


def test_inpaint_only_marks_masked_pixels():
    img = _picture(40, 50)
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[10:20, 5:25] = 255
    mask[30, 30] = 100  # below half: not masked
    out = pp.run_module("inpaint_only", img, mask=mask)
    assert out.shape == (40, 50, 4) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, :3], img)
    assert np.array_equal(out[:, :, 3], np.where(mask > 127, 255, 0))
    hint = pp.inpaint_hint(out)
    assert hint.dtype == np.float32 and hint.shape == (40, 50, 3)
    assert (hint[10:20, 5:25] == -1).all()
    np.testing.assert_allclose(hint[0, 0], img[0, 0] / 255.0, atol=1e-6)
    np.testing.assert_allclose(hint[30, 30], img[30, 30] / 255.0, atol=1e-6)
    assert (pp.run_module("inpaint_global_harmonious", img)[:, :, 3] == 0).all()
    with pytest.raises(UserError, match="mask"):
        pp.run_module("inpaint_only", img, mask=np.zeros((10, 10), np.uint8))
    pil_mask = Image.fromarray(mask).convert("RGB")
    assert np.array_equal(pp.run_module("inpaint_only", Image.fromarray(img), mask=pil_mask), out)


@pytest.mark.parametrize(("mode", "expected"), [
    ("Just Resize", 768), ("Crop and Resize", 768), ("Resize and Fill", 341),
    (0, 768), (1, 768), (2, 341), ("Outer Fit (Shrink to Fit)", 341), ("Inner Fit (Scale to Fit)", 768),
])
def test_pixel_perfect_resolution(mode, expected):
    # Image 600 high, 400 wide; target 512 high, 768 wide: k_h = 512/600, k_w = 768/400 = 1.92.
    # max(k) * 400 = 768; min(k) * 400 = 341.33 -> 341.
    assert pp.pixel_perfect_resolution((600, 400), (512, 768), mode) == expected


def test_pixel_perfect_more_cases_and_bad_mode():
    assert pp.pixel_perfect_resolution((512, 512), (512, 512), "Crop and Resize") == 512
    # 1000x300 (h x w) image to 512x512: k = 0.512 and 1.7067; fill: 0.512*300 = 153.6 -> 154.
    assert pp.pixel_perfect_resolution((1000, 300), (512, 512), "Resize and Fill") == 154
    assert pp.pixel_perfect_resolution((1000, 300), (512, 512), "Just Resize") == 512
    with pytest.raises(UserError, match="resize_mode"):
        pp.pixel_perfect_resolution((10, 10), (10, 10), "Stretch")


def test_unknown_module_lists_the_known_ones_and_names_resolve_any_case():
    with pytest.raises(UserError) as err:
        pp.resolve_module("cany")
    assert "cany" in str(err.value) and "canny" in str(err.value) and "lineart_standard" in str(err.value)
    assert pp.resolve_module("INVERT (from white bg & black line)").name == "invert"
    assert pp.resolve_module("Depth_Midas").name == "depth"
    assert pp.resolve_module("softedge_pidinet").name == "pidinet"
    assert pp.resolve_module(None).name == "none"
    with pytest.raises(UserError):
        pp.run_module("nope", _picture())


def test_weight_module_without_files_is_unavailable_and_says_which_file_where(tmp_path):
    modules = {m.name: m for m in pp.list_modules(tmp_path)}
    depth = modules["depth"]
    assert not depth.available
    assert "dpt_hybrid-midas-501f0c75.pt" in depth.unavailable_reason and str(tmp_path) in depth.unavailable_reason
    assert "body_pose_model.pth" in modules["openpose"].unavailable_reason
    assert "facenet.pth" in modules["openpose_full"].unavailable_reason
    assert modules["canny"].available and modules["shuffle"].available
    with pytest.raises(UserError, match="dpt_hybrid-midas-501f0c75.pt"):
        pp.run_module("depth_midas", _picture(), annotator_dir=tmp_path)


@pytest.mark.slow  # importing controlnet_aux takes several seconds
def test_weight_module_runs_offline_from_a_local_file(tmp_path):
    """A pidinet with random weights, saved as the real file is laid out, loads and runs."""
    torch = pytest.importorskip("torch")
    pidi = pytest.importorskip("controlnet_aux.pidi.model")
    torch.manual_seed(0)
    net = pidi.pidinet()
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}},
               tmp_path / "table5_pidinet.pth")
    info = {m.name: m for m in pp.list_modules(tmp_path)}["pidinet"]
    assert info.available, info.unavailable_reason
    out = pp.run_module("softedge_pidinet", _picture(), resolution=128, annotator_dir=tmp_path)
    assert out.shape == (128, 196, 3) and out.dtype == np.uint8
    scribble = pp.run_module("scribble_pidinet", _picture(), resolution=128, annotator_dir=tmp_path)
    # Strokes are made from the cropped soft-edge map, as the extension orders it.
    assert np.array_equal(scribble, model_free.soft_edge_to_scribble(out))


def test_soft_edges_become_thin_scribble_strokes_as_the_anchor_does():
    aux_util = pytest.importorskip("controlnet_aux.util")
    yy, xx = np.mgrid[0:96, 0:128]
    ridge = 250 * np.exp(-((yy - 0.4 * xx - 20) ** 2) / 30.0) + 240 * np.exp(-((xx - 90) ** 2) / 8.0)
    soft = ridge.clip(0, 255).astype(np.uint8)
    # The anchors' rule: non-maximum suppression at 127 (sigma 3), blur sigma 3, > 4 is a stroke.
    expected = cv2.GaussianBlur(aux_util.nms(soft, 127, 3.0), (0, 0), 3.0)
    expected = np.where(expected > 4, 255, 0)
    out = model_free.soft_edge_to_scribble(soft)
    assert out.shape == (96, 128, 3) and np.array_equal(out[:, :, 0], expected)
    assert 0 < (out[:, :, 0] == 255).mean() < 0.5


def test_every_runnable_module_returns_hwc_uint8():
    img = _picture(100, 140)
    for info in pp.list_modules():
        if info.needs_weights:
            continue
        out = pp.run_module(info.name, Image.fromarray(img), resolution=128)
        assert out.dtype == np.uint8 and out.ndim == 3, info.name
        assert out.shape[2] == (4 if info.accepts_mask else 3), info.name


def test_module_list_order_details_and_control_types():
    names = pp.module_names()
    assert names[0] == "none" and names[1] == "tile_resample"
    assert names.index("canny") < names.index("invert") < names.index("threshold")
    labels = pp.module_names(alias_names=True)
    assert "invert (from white bg & black line)" in labels and "depth_midas" in labels
    detail = pp.module_detail()
    assert detail["canny"]["sliders"] == [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]
    assert detail["invert"]["sliders"] == [] and detail["shuffle"]["sliders"] == []
    assert detail["scribble_xdog"]["sliders"][1]["value"] == 32
    assert detail["tile_resample"]["sliders"][1]["name"] == "Down Sampling Rate"

    models = ["control_sd15_canny [aaaa]", "control_v11p_sd15_canny [bbbb]", "control_v11p_sd15_scribble [c]",
              "t2iadapter_sketch [d]", "control_v11f1p_sd15_depth [e]"]
    types = pp.control_types(models)
    assert list(types)[0] == "All"
    assert types["All"]["default_option"] == "none" and types["All"]["default_model"] == "None"
    assert types["All"]["model_list"] == ["None", *models]
    canny = types["Canny"]
    assert canny["module_list"] == ["none", "canny", "invert (from white bg & black line)"]
    assert canny["model_list"] == ["None", "control_sd15_canny [aaaa]", "control_v11p_sd15_canny [bbbb]"]
    assert canny["default_option"] == "canny" and canny["default_model"] == "control_v11p_sd15_canny [bbbb]"
    assert types["Scribble"]["model_list"] == ["None", "control_v11p_sd15_scribble [c]", "t2iadapter_sketch [d]"]
    defaults = {t: v["default_option"] for t, v in types.items()}
    assert defaults["Depth"] == "depth_midas" and defaults["Lineart"].startswith("lineart_standard")
    assert defaults["SoftEdge"] == "softedge_pidinet" and defaults["OpenPose"] == "openpose_full"
    assert defaults["Tile"] == "tile_resample" and defaults["Inpaint"] == "inpaint_only"
    assert defaults["Shuffle"] == "shuffle" and defaults["Scribble"] == "scribble_pidinet"
    assert types["Shuffle"]["default_model"] == "None"


def test_bad_images_are_user_errors():
    with pytest.raises(UserError, match="uint8"):
        pp.run_module("canny", np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(UserError, match="shape"):
        pp.run_module("canny", np.zeros((8, 8, 2), dtype=np.uint8))
    with pytest.raises(UserError):
        pp.run_module("canny", "not an image")
