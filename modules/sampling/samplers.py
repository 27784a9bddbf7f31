"""Sampler names A1111 users know, each built as a diffusers scheduler.

A1111 runs most samplers through k-diffusion; here each name maps onto the diffusers scheduler
that implements the same solver, configured from the checkpoint's training noise schedule:

    Euler a       EulerAncestralDiscreteScheduler (+ Karras / Exponential sigmas, see below)
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

Schedule types follow A1111 1.9+: "Automatic" is the sampler's own default (Karras for DPM++ 2M,
DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a; Exponential for DPM++ 2M SDE; the plain training schedule,
"Uniform", for the others), "Uniform" the training sigmas spaced evenly in time (k-diffusion's
`get_sigmas`), "Karras" and "Exponential" the k-diffusion sigma schedules. DDIM, PLMS and LCM
have no Karras / Exponential option in diffusers: they take Automatic or Uniform (both their own
evenly spaced timesteps), and `validate_sampler` refuses the others with a UserError instead of
silently sampling with another schedule.
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
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.errors import UserError


class EulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """EulerAncestralDiscreteScheduler that also takes Karras / Exponential sigmas.

    diffusers' ancestral Euler only spaces sigmas evenly in time, while A1111's "Euler a" takes
    every schedule type. EulerDiscreteScheduler implements those schedules for the same training
    schedule, so its sigmas and matching timesteps are used; the ancestral step only reads them.
    The flags live in the config (registered by make_scheduler) so they show in `config`.
    """

    extra_schedule_flags = ("use_karras_sigmas", "use_exponential_sigmas")

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        flags = {flag: True for flag in self.extra_schedule_flags if self.config.get(flag)}
        if flags:
            plain = {k: v for k, v in self.config.items() if k in _init_params(EulerDiscreteScheduler)}
            helper = EulerDiscreteScheduler(**{**plain, **flags})
            helper.set_timesteps(num_inference_steps, device)
            self.sigmas = helper.sigmas
            self.timesteps = helper.timesteps


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


# DPM++ SDE's Brownian tree is queried at sigma_min, which float32 rounding puts a hair below the
# tree's start; torchsde warns on every such step although the result is the same.
warnings.filterwarnings("ignore", message="Should have ta>=t0", module="torchsde")

SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Uniform", "Karras", "Exponential")

# The constructor flag that turns each non-uniform schedule on; a scheduler supports a schedule
# type exactly when its constructor takes the flag (checked against the installed diffusers) or
# a subclass here adds it (`extra_schedule_flags`).
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


@dataclass(frozen=True)
class _Recipe:
    cls: type[SchedulerMixin]
    options: tuple[tuple[str, Any], ...]
    aliases: tuple[str, ...]
    stochastic: bool
    automatic: str = "Uniform"


_RECIPES: dict[str, _Recipe] = {
    "Euler a": _Recipe(EulerAncestralScheduler, (*_K_STYLE.items(),),
                       ("k_euler_a", "k_euler_ancestral", "euler_a", "euler_ancestral"), True),
    "Euler": _Recipe(EulerDiscreteScheduler, (*_K_STYLE.items(),), ("k_euler",), False),
    "LMS": _Recipe(LMSDiscreteScheduler, (*_K_STYLE.items(),), ("k_lms",), False),
    "Heun": _Recipe(HeunDiscreteScheduler, (*_K_STYLE.items(),), ("k_heun",), False),
    "DPM2": _Recipe(KDPM2DiscreteScheduler, (*_K_STYLE.items(),), ("k_dpm_2", "dpm_2"), False, "Karras"),
    "DPM2 a": _Recipe(KDPM2AncestralDiscreteScheduler, (*_K_STYLE.items(),),
                      ("k_dpm_2_a", "dpm_2_a", "dpm2_a"), True, "Karras"),
    "DPM++ 2M": _Recipe(
        DPMSolverMultistepScheduler,
        (*_K_STYLE.items(), ("algorithm_type", "dpmsolver++"), ("solver_order", 2)),
        ("k_dpmpp_2m", "dpmpp_2m"), False, "Karras"),
    "DPM++ SDE": _Recipe(DPMSolverSDEScheduler, (*_K_STYLE.items(),), ("k_dpmpp_sde", "dpmpp_sde"), True, "Karras"),
    "DPM++ 2M SDE": _Recipe(
        DPMSolverMultistepScheduler,
        (*_K_STYLE.items(), ("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2),
         ("solver_type", "midpoint")),
        ("k_dpmpp_2m_sde", "dpmpp_2m_sde"), True, "Exponential"),
    # DPMSolverSinglestepScheduler has no timestep_spacing option: its own spacing is "trailing".
    "DPM++ 2S a": _Recipe(
        DPMSolverSinglestepScheduler,
        (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2), ("lower_order_final", True)),
        ("k_dpmpp_2s_a", "dpmpp_2s_a", "dpmpp_2s_ancestral"), True, "Karras"),
    "DDIM": _Recipe(DDIMScheduler, (*_COMPVIS_STYLE.items(), ("clip_sample", False)), ("ddim",), False),
    "PLMS": _Recipe(PNDMScheduler, (*_COMPVIS_STYLE.items(), ("skip_prk_steps", True)), ("plms", "pndm"), False),
    "UniPC": _Recipe(UniPCMultistepScheduler, (*_K_STYLE.items(),), ("unipc", "uni_pc"), False),
    # Values of the published LCM / LCM-LoRA scheduler configs.
    "LCM": _Recipe(
        LCMAnyStepsScheduler,
        (("timestep_spacing", "leading"), ("steps_offset", 1), ("set_alpha_to_one", True),
         ("clip_sample", False), ("original_inference_steps", 50), ("timestep_scaling", 10.0)),
        ("k_lcm", "lcm"), True),
}

SAMPLER_NAMES: tuple[str, ...] = tuple(_RECIPES)


@cache
def _init_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters)


@cache
def _step_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.step).parameters)


def _flags(cls: type) -> frozenset[str]:
    # Constructor arguments, plus schedule flags a subclass here implements on top.
    return _init_params(cls) | frozenset(getattr(cls, "extra_schedule_flags", ()))


def _schedule_types(recipe: _Recipe) -> tuple[str, ...]:
    params = _flags(recipe.cls)
    supported = [s for s in SCHEDULE_TYPES if s not in _SCHEDULE_FLAGS or _SCHEDULE_FLAGS[s] in params]
    return tuple(supported)


def _info(name: str) -> SamplerInfo:
    recipe = _RECIPES[name]
    return SamplerInfo(name, recipe.aliases, _schedule_types(recipe), recipe.stochastic, recipe.automatic)


def list_samplers() -> list[SamplerInfo]:
    """Every sampler, in A1111's menu order of the ones it shares."""
    return [_info(name) for name in SAMPLER_NAMES]


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
_SCHEDULE_LOOKUP = {s.lower(): s for s in SCHEDULE_TYPES}


