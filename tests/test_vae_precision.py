"""A VAE that overflows in reduced precision is decoded again in fp32 (A1111's "Automatically revert
VAE to 32-bit floats"), unless that is switched off.

The test VAE is the tiny SD 1.x one with its decoder's first convolution scaled by 2**17: its outputs
reach ~3e5, past fp16's largest number (65504), so the fp16 decode turns into inf/NaN, while in fp32 the
next GroupNorm scales them back and the picture stays finite. Weights and latents are rounded to fp16
first, so the fp32 reference and the fallback compute from the very same numbers.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from modules.devices import DevicePolicy
from modules.models.placement import decode, place_model, vae_dtype
from modules.processing.run import decode_latents
from tests.tiny_models import build_random_model

SCALE = 2.0**17  # a power of two: the scaled weights stay exactly representable in fp16


@pytest.fixture(scope="module")
def overflowing() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(fp32 VAE with fp16-exact weights, fp16-exact latents, that VAE's fp32 decode)."""
    vae = build_random_model("sd1").vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(SCALE)
        vae.decoder.conv_in.bias.mul_(SCALE)
    vae = vae.half().float()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half().float()
    with torch.no_grad():
        reference = vae.decode(z).sample
        assert vae.decoder.conv_in(z).abs().max() > 65504  # the premise: fp16 cannot hold these
    assert torch.isfinite(reference).all() and reference.std() > 0.1
    return vae, z, reference


def _in(vae: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    copied = copy.deepcopy(vae)
    # half() / bfloat16() rather than to(dtype): the same cast without diffusers' warning about `to()`.
    return copied.half() if dtype == torch.float16 else copied.bfloat16()


def test_without_fallback_the_fp16_decode_breaks(overflowing) -> None:
    vae, z, _ = overflowing
    half = _in(vae, torch.float16)
    with torch.no_grad():
        x = decode(half, z.half(), auto_precision=False)
    assert x.dtype == torch.float16 and not torch.isfinite(x).all()
    assert vae_dtype(half) == torch.float16  # switched off: nothing converted


def test_fallback_decodes_again_in_fp32(overflowing, caplog: pytest.LogCaptureFixture) -> None:
    vae, z, reference = overflowing
    half = _in(vae, torch.float16)
    with caplog.at_level(logging.WARNING, logger="modules.models.placement"), torch.no_grad():
        x = decode(half, z.half())
        again = decode(half, z.half())
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, reference, rtol=0, atol=0)
    torch.testing.assert_close(again, reference, rtol=0, atol=0)
    assert vae_dtype(half) == torch.float32  # for good: the second decode went straight to fp32
    notes = [r.getMessage() for r in caplog.records if "32-bit" in r.getMessage()]
    assert len(notes) == 1 and "float16" in notes[0] and "--no-half-vae" in notes[0]


def test_finite_reduced_precision_decode_is_kept(overflowing, caplog: pytest.LogCaptureFixture) -> None:
    """bf16 has fp32's range: the same VAE does not overflow there, and nothing is converted."""
    vae, z, reference = overflowing
    bf16 = _in(vae, torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="modules.models.placement"), torch.no_grad():
        x = decode(bf16, z)
    assert x.dtype == torch.bfloat16 and torch.isfinite(x).all()
    assert vae_dtype(bf16) == torch.bfloat16
    assert not [r for r in caplog.records if r.name == "modules.models.placement"]
    assert (x.float() - reference).abs().max() < 0.1  # bf16 rounding, not a different picture


def test_fallback_under_lowvram_offloading(overflowing) -> None:
    """--lowvram keeps the weights as CPU copies loaded by accelerate's hooks (parameters are meta
    tensors): the converted VAE must still compute in fp32."""
    vae, z, reference = overflowing
    model = build_random_model("sd1")
    model.vae = _in(vae, torch.float16)
    model.unet.half()
    for encoder in model.text_encoders:
        encoder.half()
    policy = DevicePolicy(device=torch.device("cpu"), dtype=torch.float16, vae_dtype=torch.float16, offload="lowvram")
    place_model(model, policy)
    assert next(model.vae.parameters()).device.type == "meta"
    with torch.no_grad():
        x = decode(model.vae, z.half())
    torch.testing.assert_close(x, reference, rtol=0, atol=0)


def test_generation_decode_path_falls_back(overflowing) -> None:
    """`decode_latents`, the generation's last step, goes through the fallback (default on)."""
    vae, z, reference = overflowing
    model = build_random_model("sd1")
    model.vae = _in(vae, torch.float16)
    image = decode_latents(model, z * model.arch.scale_factor)[0]
    expected = ((reference[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1
