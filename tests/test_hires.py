"""Hires. fix on a tiny checkpoint: sizes, the second pass's steps/size/prompt, infotext, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modules.errors import UserError
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing import hires
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.upscalers import UpscalerRegistry
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _params(**kw) -> Txt2ImgParams:
    base = {"prompt": "a red circle", "steps": 3, "seed": 7, "width": 64, "height": 64, "save": False,
            "checkpoint": "tiny", "sampler": "Euler", "enable_hr": True}
    return Txt2ImgParams(**{**base, **kw})


def _unet_calls(registry: ModelRegistry, params: Txt2ImgParams) -> tuple[list[tuple[int, int]], list, object]:
    """Latent (h, w) and the positive context of every UNet call, and the result."""
    model = registry.load("tiny")
    calls: list[tuple[int, int]] = []
    contexts: list[torch.Tensor] = []

    def record(_module, args, kwargs):
        calls.append(tuple(args[0].shape[-2:]))
        contexts.append(kwargs["encoder_hidden_states"][1].clone())

    handle = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = generate(params, registry)
    finally:
        handle.remove()
    return calls, contexts, result


def test_latent_upscale_second_pass(registry: ModelRegistry) -> None:
    calls, _, result = _unet_calls(registry, _params(hr_scale=2.0, denoising_strength=0.7, hr_second_pass_steps=4))
    assert result.images[0].size == (128, 128)
    # First pass: 3 steps at 8x8 latents; second, as A1111 counts a hires pass (setup_img2img_steps with
    # the steps given): its 4 steps, the last of an int(4 / 0.7) = 5-step schedule, at 16x16.
    assert calls == [(8, 8)] * 3 + [(16, 16)] * 4
    text = result.infotexts[0]
    for part in ("Size: 64x64", "Denoising strength: 0.7", "Hires upscale: 2", "Hires steps: 4",
                 "Hires upscaler: Latent"):
        assert part in text, text
    values = infotext_to_params(parse_infotext(text)[2])
    assert values["enable_hr"] is True and values["hr_scale"] == 2.0 and values["hr_upscaler"] == "Latent"
    assert values["hr_second_pass_steps"] == 4 and values["width"] == 64


def test_pixel_upscaler_resize_sampler_and_prompt(registry: ModelRegistry) -> None:
    params = _params(hr_upscaler="Lanczos", hr_resize_x=96, hr_resize_y=128, denoising_strength=0.5,
                     hr_sampler="DPM++ 2M", hr_prompt="a blue square", hr_negative_prompt="blurry")
    calls, contexts, result = _unet_calls(registry, params)
    assert result.images[0].size == (96, 128)
    assert calls == [(8, 8)] * 3 + [(16, 12)] * 3  # the first pass's 3 steps again, at the end of 6 (3 / 0.5)
    assert not torch.allclose(contexts[0], contexts[-1])  # the hires prompt is encoded for the second pass
    text = result.infotexts[0]
    for part in ("Hires resize: 96x128", "Hires upscaler: Lanczos", "Hires sampler: DPM++ 2M",
                 "Hires prompt: a blue square", "Hires negative prompt: blurry"):
        assert part in text, text
    assert "Hires upscale:" not in text and "Hires steps:" not in text


def test_one_resize_side_keeps_the_aspect_ratio() -> None:
    params = _params(width=64, height=96, hr_resize_x=128).validate()
    plan = hires.plan(params, UpscalerRegistry())
    assert plan is not None and (plan.width, plan.height) == (128, 192)


def test_both_resize_sides_crop_the_middle(registry: ModelRegistry) -> None:
    plan = hires.plan(_params(width=64, height=64, hr_resize_x=128, hr_resize_y=64).validate(), UpscalerRegistry())
    assert plan is not None and plan.cover == (128, 128) and (plan.width, plan.height) == (128, 64)
    result = generate(_params(hr_resize_x=128, hr_resize_y=64), registry)
    assert result.images[0].size == (128, 64)


def test_strength_zero_is_the_upscaled_first_pass(registry: ModelRegistry) -> None:
    plain = generate(_params(enable_hr=False), registry).images[0]
    upscaled = generate(_params(hr_upscaler="Nearest", denoising_strength=0.0), registry).images[0]
    assert upscaled.size == (128, 128)
    # Decode → nearest x2 → encode → decode again: close to the first pass, not equal (the VAE round trip).
    small = np.asarray(upscaled.resize((64, 64), resample=0), dtype=np.float32)
    assert np.abs(small - np.asarray(plain, dtype=np.float32)).mean() < 60


def test_off_changes_nothing(registry: ModelRegistry) -> None:
    off = generate(_params(enable_hr=False), registry)
    plain = generate(Txt2ImgParams(prompt="a red circle", steps=3, seed=7, width=64, height=64, save=False,
                                   checkpoint="tiny", sampler="Euler"), registry)
    assert np.array_equal(np.asarray(off.images[0]), np.asarray(plain.images[0]))
    assert "Hires" not in off.infotexts[0] and "Denoising strength" not in off.infotexts[0]


@pytest.mark.parametrize("kw, message", [
    ({"hr_upscaler": "SuperRes 9000"}, "SuperRes 9000"),
    ({"hr_scale": 0.0}, "hr_scale"),
    ({"hr_scale": -2.0}, "hr_scale"),
    ({"hr_second_pass_steps": 500}, "hires steps"),
    ({"denoising_strength": 1.5}, "denoising strength"),
    ({"hr_resize_x": 100}, "multiple of 8"),
    ({"hr_sampler": "Nope"}, "Nope"),
    ({"hr_scale": 8.0, "width": 1024, "height": 1024}, "limit"),
])
def test_bad_hires_values_are_refused(registry: ModelRegistry, tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate(_params(save=True, **kw), registry, outdir=tmp_path)
    assert not any(tmp_path.rglob("*.png"))