def _unknown_sampler(name: str) -> UserError:
    return UserError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(SAMPLER_NAMES)}.")


def validate_sampler(name: str, schedule_type: str = "Automatic") -> tuple[str, str]:
    """Canonical (sampler, schedule type) for user input, or a UserError naming what is allowed.

    Matching ignores case, "_" vs " " and accepts the k-diffusion aliases ("k_euler_a"). A1111's
    pre-1.9 names with the schedule in them ("DPM++ 2M Karras") are split into the two parts.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"No sampler given. Valid samplers: {', '.join(SAMPLER_NAMES)}.")
    schedule_in = (schedule_type or "Automatic").strip()
    schedule = _SCHEDULE_LOOKUP.get(schedule_in.lower())
    if schedule is None:
        raise UserError(f"Unknown schedule type {schedule_type!r}. Valid schedule types: {', '.join(SCHEDULE_TYPES)}.")

    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        # Old style "<sampler> Karras" / "<sampler> Exponential".
        base, _, suffix = name.strip().rpartition(" ")
        suffix_schedule = _SCHEDULE_LOOKUP.get(suffix.lower())
        canonical = _LOOKUP.get(_key(base)) if base and suffix_schedule not in (None, "Automatic") else None
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


def make_scheduler(
    name: str,
    schedule_type: str,
    training_schedule: Mapping[str, Any],
    *,
    noise_seeds: Sequence[int] | None = None,
) -> SchedulerMixin:
    """A new scheduler for one run (schedulers keep per-run state, so never share one).

    `training_schedule` holds the checkpoint's num_train_timesteps, beta_start, beta_end,
    beta_schedule and prediction_type (missing keys get SD's values; other keys are ignored).
    `noise_seeds`: one seed per image of the batch for DPM++ SDE, whose Brownian-tree noise is
    seeded at construction (as A1111 seeds it with the image seeds) instead of by a generator
    passed to `step`; without it that sampler's noise is random.
    """
    canonical, schedule = validate_sampler(name, schedule_type)
    recipe = _RECIPES[canonical]
    if schedule == "Automatic":
        schedule = recipe.automatic
    params = _init_params(recipe.cls)

    config = _training_config(training_schedule)
    config.update(recipe.options)
    if schedule in _SCHEDULE_FLAGS:
        config[_SCHEDULE_FLAGS[schedule]] = True
    if recipe.cls is DPMSolverSDEScheduler and noise_seeds is not None:
        seeds = [int(s) for s in noise_seeds]
        # A single int makes an unbatched tree; a list must match the batch size.
        config["noise_sampler_seed"] = seeds[0] if len(seeds) == 1 else seeds
    scheduler = recipe.cls(**{k: v for k, v in config.items() if k in params})
    extra = {k: v for k, v in config.items() if k not in params and k in _flags(recipe.cls)}
    if extra:
        scheduler.register_to_config(**extra)
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
        kwargs["generator"] = generator
    return scheduler.step(model_output, timestep, sample, **kwargs)[0]
