"""Sampler names A1111 users know, each built as a diffusers scheduler.

A1111 runs most samplers through k-diffusion; here each name maps onto the diffusers scheduler
that implements the same solver, configured from the checkpoint's training noise schedule:

    Euler a       EulerAncestralDiscreteScheduler
    Euler         EulerDiscreteScheduler
    LMS           LMSDiscreteScheduler
    Heun          HeunDiscreteScheduler
    DPM2          KDPM2DiscreteScheduler
    DPM2 a        KDPM2AncestralDiscreteScheduler
    DPM++ 2M      DPMSolverMultistepScheduler (dpmsolver++, order 2)
    DPM++ SDE     DPMSolverSDEScheduler (needs torchsde)
    DPM++ 2M SDE  DPMSolverMultistepScheduler (sde-dpmsolver++, midpoint)
    DPM++ 2S a    DPMSolverSinglestepScheduler (sde-dpmsolver++, order 2): the closest diffusers
                  has; k-diffusion's 2S ancestral makes two model calls per step, this one alternates
                  first- and second-order single steps and adds SDE noise, so it is stochastic
                  like the original but not step-for-step identical.
    DDIM          DDIMScheduler (eta 0)
    PLMS          PNDMScheduler (skip_prk_steps)
    UniPC         UniPCMultistepScheduler
    LCM           LCMScheduler (allowing more than 50 steps)

Schedule types follow A1111 1.9+ (`schedules.py`): the samplers A1111 runs through k-diffusion
(Euler a to DPM++ 2S a here) take all twelve, with A1111's sigmas and its fractional evaluation
times (`k_schedulers.py`); "Automatic" is the sampler's own default (Karras for DPM++ 2M,
DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a; Exponential for DPM++ 2M SDE; Uniform, the training sigmas
evenly spaced in time, for the others). DPM2 and DPM2 a compute one sigma more and drop the
next-to-last, as A1111's `discard_next_to_last_sigma`. DDIM, PLMS and LCM keep their own timestep
grids (Automatic or Uniform), UniPC diffusers' Uniform, Karras or Exponential; `validate_sampler`
refuses the other types for them with a UserError instead of sampling with another schedule.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.errors import UserError
from modules.sampling.churn import ChurnEulerScheduler
from modules.sampling.eta import EtaDDIMScheduler, EtaEulerAncestralScheduler
from modules.sampling.k_schedulers import k_scheduler_class
from modules.sampling.philox import PhiloxNormal
from modules.sampling.schedule_types import SCHEDULE_LABELS, SCHEDULES, find_schedule
from modules.sampling.schedules import ScheduleSettings, training_sigmas


class LCMAnyStepsScheduler(LCMScheduler):
    """LCMScheduler that also runs more steps than the 50 it was distilled with.

    diffusers refuses num_inference_steps > original_inference_steps; A1111's LCM sampler takes any
    step count, so only then the skipping-step grid is widened to all training timesteps (up to
    50 steps the timesteps are exactly diffusers').
    """

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        original = original_inference_steps or self.config.original_inference_steps
        if num_inference_steps is not None and timesteps is None and num_inference_steps > original:
            # k = 1: every training timestep is a candidate, so the schedule still starts at 999.
            original = self.config.num_train_timesteps
        super().set_timesteps(num_inference_steps, device, original, timesteps, strength)


# DPM++ SDE's Brownian tree is queried at its end points, which float32 rounding puts a hair
# outside the tree; torchsde warns on every such step although the result is the same.
warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", module="torchsde")

SCHEDULE_TYPES: tuple[str, ...] = SCHEDULE_LABELS

# Samplers outside k-diffusion use diffusers' own schedules: the constructor flag for each.
_SCHEDULE_FLAGS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas"}

# SD 1.x / 2.x / SDXL all train with this schedule; used for keys the caller leaves out.
DEFAULT_TRAINING_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
# Only these describe the model; anything else in a scheduler_config.json (spacing, offsets,
# clipping) is a sampling choice and is set per sampler below.
_TRAINING_KEYS = frozenset(DEFAULT_TRAINING_SCHEDULE) | {"trained_betas", "rescale_betas_zero_snr"}
_PREDICTION_TYPES = ("epsilon", "v_prediction")

# k-diffusion samplers take sigmas from t=999 down to t=0 evenly spaced in time, which is
# diffusers' "linspace" spacing; it also gives Karras/Exponential the full sigma range.
_K_STYLE = {"timestep_spacing": "linspace", "steps_offset": 0}
# A1111's DDIM/PLMS use CompVis' uniform discretisation: range(0, 1000, 1000 // steps) + 1,
# i.e. "leading" with steps_offset 1, and the final alpha of the first training step.
_COMPVIS_STYLE = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    aliases: tuple[str, ...]
    schedule_types: tuple[str, ...]
    stochastic: bool  # draws fresh noise every step (ancestral / SDE): needs per-image generators
    automatic_schedule: str  # what "Automatic" means for this sampler ("Uniform", "Karras", ...)
    k_diffusion: bool = True  # on A1111's sigmas (k_schedulers.py), img2img steps as A1111 counts them


@dataclass(frozen=True)
class _Recipe:
    cls: type[SchedulerMixin]
    options: tuple[tuple[str, Any], ...]
    aliases: tuple[str, ...]
    stochastic: bool
    automatic: str = "Uniform"
    k_diffusion: bool = True  # sigmas and evaluation times as A1111's k-diffusion samplers
    discard_penultimate: bool = False  # A1111's discard_next_to_last_sigma
    uses_ensd: bool = False  # A1111 writes ENSD into the infotext for it (its step noise follows it)


# k-diffusion's multistep solvers have no extra lower-order steps at the end (diffusers' default
# for fewer than 15 steps); their last step is first order only when it goes to sigma 0.
_K_MULTISTEP = (("lower_order_final", False), ("euler_at_final", False), ("final_sigmas_type", "zero"))

_RECIPES: dict[str, _Recipe] = {
    "Euler a": _Recipe(EtaEulerAncestralScheduler, (*_K_STYLE.items(),),
                       ("k_euler_a", "k_euler_ancestral", "euler_a", "euler_ancestral"), True, uses_ensd=True),
    "Euler": _Recipe(ChurnEulerScheduler, (*_K_STYLE.items(),), ("k_euler",), False),
    "LMS": _Recipe(LMSDiscreteScheduler, (*_K_STYLE.items(),), ("k_lms",), False),
    "Heun": _Recipe(HeunDiscreteScheduler, (*_K_STYLE.items(),), ("k_heun",), False),
    "DPM2": _Recipe(KDPM2DiscreteScheduler, (*_K_STYLE.items(),), ("k_dpm_2", "dpm_2"), False, "Karras",
                    discard_penultimate=True),
    "DPM2 a": _Recipe(KDPM2AncestralDiscreteScheduler, (*_K_STYLE.items(),),
                      ("k_dpm_2_a", "dpm_2_a", "dpm2_a"), True, "Karras", discard_penultimate=True, uses_ensd=True),
    "DPM++ 2M": _Recipe(
        DPMSolverMultistepScheduler,
        (*_K_STYLE.items(), ("algorithm_type", "dpmsolver++"), ("solver_order", 2), *_K_MULTISTEP),
        ("k_dpmpp_2m", "dpmpp_2m"), False, "Karras"),
    "DPM++ SDE": _Recipe(DPMSolverSDEScheduler, (*_K_STYLE.items(),), ("k_dpmpp_sde", "dpmpp_sde"), True, "Karras"),
    "DPM++ 2M SDE": _Recipe(
        DPMSolverMultistepScheduler,
        (*_K_STYLE.items(), ("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2),
         ("solver_type", "midpoint"), *_K_MULTISTEP),
        ("k_dpmpp_2m_sde", "dpmpp_2m_sde"), True, "Exponential"),
    # DPMSolverSinglestepScheduler has no timestep_spacing option: its own spacing is "trailing".
    "DPM++ 2S a": _Recipe(
        DPMSolverSinglestepScheduler,
        (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2), ("lower_order_final", True)),
        ("k_dpmpp_2s_a", "dpmpp_2s_a", "dpmpp_2s_ancestral"), True, "Karras", uses_ensd=True),
    "DDIM": _Recipe(EtaDDIMScheduler, (*_COMPVIS_STYLE.items(), ("clip_sample", False)), ("ddim",), False,
                    k_diffusion=False),
    "PLMS": _Recipe(PNDMScheduler, (*_COMPVIS_STYLE.items(), ("skip_prk_steps", True)), ("plms", "pndm"), False,
                    k_diffusion=False),
    "UniPC": _Recipe(UniPCMultistepScheduler, (*_K_STYLE.items(),), ("unipc", "uni_pc"), False, k_diffusion=False),
    # Values of the published LCM / LCM-LoRA scheduler configs.
    "LCM": _Recipe(
        LCMAnyStepsScheduler,
        (("timestep_spacing", "leading"), ("steps_offset", 1), ("set_alpha_to_one", True),
         ("clip_sample", False), ("original_inference_steps", 50), ("timestep_scaling", 10.0)),
        ("k_lcm", "lcm"), True, k_diffusion=False),
}

SAMPLER_NAMES: tuple[str, ...] = tuple(_RECIPES)


@cache
def _init_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters)


@cache
def _step_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.step).parameters)


def _schedule_types(recipe: _Recipe) -> tuple[str, ...]:
    if recipe.k_diffusion:
        return SCHEDULE_TYPES
    params = _init_params(recipe.cls)
    return ("Automatic", "Uniform", *(s for s, flag in _SCHEDULE_FLAGS.items() if flag in params))


def _info(name: str) -> SamplerInfo:
    recipe = _RECIPES[name]
    return SamplerInfo(name, recipe.aliases, _schedule_types(recipe), recipe.stochastic, recipe.automatic,
                       recipe.k_diffusion)


def list_samplers() -> list[SamplerInfo]:
    """Every sampler, in A1111's menu order of the ones it shares."""
    return [_info(name) for name in SAMPLER_NAMES]


def draws_step_noise(name: str, settings: SamplerSettings) -> bool:
    """Whether `name` adds fresh noise at its steps under `settings` (then it needs per-image generators)."""
    canonical, _ = validate_sampler(name)
    return (_RECIPES[canonical].stochastic or (canonical == "DDIM" and settings.eta_ddim > 0)
            or (canonical == "Euler" and settings.s_churn > 0))


def sampler_info(name: str) -> SamplerInfo:
    """The `SamplerInfo` of a sampler name or alias (UserError if unknown)."""
    canonical, _ = validate_sampler(name)
    return _info(canonical)


def _key(text: str) -> str:
    # "DPM++ 2M", "dpm++_2m", "DPMPP 2M" and "k_dpmpp_2m" all compare equal.
    text = text.strip().lower().replace("++", "pp")
    return re.sub(r"[\s_\-]+", "_", text)


_LOOKUP: dict[str, str] = {}
for _name, _recipe in _RECIPES.items():
    for _alias in (_name, *_recipe.aliases):
        _LOOKUP[_key(_alias)] = _name


def _unknown_sampler(name: str) -> UserError:
    return UserError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(SAMPLER_NAMES)}.")


