"""The ControlNet rules without a generation: step window, scales, passes, map fitting, infotext, registry.

Expected values are worked out here from the extension's rules (scripts/hook.py, controlnet.py,
internal_controlnet/args.py) and from A1111's step counter, not read back from the product.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.controlnet.apply import acts_in_pass, blur_mask, control_scales, unit_acts_at, unit_inputs
from modules.controlnet.hint import fit_map, hint_tensor
from modules.controlnet.infotext import parse_unit_infotext, unit_infotext
from modules.controlnet.registry import ControlNetRegistry
from modules.controlnet.units import ControlUnit
from modules.errors import UserError
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import InpaintParams
from tests.tiny_controlnets import write_tiny_controlnet
from tests.tiny_models import build_random_model


@pytest.mark.parametrize(("steps", "start", "end", "active"), [
    # While step i runs A1111's counter reads i - 1 (0 for steps 0 and 1): fractions 0, 0, 1/20, ...
    (20, 0.0, 0.5, list(range(12))),  # (i - 1) / 20 <= 0.5 up to i = 11
    (20, 0.1, 1.0, list(range(3, 20))),  # (i - 1) / 20 >= 0.1 from i = 3
    (4, 0.0, 0.0, [0, 1]),  # both first steps read 0
    (4, 1.0, 1.0, []),  # the last fraction is 2/4
    (10, 0.35, 0.35, []),  # between 0.3 and 0.4
    (10, 0.3, 0.3, [4]),  # both ends inclusive
])
def test_step_window(steps: int, start: float, end: float, active: list[int]) -> None:
    assert [i for i in range(steps) if unit_acts_at(i, steps, start, end)] == active


def test_control_scales() -> None:
    assert control_scales(0.7, 13, soft=False) == [0.7] * 13
    soft = control_scales(2.0, 13, soft=True)
    assert soft[12] == 2.0 and soft[0] == pytest.approx(2.0 * 0.825 ** 12)
    assert all(b / a == pytest.approx(1 / 0.825) for a, b in zip(soft, soft[1:], strict=False))
    sdxl = control_scales(1.0, 10, soft=True)  # the first 10 of the 13: the middle block gets 0.825^3
    assert len(sdxl) == 10 and sdxl[-1] == pytest.approx(0.825 ** 3)


def test_hr_option() -> None:
    for second in (False, True):
        assert acts_in_pass("Low res only", False, second) and acts_in_pass("High res only", False, second)
        assert acts_in_pass("Both", True, second)
    assert acts_in_pass("Low res only", True, False) and not acts_in_pass("Low res only", True, True)
    assert acts_in_pass("High res only", True, True) and not acts_in_pass("High res only", True, False)


def stripes(height: int = 32, width: int = 64) -> np.ndarray:
    """Four vertical stripes of greys 10, 100, 150, 250."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    for i, grey in enumerate((10, 100, 150, 250)):
        arr[:, i * width // 4:(i + 1) * width // 4] = grey
    return arr


def test_crop_and_resize_covers_and_centres() -> None:
    # 64 wide x 32 high into 64 x 64: scaled by max(64/32, 64/64) = 2 to 128 x 64, centre 64 columns kept;
    # four flat colours resize by nearest neighbour, so the middle stripes fill the halves exactly.
    out = fit_map(stripes(), "Crop and Resize", 64, 64)
    assert out.shape == (64, 64, 3)
    assert (out[:, :32] == 100).all() and (out[:, 32:] == 150).all()


def test_resize_and_fill_pads_with_the_border_median() -> None:
    # Scaled by min(2, 1) = 1 and centred 16 rows down; the border pixels are 64 x 10, 32 x 100,
    # 32 x 150 and 64 x 250, whose median is (100 + 150) / 2 = 125.
    out = fit_map(stripes(), "Resize and Fill", 64, 64)
    assert (out[:16] == 125).all() and (out[48:] == 125).all()
    assert np.array_equal(out[16:48], stripes())


def test_just_resize_keeps_thin_lines_thin() -> None:
    lines = np.zeros((32, 32, 3), dtype=np.uint8)
    lines[10, 4:28] = 255  # a one-pixel edge, as canny draws it
    out = fit_map(lines, "Just Resize", 64, 64)
    assert set(np.unique(out)) == {0, 255}
    per_column = (out[:, :, 0] == 255).sum(axis=0)
    assert per_column[12:52].max() == 1 and per_column[12:52].min() == 1  # still one pixel thick
    assert abs(int(np.argmax(out[:, 32, 0])) - 21) <= 1  # at twice the height


def test_inpaint_hint_marks_the_mask_minus_one() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :, :3] = 51
    rgba[:4, :, 3] = 255
    hint = hint_tensor(fit_map(rgba, "Just Resize", 8, 8, inpaint=True))
    assert hint.shape == (1, 3, 8, 8)
    assert (hint[:, :, :4] == -1).all() and torch.allclose(hint[:, :, 4:], torch.full_like(hint[:, :, 4:], 0.2))


