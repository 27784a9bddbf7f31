"""Sampler names -> diffusers schedulers: every accepted combination builds and denoises."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from modules.errors import UserError
from modules.sampling.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    SamplerSettings,
    draws_step_noise,
    list_samplers,
    make_scheduler,
    sampler_info,
    scheduler_step,
    validate_sampler,
)

# diffusers 0.42 + numpy 2 deprecation noise (numpy calling torch's __array__), thousands per run;
# and torchsde's float-rounding warning that samplers.py filters outside pytest.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Should have t[ab][<>]=t[01]:UserWarning")

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
      "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
SD_V = {**SD, "prediction_type": "v_prediction"}

COMBINATIONS = [(info.name, schedule) for info in list_samplers() for schedule in info.schedule_types]


def test_names_match_a1111() -> None:
    assert SAMPLER_NAMES == ("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ SDE",
                             "DPM++ 2M SDE", "DPM++ 2S a", "DDIM", "PLMS", "UniPC", "LCM")
    assert SCHEDULE_TYPES[0] == "Automatic"
    assert [info.name for info in list_samplers()] == list(SAMPLER_NAMES)


@pytest.mark.parametrize(("name", "cls"), [
    ("Euler a", EulerAncestralDiscreteScheduler), ("Euler", EulerDiscreteScheduler),
    ("LMS", LMSDiscreteScheduler), ("Heun", HeunDiscreteScheduler), ("DPM2", KDPM2DiscreteScheduler),
    ("DPM2 a", KDPM2AncestralDiscreteScheduler), ("DPM++ 2M", DPMSolverMultistepScheduler),
    ("DPM++ SDE", DPMSolverSDEScheduler), ("DPM++ 2M SDE", DPMSolverMultistepScheduler),
    ("DPM++ 2S a", DPMSolverSinglestepScheduler), ("DDIM", DDIMScheduler), ("PLMS", PNDMScheduler),
    ("UniPC", UniPCMultistepScheduler), ("LCM", LCMScheduler),
])
def test_mapping(name: str, cls: type) -> None:
    assert isinstance(make_scheduler(name, "Automatic", SD), cls)


def test_scheduler_options() -> None:
    assert make_scheduler("DPM++ 2M", "Uniform", SD).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("DPM++ 2M SDE", "Uniform", SD).config.algorithm_type == "sde-dpmsolver++"
    assert make_scheduler("PLMS", "Automatic", SD).config.skip_prk_steps is True
    ddim = make_scheduler("DDIM", "Automatic", SD)
    assert (ddim.config.steps_offset, ddim.config.timestep_spacing) == (1, "leading")
    assert make_scheduler("Euler", "Automatic", SD_V).config.prediction_type == "v_prediction"


def _sigmas(name: str, schedule: str, steps: int = 10) -> torch.Tensor:
    scheduler = make_scheduler(name, schedule, SD)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas


@pytest.mark.parametrize(("name", "default"), [("DPM++ 2M", "Karras"), ("DPM++ 2M SDE", "Exponential"),
                                               ("Euler", "Uniform"), ("DPM++ SDE", "Karras")])
def test_automatic_is_a1111_default_schedule(name: str, default: str) -> None:
    # A1111 1.9+: "Automatic" means Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, ...
    assert sampler_info(name).automatic_schedule == default
    assert torch.equal(_sigmas(name, "Automatic"), _sigmas(name, default))
    other = "Uniform" if default != "Uniform" else "Karras"
    assert not torch.equal(_sigmas(name, "Automatic"), _sigmas(name, other))


@pytest.mark.parametrize("schedule", ["Karras", "Exponential"])
def test_euler_a_takes_eulers_sigmas(schedule: str) -> None:
    # diffusers' ancestral Euler has no Karras/Exponential option; it samples on the same levels.
    ancestral, euler = make_scheduler("Euler a", schedule, SD), make_scheduler("Euler", schedule, SD)
    ancestral.set_timesteps(12)
    euler.set_timesteps(12)
    assert torch.equal(ancestral.sigmas, euler.sigmas) and torch.equal(ancestral.timesteps, euler.timesteps)
    assert ancestral.init_noise_sigma == euler.init_noise_sigma
    plain = make_scheduler("Euler a", "Uniform", SD)
    plain.set_timesteps(12)
    assert not torch.equal(plain.sigmas, euler.sigmas)


def test_karras_sigmas_match_k_diffusion() -> None:
    scheduler = make_scheduler("Euler", "Karras", SD)
    scheduler.set_timesteps(10)
    sigmas = scheduler.sigmas
    # k-diffusion get_sigmas_karras(10, 0.0292, 14.6146, rho=7) for SD's schedule.
    assert sigmas[0].item() == pytest.approx(14.6146, abs=1e-3)
    assert sigmas[-2].item() == pytest.approx(0.0292, abs=1e-3)
    assert sigmas[-1].item() == 0.0


def test_uniform_spans_whole_schedule() -> None:
    scheduler = make_scheduler("Euler", "Automatic", SD)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0].item() == 999 and scheduler.timesteps[-1].item() == 0


def test_fresh_instance_each_call() -> None:
    assert make_scheduler("Euler", "Automatic", SD) is not make_scheduler("Euler", "Automatic", SD)


@pytest.mark.parametrize(("name", "schedule"), COMBINATIONS)
def test_every_combination_builds(name: str, schedule: str) -> None:
    scheduler = make_scheduler(name, schedule, SD)
    scheduler.set_timesteps(20)
    assert len(scheduler.timesteps) >= 20


@pytest.mark.parametrize("training", [SD, SD_V], ids=["epsilon", "v"])
@pytest.mark.parametrize(("name", "schedule"), COMBINATIONS)
def test_two_step_denoise(name: str, schedule: str, training: dict) -> None:
    scheduler = make_scheduler(name, schedule, training, noise_seeds=[1, 2])
    scheduler.set_timesteps(2)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        sample = scheduler_step(scheduler, torch.zeros_like(model_input), t, sample, generators)
    assert sample.shape == (2, 4, 8, 8)
    assert torch.isfinite(sample).all()


def _run(name: str, seed: int, settings: SamplerSettings | None = None) -> torch.Tensor:
    scheduler = make_scheduler(name, "Automatic", SD, noise_seeds=[seed], settings=settings)
    scheduler.set_timesteps(3)
    sample = torch.ones(1, 4, 4, 4) * scheduler.init_noise_sigma
    generator = [torch.Generator().manual_seed(seed)]
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        sample = scheduler_step(scheduler, torch.zeros_like(model_input), t, sample, generator)
    return sample


@pytest.mark.parametrize("name", [info.name for info in list_samplers() if info.stochastic])
def test_stochastic_samplers_follow_the_seed(name: str) -> None:
    assert torch.equal(_run(name, 5), _run(name, 5))
    assert not torch.equal(_run(name, 5), _run(name, 6))


@pytest.mark.parametrize("name", [info.name for info in list_samplers() if not info.stochastic])
def test_deterministic_samplers_ignore_the_seed(name: str) -> None:
    assert torch.equal(_run(name, 5), _run(name, 6))


def test_eta_settings_take_effect_where_a1111_applies_them() -> None:
    # DDIM's eta (default 0) makes it draw noise at every step: then the seed matters.
    noisy = SamplerSettings(eta_ddim=0.5)
    assert draws_step_noise("DDIM", noisy) and not draws_step_noise("DDIM", SamplerSettings())
    assert torch.equal(_run("DDIM", 5, noisy), _run("DDIM", 5, noisy))
    assert not torch.equal(_run("DDIM", 5, noisy), _run("DDIM", 6, noisy))
    # Euler a at eta 0 adds no noise: the seed no longer matters, and it steps as Euler.
    quiet = SamplerSettings(eta_ancestral=0.0)
    assert torch.equal(_run("Euler a", 5, quiet), _run("Euler a", 6, quiet))
    torch.testing.assert_close(_run("Euler a", 5, quiet), _run("Euler", 5))
    # The infotext names an eta when it is not the sampler's default, as A1111 writes it.
    assert noisy.infotext_fields("DDIM") == {"Eta DDIM": 0.5} and noisy.infotext_fields("Euler a") == {}
    assert quiet.infotext_fields("Euler a") == {"Eta": 0.0} and quiet.infotext_fields("Euler") == {}


def test_lcm_takes_more_steps_than_distilled() -> None:
    scheduler = make_scheduler("LCM", "Automatic", SD)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]  # diffusers' own LCM schedule
    scheduler.set_timesteps(60)
    assert len(scheduler.timesteps) == 60 and scheduler.timesteps[0].item() == 999


@pytest.mark.parametrize(("given", "expected"), [
    (("Euler a",), ("Euler a", "Automatic")),
    (("euler A", "karras"), ("Euler a", "Karras")),
    (("Euler a Exponential",), ("Euler a", "Exponential")),
    (("ddim", "Karras"), None),
    (("k_euler_a",), ("Euler a", "Automatic")),
    (("euler_a",), ("Euler a", "Automatic")),
    (("k_dpmpp_2m", "Karras"), ("DPM++ 2M", "Karras")),
    (("dpm++ 2m sde", "EXPONENTIAL"), ("DPM++ 2M SDE", "Exponential")),
    (("DPM++ 2M Karras",), ("DPM++ 2M", "Karras")),
    (("DPM++ 2M SDE Exponential",), ("DPM++ 2M SDE", "Exponential")),
    (("DPM++ 2M Karras", "Karras"), ("DPM++ 2M", "Karras")),
    ((" plms ",), ("PLMS", "Automatic")),
    (("UniPC", "Uniform"), ("UniPC", "Uniform")),
])
def test_validate_names(given: tuple[str, ...], expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(UserError, match="Schedule types for DDIM: Automatic, Uniform"):
            validate_sampler(*given)
    else:
        assert validate_sampler(*given) == expected


def test_unknown_sampler_lists_valid_names() -> None:
    with pytest.raises(UserError) as error:
        validate_sampler("Restart")
    for name in SAMPLER_NAMES:
        assert name in str(error.value)
    with pytest.raises(UserError, match="Valid samplers"):
        make_scheduler("nope", "Automatic", SD)


def test_bad_schedule_and_conflicts() -> None:
    with pytest.raises(UserError, match="Valid schedule types: Automatic, Uniform, Karras, Exponential, "
                                        "Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, "
                                        "Normal, DDIM, Beta"):
        validate_sampler("Euler", "Quadratic")
    with pytest.raises(UserError, match="Schedule types for UniPC: Automatic, Uniform, Karras, Exponential"):
        validate_sampler("UniPC", "Polyexponential")
    with pytest.raises(UserError, match="Karras"):
        validate_sampler("DPM++ 2M Karras", "Exponential")
    for name in ("DDIM", "PLMS", "LCM"):
        with pytest.raises(UserError, match="cannot use the Karras schedule"):
            make_scheduler(name, "Karras", SD)


def test_bad_prediction_type() -> None:
    with pytest.raises(UserError, match="epsilon, v_prediction"):
        make_scheduler("Euler", "Automatic", {**SD, "prediction_type": "flow"})


def test_stochastic_flags() -> None:
    stochastic = {info.name for info in list_samplers() if info.stochastic}
    assert stochastic == {"Euler a", "DPM2 a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2S a", "LCM"}