def _split_old_name(name: str) -> tuple[str | None, str]:
    for schedule in SCHEDULES[1:]:
        for option in (schedule.label, schedule.name, *schedule.aliases):
            if name.lower().endswith(" " + option.lower()):
                canonical = _LOOKUP.get(_key(name[:-len(option) - 1]))
                if canonical is not None:
                    return canonical, schedule.label
    return None, ""


def validate_sampler(name: str, schedule_type: str = "Automatic") -> tuple[str, str]:
    """Canonical (sampler, schedule type) for user input, or a UserError naming what is allowed.

    Matching ignores case, "_" vs " " and accepts the k-diffusion aliases ("k_euler_a"). A1111's
    pre-1.9 names with the schedule in them ("DPM++ 2M Karras") are split into the two parts.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"No sampler given. Valid samplers: {', '.join(SAMPLER_NAMES)}.")
    found = find_schedule(schedule_type or "Automatic")
    if found is None:
        raise UserError(f"Unknown schedule type {schedule_type!r}. Valid schedule types: {', '.join(SCHEDULE_TYPES)}.")
    schedule = found.label

    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        # Old style "<sampler> Karras", "<sampler> SGM Uniform", as A1111 splits them.
        canonical, suffix_schedule = _split_old_name(name.strip())
        if canonical is None:
            raise _unknown_sampler(name)
        if schedule not in ("Automatic", suffix_schedule):
            raise UserError(
                f"Sampler {name!r} names the {suffix_schedule} schedule but schedule type {schedule!r} was "
                f"also given; use sampler {canonical!r} with one schedule type.")
        schedule = suffix_schedule

    info = _info(canonical)
    if schedule not in info.schedule_types:
        raise UserError(
            f"Sampler {canonical!r} cannot use the {schedule} schedule (its diffusers scheduler "
            f"{_RECIPES[canonical].cls.__name__} does not support it). "
            f"Schedule types for {canonical}: {', '.join(info.schedule_types)}.")
    return canonical, schedule


def _training_config(training_schedule: Mapping[str, Any]) -> dict[str, Any]:
    config = dict(DEFAULT_TRAINING_SCHEDULE)
    config.update({k: v for k, v in training_schedule.items() if k in _TRAINING_KEYS and v is not None})
    if config["prediction_type"] not in _PREDICTION_TYPES:
        raise UserError(
            f"Unsupported prediction type {config['prediction_type']!r} in the model's training schedule; "
            f"supported: {', '.join(_PREDICTION_TYPES)}.")
    return config


@dataclass(frozen=True)
class SamplerSettings:
    """A1111's settings that change what a sampler does (its "Sampler parameters" page)."""

    eta_noise_seed_delta: int = 0  # ENSD: step noise from generators seeded with seed + this
    sgm_noise_multiplier: bool = False  # start at noise * sqrt(1 + sigma_0^2), as the SGM code
    always_discard_next_to_last_sigma: bool = False
    img2img_fix_steps: bool = False  # img2img runs all its steps, as the hires. fix pass does
    initial_noise_multiplier: float = 1.0  # img2img: the noise added to the picture is scaled by this
    eta_ancestral: float = 1.0  # Euler a's ancestral noise (0: none, plain Euler)
    eta_ddim: float = 0.0  # DDIM's eta (above 0 it draws step noise)
    randn_source: str = "GPU"  # A1111's random number source: GPU, CPU or NV (sampling/noise.py)
    img2img_upscaler: str = ""  # enlarges small img2img pictures (A1111's upscaler_for_img2img); "": Lanczos
    # Euler's sigma churn (k-diffusion's s_churn, s_tmin, s_tmax with 0 = none, s_noise): off at s_churn 0.
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    # Token merging ratios of the first and the hires. fix pass (processing/token_merging.py; 0 = off).
    token_merging: float = 0.0
    token_merging_hr: float = 0.0
    schedule: ScheduleSettings = ScheduleSettings()

    def infotext_fields(self, sampler: str, schedule_type: str = "Automatic") -> dict[str, object]:
        """The fields A1111 writes for these settings with `sampler` (only those in effect)."""
        canonical, schedule = validate_sampler(sampler, schedule_type)
        recipe = _RECIPES[canonical]
        fields: dict[str, object] = {}
        if self.randn_source != "GPU":
            fields["RNG"] = self.randn_source
        if self.eta_noise_seed_delta and recipe.uses_ensd:
            fields["ENSD"] = self.eta_noise_seed_delta
        # A1111 writes the eta a sampler uses when it is not that sampler's default.
        if recipe.cls is EtaEulerAncestralScheduler and self.eta_ancestral != 1.0:
            fields["Eta"] = self.eta_ancestral
        if recipe.cls is EtaDDIMScheduler and self.eta_ddim != 0.0:
            fields["Eta DDIM"] = self.eta_ddim
        if recipe.cls is ChurnEulerScheduler:
            for label, value, default in (("Sigma churn", self.s_churn, 0.0), ("Sigma tmin", self.s_tmin, 0.0),
                                          ("Sigma tmax", self.s_tmax, 0.0), ("Sigma noise", self.s_noise, 1.0)):
                if value != default:
                    fields[label] = value
        if not recipe.k_diffusion:
            return fields
        if self.sgm_noise_multiplier:
            fields["SGM noise multiplier"] = True
        if self.always_discard_next_to_last_sigma and not recipe.discard_penultimate:
            fields["Discard penultimate sigma"] = True
        found = find_schedule(recipe.automatic if schedule == "Automatic" else schedule)
        if found is not None and found.default_rho != -1 and self.schedule.rho:
            fields["Schedule rho"] = self.schedule.rho
        if found is not None and found.label == "Beta":
            fields["Beta schedule alpha"] = self.schedule.beta_alpha
            fields["Beta schedule beta"] = self.schedule.beta_beta
        return fields


