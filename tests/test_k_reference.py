"""Whole generations against a reference sampler loop written from k-diffusion's algorithms.

A1111 samples by wrapping the UNet in a denoiser (eps-prediction: denoised = x - sigma * eps, the
UNet fed x / sqrt(sigma^2 + 1) at the fractional training time of sigma), combining the
unconditional and conditional halves with the CFG scale, and running k-diffusion's sampler on its
sigma list from noise * sigma_0. The loop below does exactly that with the product's own UNet and
text conditioning (captured from its run), so the comparison tests the sampling rules, not the
model code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import decode_latents, generate
from modules.sampling.noise import initial_noise
from tests.test_schedules import expected, sigma_to_t
from tests.tiny_models import CPU, write_tiny_checkpoint

STEPS, CFG, SEED, SIDE = 6, 7.0, 21, 64


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _product(registry: ModelRegistry, sampler: str, schedule: str) -> tuple[np.ndarray, torch.Tensor]:
    model = registry.load(registry.checkpoints[0].name)
    contexts: list[torch.Tensor] = []
    handle = model.unet.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"].detach().clone()),
        with_kwargs=True)
    try:
        result = generate(Txt2ImgParams(prompt="a red square", negative_prompt="blue", sampler=sampler,
                                        schedule_type=schedule, steps=STEPS, cfg_scale=CFG, seed=SEED,
                                        width=SIDE, height=SIDE, save=False), registry)
    finally:
        handle.remove()
    return np.asarray(result.images[0], dtype=np.int16), contexts[0]


def _denoiser(registry: ModelRegistry, context: torch.Tensor):
    unet = registry.load(registry.checkpoints[0].name).unet

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.tensor(float(sigma_to_t(np.array([sigma]))[0]))
        x_in = torch.cat([x, x]) / math.sqrt(sigma**2 + 1)
        with torch.no_grad():
            eps = unet(x_in, t, encoder_hidden_states=context).sample.float()
        uncond, cond = (torch.cat([x, x]) - sigma * eps).chunk(2)
        return uncond + CFG * (cond - uncond)

    return denoise


def _euler(denoise, x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def _heun(denoise, x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = (x_2 - denoise(x_2, sigmas[i + 1])) / sigmas[i + 1]
        x = x + (d + d_2) / 2 * dt
    return x


def _dpm_2(denoise, x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        mid = math.exp((math.log(sigmas[i]) + math.log(sigmas[i + 1])) / 2)
        x_2 = x + d * (mid - sigmas[i])
        d_2 = (x_2 - denoise(x_2, mid)) / mid
        x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def _dpmpp_2m(denoise, x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    old = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        if old is None:
            combined = denoised
        else:
            r = (math.log(sigmas[i - 1]) - math.log(sigmas[i])) / h
            combined = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * combined
        old = denoised
    return x


@pytest.mark.parametrize(("sampler", "schedule", "loop"), [
    ("Euler", "Automatic", _euler),
    ("Euler", "SGM Uniform", _euler),
    ("Heun", "Karras", _heun),
    ("DPM2", "Automatic", _dpm_2),
    ("DPM++ 2M", "Automatic", _dpmpp_2m),
    ("DPM++ 2M", "Align Your Steps", _dpmpp_2m),
])
def test_generation_equals_the_k_diffusion_loop(registry: ModelRegistry, sampler: str, schedule: str, loop) -> None:
    picture, context = _product(registry, sampler, schedule)
    label = {"Euler": "Uniform", "DPM2": "Karras", "DPM++ 2M": "Karras"}[sampler] if schedule == "Automatic" else schedule
    if sampler == "DPM2":  # one sigma more, the next-to-last dropped
        longer = expected(label, STEPS + 1)
        sigmas = np.concatenate([longer[:-2], longer[-1:]])
    else:
        sigmas = expected(label, STEPS)
    noise = initial_noise([SEED], (4, SIDE // 8, SIDE // 8), "cpu", torch.float32)
    latents = loop(_denoiser(registry, context), noise * sigmas[0], sigmas)
    reference = np.asarray(decode_latents(registry.load(registry.checkpoints[0].name), latents)[0], dtype=np.int16)
    assert np.abs(reference - picture).max() <= 1, np.abs(reference - picture).max()
