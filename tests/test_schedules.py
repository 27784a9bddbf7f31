"""A1111's schedule types, evaluation times and sampler settings, checked against the formulas.

Every expected value here is computed in the test from A1111's rules (modules/sd_schedulers.py,
k-diffusion's schedule functions and its log-linear time map) in numpy float64; the product
computes in float32 as A1111 does, hence the relative tolerances.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.sampling.k_schedulers import start_noise_scale
from modules.sampling.samplers import SamplerSettings, make_scheduler, sampler_info
from modules.sampling.schedule_types import SCHEDULE_LABELS, SCHEDULES
from tests.tiny_models import CPU, write_tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Should have t[ab][<>]=t[01]:UserWarning")

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
      "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
AYS = {False: [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
       True: [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]}


def table() -> np.ndarray:
    """The model's sigmas: betas linear in sqrt space (float64), alpha_bar kept in float32 as LDM does."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas).astype(np.float32).astype(np.float64)
    return np.sqrt((1 - alpha_bar) / alpha_bar)


SIGMAS = table()
LOG = np.log(SIGMAS)


def t_to_sigma(t: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(t, np.arange(1000), LOG))  # linear in log sigma


def sigma_to_t(sigma: np.ndarray) -> np.ndarray:
    return np.interp(np.log(sigma), LOG, np.arange(1000))