def make_scheduler(
    name: str,
    schedule_type: str,
    training_schedule: Mapping[str, Any],
    *,
    noise_seeds: Sequence[int] | None = None,
    is_sdxl: bool = False,
    settings: SamplerSettings | None = None,
) -> SchedulerMixin:
    """A new scheduler for one run (schedulers keep per-run state, so never share one).

    `training_schedule` holds the checkpoint's num_train_timesteps, beta_start, beta_end,
    beta_schedule and prediction_type (missing keys get SD's values; other keys are ignored).
    `noise_seeds`: one seed per image of the batch for DPM++ SDE, whose Brownian-tree noise is
    seeded at construction (as A1111 seeds it with the image seeds) instead of by a generator
    passed to `step`; without it that sampler's noise is random. `is_sdxl` picks the SDXL table of
    Align Your Steps. After `set_timesteps(steps)`, k-diffusion samplers run on A1111's sigmas.
    """
    settings = settings or SamplerSettings()
    canonical, schedule = validate_sampler(name, schedule_type)
    recipe = _RECIPES[canonical]
    if schedule == "Automatic":
        schedule = recipe.automatic
    config = _training_config(training_schedule)
    config.update(recipe.options)
    if recipe.cls is DPMSolverSDEScheduler and noise_seeds is not None:
        seeds = [int(s) for s in noise_seeds]
        # A single int makes an unbatched tree; a list must match the batch size.
        config["noise_sampler_seed"] = seeds[0] if len(seeds) == 1 else seeds
    if not recipe.k_diffusion:
        if schedule in _SCHEDULE_FLAGS:
            config[_SCHEDULE_FLAGS[schedule]] = True
        made = recipe.cls(**{k: v for k, v in config.items() if k in _init_params(recipe.cls)})
        if isinstance(made, EtaDDIMScheduler):
            made.eta = settings.eta_ddim
        return made

    cls = k_scheduler_class(recipe.cls)
    # The Karras path of each diffusers scheduler is the one that takes levels from outside
    # (`KScheduleMixin._convert_to_karras` hands it the schedule's sigmas).
    config["use_karras_sigmas"] = True
    scheduler = cls(**{k: v for k, v in config.items() if k in _init_params(recipe.cls)})
    if isinstance(scheduler, EtaEulerAncestralScheduler):
        scheduler.eta = settings.eta_ancestral
    if isinstance(scheduler, ChurnEulerScheduler):
        scheduler.s_churn, scheduler.s_tmin = settings.s_churn, settings.s_tmin
        scheduler.s_tmax, scheduler.s_noise = settings.s_tmax, settings.s_noise
    scheduler.configure(training_sigmas(config, is_sdxl), schedule,
                        recipe.discard_penultimate or settings.always_discard_next_to_last_sigma,
                        settings.schedule)
    return scheduler


def scheduler_step(
    scheduler: SchedulerMixin,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """One `scheduler.step`, returning the new sample.

    The schedulers disagree on whether `step` takes a generator (LMS, Heun, DPM2, PLMS, UniPC and
    DPM++ SDE do not), so it is passed only where accepted.
    """
    kwargs: dict[str, Any] = {"return_dict": False}
    if "generator" in _step_params(type(scheduler)):
        if isinstance(generator, list) and generator and isinstance(generator[0], PhiloxNormal) \
                and not isinstance(scheduler, EtaEulerAncestralScheduler | EtaDDIMScheduler):
            # diffusers' other steps draw from torch generators only: the "NV" streams' CPU twins.
            generator = [g.fallback for g in generator]
        kwargs["generator"] = generator
    return scheduler.step(model_output, timestep, sample, **kwargs)[0]
