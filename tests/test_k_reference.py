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
from typing import Any

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


def _generate_capturing(registry: ModelRegistry, params, **kw: Any) -> tuple[Any, list[torch.Tensor]]:
    """The product's result, and the text conditioning of each UNet call."""
    model = registry.load(registry.checkpoints[0].name)
    contexts: list[torch.Tensor] = []
    handle = model.unet.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"].detach().clone()),
        with_kwargs=True)
    try:
        return generate(params, registry, **kw), contexts
    finally:
        handle.remove()


def _product(registry: ModelRegistry, sampler: str, schedule: str) -> tuple[np.ndarray, torch.Tensor]:
    result, contexts = _generate_capturing(registry, Txt2ImgParams(
        prompt="a red square", negative_prompt="blue", sampler=sampler, schedule_type=schedule, steps=STEPS,
        cfg_scale=CFG, seed=SEED, width=SIDE, height=SIDE, save=False))
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


@pytest.mark.parametrize(("sampler", "strength", "loop"), [("Euler", 0.5, _euler), ("DPM++ 2M", 0.75, _dpmpp_2m),
                                                           ("Euler", 1.0, _euler)])
def test_img2img_equals_the_k_diffusion_loop(registry: ModelRegistry, sampler: str, strength: float, loop) -> None:
    from PIL import Image, ImageDraw

    from modules.processing.params import Img2ImgParams
    from modules.processing.run import encode_image

    picture = Image.new("RGB", (SIDE, SIDE), (30, 60, 200))
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill=(220, 40, 40))
    model = registry.load(registry.checkpoints[0].name)
    result, contexts = _generate_capturing(registry, Img2ImgParams(
        prompt="a red square", negative_prompt="blue", sampler=sampler, steps=STEPS, cfg_scale=CFG, seed=SEED,
        init_image=picture, denoising_strength=strength, save=False))
    # A1111 (setup_img2img_steps): t_enc = int(min(strength, 0.999) * steps), the last t_enc + 1 steps of the
    # schedule, starting from picture + noise * sigma there.
    t_enc = int(min(strength, 0.999) * STEPS)
    assert len(contexts) == t_enc + 1
    sigmas = expected("Uniform" if sampler == "Euler" else "Karras", STEPS)[STEPS - t_enc - 1:]
    noise = initial_noise([SEED], (4, SIDE // 8, SIDE // 8), "cpu", torch.float32)
    start = encode_image(model, picture) + noise * sigmas[0]
    latents = loop(_denoiser(registry, contexts[0]), start, sigmas)
    reference = np.asarray(decode_latents(model, latents)[0], dtype=np.int16)
    assert np.abs(reference - np.asarray(result.images[0], dtype=np.int16)).max() <= 1


def test_hires_pass_steps_follow_a1111() -> None:
    from modules.processing.run import _steps_from_picture

    # img2img: 20 steps at 0.75 -> int(15) + 1 = 16 steps of the 20-step schedule.
    assert _steps_from_picture(20, 0.75, True, False) == (20, 16)
    assert _steps_from_picture(20, 1.0, True, False) == (20, 20)  # int(0.999 * 20) + 1
    # hires. fix asks for its steps: 20 at 0.7 run at the end of an int(20 / 0.7) = 28-step schedule.
    assert _steps_from_picture(20, 0.7, True, True) == (28, 20)
    # DDIM, PLMS, UniPC, LCM keep their own rule.
    assert _steps_from_picture(20, 0.75, False, False) == (20, 15)


def test_img2img_fix_steps_runs_every_step(registry: ModelRegistry) -> None:
    from PIL import Image

    from modules.processing.params import Img2ImgParams
    from modules.sampling.samplers import SamplerSettings

    unet = registry.load(registry.checkpoints[0].name).unet
    for fixed, calls in ((False, int(0.5 * STEPS) + 1), (True, STEPS)):
        seen: list = []
        handle = unet.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(1))
        try:
            generate(Img2ImgParams(prompt="x", sampler="Euler", steps=STEPS, seed=SEED, denoising_strength=0.5,
                                   init_image=Image.new("RGB", (SIDE, SIDE), (90, 30, 30)), save=False),
                     registry, sampling=SamplerSettings(img2img_fix_steps=fixed))
        finally:
            handle.remove()
        assert len(seen) == calls


@pytest.mark.parametrize(("eta", "source"), [(0.0, "CPU"), (0.5, "CPU"), (1.0, "CPU"), (1.0, "NV"), (0.5, "NV")])
def test_euler_ancestral_eta_equals_the_k_diffusion_loop(registry: ModelRegistry, eta: float, source: str) -> None:
    from modules.sampling.samplers import SamplerSettings

    result, contexts = _generate_capturing(registry, Txt2ImgParams(
        prompt="a red square", negative_prompt="blue", sampler="Euler a", steps=STEPS, cfg_scale=CFG, seed=SEED,
        width=SIDE, height=SIDE, save=False), sampling=SamplerSettings(eta_ancestral=eta, randn_source=source))
    denoise, shape = _denoiser(registry, contexts[0]), (4, SIDE // 8, SIDE // 8)
    sigmas = expected("Uniform", STEPS)
    # k-diffusion's sample_euler_ancestral with get_ancestral_step(sigma, sigma_next, eta); the step noise
    # from the image's generator, continuing after its start noise (A1111's ImageRNG).
    if source == "NV":
        from modules.sampling.philox import PhiloxNormal

        stream = PhiloxNormal(SEED)
        x = stream.randn(shape).unsqueeze(0) * sigmas[0]
        draw = lambda: stream.randn(shape)  # noqa: E731
    else:
        generator = torch.Generator().manual_seed(SEED)
        x = torch.randn(shape, generator=generator).unsqueeze(0) * sigmas[0]
        draw = lambda: torch.randn(shape, generator=generator)  # noqa: E731
    for i in range(STEPS):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        sigma_up = min(nxt, eta * math.sqrt(nxt**2 * (sigma**2 - nxt**2) / sigma**2))
        sigma_down = math.sqrt(nxt**2 - sigma_up**2)
        x = x + (x - denoise(x, sigma)) / sigma * (sigma_down - sigma)
        x = x + draw().unsqueeze(0) * sigma_up
    reference = np.asarray(decode_latents(registry.load(registry.checkpoints[0].name), x)[0], dtype=np.int16)
    picture = np.asarray(result.images[0], dtype=np.int16)
    assert np.abs(reference - picture).max() <= 1, np.abs(reference - picture).max()
    from modules.processing.infotext import parse_infotext

    fields = parse_infotext(result.infotexts[0])[2]
    assert float(fields["Eta"]) == eta if eta != 1.0 else "Eta" not in fields  # A1111 writes it when not 1
    assert fields.get("RNG") == (source if source != "GPU" else None)


@pytest.mark.parametrize(("churn", "tmin", "tmax", "s_noise"), [(0.5, 0.0, 0.0, 1.0), (3.0, 1.0, 5.0, 0.9)])
def test_euler_sigma_churn_equals_the_k_diffusion_loop(registry: ModelRegistry, churn: float, tmin: float,
                                                       tmax: float, s_noise: float) -> None:
    from modules.processing.infotext import parse_infotext
    from modules.sampling.samplers import SamplerSettings

    settings = SamplerSettings(s_churn=churn, s_tmin=tmin, s_tmax=tmax, s_noise=s_noise, randn_source="CPU")
    result, contexts = _generate_capturing(registry, Txt2ImgParams(
        prompt="a red square", negative_prompt="blue", sampler="Euler", steps=STEPS, cfg_scale=CFG, seed=SEED,
        width=SIDE, height=SIDE, save=False), sampling=settings)
    denoise, shape = _denoiser(registry, contexts[0]), (4, SIDE // 8, SIDE // 8)
    sigmas = expected("Uniform", STEPS)
    # k-diffusion's sample_euler; the churn noise from the image's generator after its start noise.
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(shape, generator=generator).unsqueeze(0) * sigmas[0]
    churned = 0
    for i in range(STEPS):
        inside = tmin <= sigmas[i] <= (tmax or math.inf)
        gamma = min(churn / STEPS, 2**0.5 - 1) if inside else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            churned += 1
            eps = torch.randn(shape, generator=generator).unsqueeze(0) * s_noise
            x = x + eps * math.sqrt(sigma_hat**2 - sigmas[i] ** 2)
        x = x + (x - denoise(x, sigma_hat)) / sigma_hat * (sigmas[i + 1] - sigma_hat)
    assert 0 < churned <= STEPS
    reference = np.asarray(decode_latents(registry.load(registry.checkpoints[0].name), x)[0], dtype=np.int16)
    picture = np.asarray(result.images[0], dtype=np.int16)
    assert np.abs(reference - picture).max() <= 1, np.abs(reference - picture).max()
    fields = parse_infotext(result.infotexts[0])[2]
    assert float(fields["Sigma churn"]) == churn and float(fields.get("Sigma noise", 1.0)) == s_noise
    plain, _ = _product(registry, "Euler", "Automatic")
    assert np.abs(plain - picture).max() > 2  # the churn changed the picture