def test_infotext_value_and_its_reading() -> None:
    unit = ControlUnit(enabled=True, module="canny", model="x", weight=0.5, guidance_end=0.8,
                       control_mode=1).validate()
    text = unit_infotext(unit, "control_v11p_sd15_canny [d14c016b]", 512, 100, 200)
    assert text == ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.5, "
                    "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, "
                    "Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, "
                    "Control Mode: My prompt is more important")
    assert unit_infotext(unit, "odd, name", 512, 100, 200) == ""  # would break the list: left out
    line = f'Steps: 20, Sampler: Euler, Seed: 1, ControlNet 1: "{text}", ControlNet 0: "{text.replace("0.5", "1.5")}"'
    units = infotext_to_params(parse_infotext("a cat\n" + line)[2])["controlnet_units"]
    assert [u["weight"] for u in units] == [1.5, 0.5]  # by N
    assert units[1] == {"enabled": True, **parse_unit_infotext(text)}
    assert units[1]["processor_res"] == 512 and units[1]["pixel_perfect"] is False
    with pytest.raises(ValueError, match="Key: value"):
        parse_unit_infotext("Module canny")


def test_registry_finds_caches_and_refuses(tmp_path: Path) -> None:
    write_tiny_controlnet(tmp_path / "cn", "sd1", "ldm", stem="edges")
    registry = ControlNetRegistry([tmp_path / "cn"])
    file = registry.find("edges [00000000]")  # a client may send another copy's hash
    assert registry.find(file.title()) == file
    arch = build_random_model("sd1").arch
    first = registry.load(file, arch, "tiny", torch.device("cpu"), torch.float32)
    assert registry.load(file, arch, "tiny", torch.device("cpu"), torch.float32) is first
    assert registry.load(file, arch, "tiny", torch.device("cpu"), torch.float64) is not first
    with pytest.raises(UserError, match=r"unknown ControlNet model 'lines'.*Known models: edges"):
        registry.find("lines")
    (tmp_path / "cn" / "lines.safetensors").write_bytes((tmp_path / "cn" / "edges.safetensors").read_bytes())
    assert registry.find("lines").model_name == "lines"  # found after a rescan


def test_inpaint_inputs_inverted_and_blurred() -> None:
    image = Image.new("RGB", (32, 32), "red")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    params = InpaintParams(init_image=image, mask=mask, invert_mask=True, mask_blur=2, resize_mode="crop and resize")
    inputs = unit_inputs(params)
    assert inputs.image is image and inputs.resize_mode == "crop and resize" and inputs.mask_blur == 2
    assert np.asarray(inputs.mask)[0, 0] == 0 and np.asarray(inputs.mask)[0, 31] == 255
    blurred = blur_mask(inputs.mask, 2)
    # A1111's kernel: 2 * int(2.5 * 2 + 0.5) + 1 = 11 wide, sigma 2: the edge is softened both sides.
    assert 0 < blurred[16, 15] < 128 < blurred[16, 16] < 255 and blurred[16, 0] == 0 and blurred[16, 31] == 255


def test_inpaint_restore_noise_follows_the_rule() -> None:
    """eps' = (x / sqrt(a) - x0') / sqrt(1 / a - 1), x0' = x0 inside the mask and the picture's latents
    outside, blended with the output by the weight; a = alpha_bar at the rounded time (DDPM schedule)."""
    from diffusers import DDPMScheduler

    from modules.controlnet.restore import InpaintRestore, _schedule

    model = build_random_model("sd1")
    sqrt_recip, sqrt_recip_m1 = _schedule(model)
    torch.manual_seed(0)
    out, x, origin = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :3] = 1
    restore = InpaintRestore(origin, mask, 0.75, sqrt_recip, sqrt_recip_m1, np.zeros((64, 64)), np.zeros((64, 64, 3)))
    got = restore.noise(out, x, torch.tensor(499.6))
    alpha_bar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[500]
    x0 = (x - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
    x0 = x0 * mask + origin * (1 - mask)
    eps = (x / alpha_bar.sqrt() - x0) / (1 / alpha_bar - 1).sqrt()
    torch.testing.assert_close(got, eps * 0.75 + out * 0.25, rtol=1e-4, atol=1e-4)
    # Inside the mask the prediction is the output's own: nothing changes there.
    torch.testing.assert_close(got[..., :3], out[..., :3], rtol=1e-4, atol=1e-4)