def expected(label: str, n: int, sdxl: bool = False) -> np.ndarray:
    lo, hi = SIGMAS[0], SIGMAS[-1]
    zero = [0.0]
    if label == "Uniform" or label == "Normal":  # Normal: t from t(sigma_max)=999 to t(sigma_min)=0
        return np.concatenate([t_to_sigma(np.linspace(999, 0, n)), zero])
    if label == "Karras":
        ramp = np.linspace(0, 1, n)
        return np.concatenate([(hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7, zero])
    if label in ("Exponential", "Polyexponential"):  # polyexponential with rho 1 is exponential
        return np.concatenate([np.exp(np.linspace(math.log(hi), math.log(lo), n)), zero])
    if label == "SGM Uniform":
        return np.concatenate([t_to_sigma(np.linspace(999, 0, n + 1)[:-1]), zero])
    if label == "KL Optimal":
        f = np.arange(n + 1) / n
        return np.tan(f * np.arctan(lo) + (1 - f) * np.arctan(hi))
    if label == "Align Your Steps":
        values = AYS[sdxl]
        if n != len(values):
            values = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 11), np.log(values[::-1])))[::-1]
        return np.concatenate([values, zero])
    if label == "Simple":
        return np.concatenate([[SIGMAS[-(1 + int(i * 1000 / n))] for i in range(n)], zero])
    if label == "DDIM":
        return np.concatenate([SIGMAS[list(range(1, 1000, 1000 // n))][::-1], zero])
    if label == "Beta":
        q = np.array([stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)])
        return np.concatenate([lo + q * (hi - lo), zero])
    raise AssertionError(label)


def _scheduler(sampler: str, schedule: str, steps: int, sdxl: bool = False, **settings):
    scheduler = make_scheduler(sampler, schedule, SD, is_sdxl=sdxl, noise_seeds=[1],
                               settings=SamplerSettings(**settings))
    scheduler.set_timesteps(steps)
    return scheduler


def test_twelve_schedule_types_in_a1111_order() -> None:
    assert SCHEDULE_LABELS == ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                               "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
    assert [s.name for s in SCHEDULES][5:7] == ["sgm_uniform", "kl_optimal"]
    assert sampler_info("Euler").schedule_types == SCHEDULE_LABELS


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd1", "sdxl"])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("label", SCHEDULE_LABELS[1:])
def test_sigmas_follow_a1111(label: str, steps: int, sdxl: bool) -> None:
    scheduler = _scheduler("Euler", label, steps, sdxl)
    want = expected(label, steps, sdxl)
    np.testing.assert_allclose(scheduler.k_sigmas.numpy(), want, rtol=2e-5, atol=1e-6)
    # Euler evaluates once per level, at the level's fractional training time.
    np.testing.assert_allclose(scheduler.timesteps.numpy(), sigma_to_t(want[:steps]), atol=2e-3)


def test_align_your_steps_tables_differ_by_model() -> None:
    assert not torch.equal(_scheduler("Euler", "Align Your Steps", 10).k_sigmas,
                           _scheduler("Euler", "Align Your Steps", 10, sdxl=True).k_sigmas)


def _levels(sampler: str, steps: int) -> np.ndarray:
    """A1111's sigmas for the sampler's Automatic schedule, penultimate dropped for DPM2 / DPM2 a."""
    automatic = sampler_info(sampler).automatic_schedule
    if sampler in ("DPM2", "DPM2 a"):
        longer = expected(automatic, steps + 1)
        return np.concatenate([longer[:-2], longer[-1:]])
    return expected(automatic, steps)


def _evaluations(sampler: str, s: np.ndarray) -> np.ndarray:
    """Where k-diffusion's sampler calls the model: each level, plus the second-order point."""
    points = []
    for i in range(len(s) - 1):
        points.append(s[i])
        if s[i + 1] == 0:
            continue  # the last step is a plain Euler step
        if sampler == "Heun":
            points.append(s[i + 1])
        elif sampler == "DPM2":
            points.append(math.exp((math.log(s[i]) + math.log(s[i + 1])) / 2))
        elif sampler == "DPM2 a":
            up = math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2)
            down = math.sqrt(s[i + 1] ** 2 - up**2)
            points.append(math.exp((math.log(s[i]) + math.log(down)) / 2))
        elif sampler == "DPM++ SDE":
            points.append(math.sqrt(s[i] * s[i + 1]))  # sigma at t + h/2 with t = -log sigma
    return np.array(points)


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("sampler", ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M",
                                     "DPM++ SDE", "DPM++ 2M SDE"])
def test_automatic_evaluation_times_follow_a1111(sampler: str, steps: int) -> None:
    scheduler = _scheduler(sampler, "Automatic", steps)
    levels = _levels(sampler, steps)
    np.testing.assert_allclose(scheduler.k_sigmas.numpy(), levels, rtol=2e-5, atol=1e-6)
    want = sigma_to_t(_evaluations(sampler, levels))
    got = scheduler.timesteps.double().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3)
    if steps == 20:  # 10 uniform steps land on whole times (999, 888, ...); others are fractional
        assert np.any(np.abs(got - np.round(got)) > 0.01)  # not rounded, as A1111


def test_dpm2_discards_the_penultimate_sigma() -> None:
    # Ten steps of DPM2 end ..., s_8, 0 where s is the 11-step Karras list: its tiny s_9 is gone.
    sigmas = _scheduler("DPM2", "Karras", 10).k_sigmas.numpy()
    karras11 = expected("Karras", 11)
    assert len(sigmas) == 11 and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas[-2], karras11[-3], rtol=1e-5)
    # The setting does it for every sampler.
    euler = _scheduler("Euler", "Karras", 10, always_discard_next_to_last_sigma=True).k_sigmas.numpy()
    np.testing.assert_allclose(euler, sigmas, rtol=1e-6)


def test_kl_optimal_ends_at_sigma_min_with_every_evaluation_inside() -> None:
    for sampler in ("Euler", "Heun", "DPM++ 2M"):
        scheduler = _scheduler(sampler, "KL Optimal", 6)
        assert scheduler.k_sigmas[-1].item() == pytest.approx(SIGMAS[0], rel=1e-5)
        calls = {"Euler": 6, "Heun": 12, "DPM++ 2M": 6}[sampler]  # Heun: a correction on every step
        assert len(scheduler.timesteps) == calls


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_sgm_noise_multiplier_scales_the_start_by_the_exact_ratio(sampler: str) -> None:
    plain = _scheduler(sampler, "Automatic", 10)
    sgm = _scheduler(sampler, "Automatic", 10, sgm_noise_multiplier=True)
    sigma0 = float(expected(sampler_info(sampler).automatic_schedule, 10)[0])
    ratio = start_noise_scale(sgm, True) / start_noise_scale(plain, False)
    assert ratio == pytest.approx(math.sqrt(1 + sigma0**2) / sigma0, rel=1e-6)
    # In k-diffusion's space the start is noise * sigma_0 (or * sqrt(1 + sigma_0^2)).
    vp = 1 / math.sqrt(1 + sigma0**2) if sampler == "DPM++ 2M" else 1.0
    assert start_noise_scale(plain, False) == pytest.approx(sigma0 * vp, rel=1e-6)


# ------------------------------------------------------------------ through the generation loop

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _run(registry: ModelRegistry, sampler: str, settings: SamplerSettings | None = None, steps: int = 4,
         capture: list | None = None):
    params = Txt2ImgParams(prompt="a red circle", sampler=sampler, steps=steps, seed=11, width=64, height=64,
                           save=False)
    unet = registry.load(registry.checkpoints[0].name).unet
    handle = None
    if capture is not None:
        handle = unet.register_forward_pre_hook(
            lambda module, args, kwargs: capture.append((args[0].detach().clone(), float(args[1]))), with_kwargs=True)
    try:
        return generate(params, registry, sampling=settings)
    finally:
        if handle is not None:
            handle.remove()


def test_unet_is_called_at_fractional_times(registry: ModelRegistry) -> None:
    calls: list = []
    _run(registry, "DPM++ 2M", capture=calls)
    want = sigma_to_t(expected("Karras", 4)[:4])
    np.testing.assert_allclose([t for _, t in calls], want, atol=2e-3)


def test_sgm_noise_multiplier_in_a_generation(registry: ModelRegistry) -> None:
    plain: list = []
    sgm: list = []
    first = _run(registry, "Euler", capture=plain)
    second = _run(registry, "Euler", SamplerSettings(sgm_noise_multiplier=True), capture=sgm)
    sigma0 = SIGMAS[-1]
    ratio = (sgm[0][0] / plain[0][0]).flatten()
    np.testing.assert_allclose(ratio.numpy(), math.sqrt(1 + sigma0**2) / sigma0, rtol=1e-4)
    assert "SGM noise multiplier: True" in second.infotexts[0]
    assert "SGM noise multiplier" not in first.infotexts[0]


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_ensd_changes_ancestral_pictures_and_is_recorded(registry: ModelRegistry) -> None:
    plain = _run(registry, "Euler a")
    ensd = _run(registry, "Euler a", SamplerSettings(eta_noise_seed_delta=31337))
    assert np.abs(_pixels(plain) - _pixels(ensd)).max() > 3
    assert "ENSD" not in plain.infotexts[0]
    fields = infotext_to_params(parse_infotext(ensd.infotexts[0])[2])
    assert fields["eta_noise_seed_delta"] == 31337
    # Samplers without step noise ignore it, and A1111 does not write it for them.
    euler = _run(registry, "Euler")
    euler_ensd = _run(registry, "Euler", SamplerSettings(eta_noise_seed_delta=31337))
    assert np.array_equal(_pixels(euler), _pixels(euler_ensd)) and "ENSD" not in euler_ensd.infotexts[0]


def test_every_schedule_type_generates(registry: ModelRegistry, tmp_path: Path) -> None:
    pictures = set()
    for label in SCHEDULE_LABELS[1:]:
        params = Txt2ImgParams(prompt="x", sampler="Euler", schedule_type=label, steps=3, seed=1, width=64,
                               height=64, save=False)
        result = generate(params, registry)
        assert f"Schedule type: {label}" in result.infotexts[0]
        pictures.add(result.images[0].tobytes())
    assert len(pictures) >= 8  # Uniform and Normal share their sigmas, and Exponential / Polyexponential
