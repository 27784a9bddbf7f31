"""diffusers schedulers that sample on A1111's noise levels and evaluation points.

diffusers builds each scheduler's noise levels itself (and rounds the Karras timesteps of some
to integers); A1111 hands k-diffusion a list of sigmas from its schedule functions and evaluates
the UNet at the fractional training time of each sigma. `KScheduleMixin` makes a diffusers
scheduler do the latter: `set_timesteps` takes the sigmas of `schedules.sampler_sigmas`, lets the
scheduler lay them out its own way (Heun, DPM2 and DPM++ SDE evaluate twice per step, at
positions they derive from the levels) through the two methods every diffusers k-style scheduler
builds its schedule with (`_convert_to_karras`, `_sigma_to_t`), then sets the evaluation times
to k-diffusion's fractional ones.

A schedule that does not end at 0 (KL Optimal ends at the model's smallest sigma) is given to the
scheduler as one more level, and the evaluation that would start the extra step is dropped: the
last step then lands on that sigma, as in k-diffusion.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.sampling.schedules import ModelSigmas, ScheduleSettings, sampler_sigmas

# Schedulers that work on variance-preserving samples (x / sqrt(1 + sigma^2)) rather than on
# k-diffusion's x = x0 + sigma * noise; their start latent is scaled accordingly.
_VP_SCHEDULERS = (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler)
# Schedulers whose evaluation at each level is every other timestep (the second-order
# evaluations sit between), and which round the level timesteps to integers.
_INTERLEAVED_ROUNDED = (KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler)
# Schedulers that evaluate once per level and take no custom levels in their own set_timesteps.
_SET_DIRECTLY = (EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler)


class KScheduleMixin:
    """Mixed into a diffusers scheduler class by `k_scheduler_class`; configured by `configure`."""

    k_model: ModelSigmas | None = None  # None until `configure`
    k_schedule: str = "Uniform"
    k_discard_penultimate: bool = False
    k_settings: ScheduleSettings = ScheduleSettings()
    k_levels: torch.Tensor | None = None
    k_sigmas: torch.Tensor | None = None  # the schedule as A1111 computes it, final level included

    def configure(self, model: ModelSigmas, schedule: str, discard_penultimate: bool,
                  settings: ScheduleSettings) -> None:
        self.k_model, self.k_schedule = model, schedule
        self.k_discard_penultimate, self.k_settings = discard_penultimate, settings

    # The two hooks diffusers' k-style schedulers build their schedules with.
    # Before `configure` (the constructors set timesteps too) they are the scheduler's own.
    def _convert_to_karras(self, in_sigmas: Any, num_inference_steps: int | None = None) -> np.ndarray:
        if self.k_levels is None:
            extra = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
            return super()._convert_to_karras(in_sigmas=in_sigmas, **extra)  # type: ignore[misc]
        return self.k_levels.double().numpy()

    def _sigma_to_t(self, sigma: Any, log_sigmas: Any) -> np.ndarray:
        if self.k_model is None:
            return super()._sigma_to_t(sigma, log_sigmas)  # type: ignore[misc]
        return self.k_model.sigma_to_t(torch.as_tensor(np.asarray(sigma), dtype=torch.float32)).numpy()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      *args: Any, **kwargs: Any) -> None:
        if self.k_model is None:
            super().set_timesteps(num_inference_steps, device, *args, **kwargs)  # type: ignore[misc]
            return
        sigmas = sampler_sigmas(self.k_schedule, num_inference_steps, self.k_model,
                                self.k_discard_penultimate, self.k_settings)
        ends_at_zero = bool(sigmas[-1] == 0)
        levels = sigmas[:-1] if ends_at_zero else sigmas
        self.k_sigmas, self.k_levels = sigmas, levels
        if not ends_at_zero and isinstance(self, DPMSolverMultistepScheduler):
            # Its last step is first order only when it goes to 0 (k-diffusion's rule too).
            self.register_to_config(final_sigmas_type="sigma_min")
        super().set_timesteps(len(levels), device)  # type: ignore[misc]

        times = self.k_model.sigma_to_t(levels)
        if isinstance(self, _SET_DIRECTLY):
            self.sigmas = torch.cat([levels, torch.zeros(1)])
            self.timesteps = times.to(device)
        elif isinstance(self, _INTERLEAVED_ROUNDED):
            timesteps = self.timesteps.clone().float()
            timesteps[0::2] = times.to(timesteps.device)
            self.timesteps = timesteps
        if not ends_at_zero:
            self.timesteps = self.timesteps[:-1]  # the step that would start at the final level
        self.num_inference_steps = num_inference_steps

    @property
    def start_sigma(self) -> float:
        assert self.k_levels is not None, "set_timesteps first"
        return float(self.k_levels[0])

    @property
    def works_on_vp_samples(self) -> bool:
        return isinstance(self, _VP_SCHEDULERS)


@cache
def k_scheduler_class(cls: type[SchedulerMixin]) -> type[SchedulerMixin]:
    """`cls` sampling on A1111's sigmas (one subclass per diffusers class, made once)."""
    return type(f"K{cls.__name__}", (KScheduleMixin, cls), {})


def start_noise_scale(scheduler: SchedulerMixin, sgm_noise_multiplier: bool = False) -> float:
    """What the start noise is multiplied by before the first step.

    k-diffusion starts at x = noise * sigma_0; A1111's "SGM noise multiplier" (as the original
    SGM code) at noise * sqrt(1 + sigma_0^2). Schedulers on variance-preserving samples take that
    divided by sqrt(1 + sigma_0^2). Other schedulers (DDIM, PLMS, UniPC, LCM) start at their own
    `init_noise_sigma`.
    """
    if not isinstance(scheduler, KScheduleMixin):
        return float(scheduler.init_noise_sigma)
    sigma = scheduler.start_sigma
    k_scale = (1.0 + sigma**2) ** 0.5 if sgm_noise_multiplier else sigma
    return k_scale / (1.0 + sigma**2) ** 0.5 if scheduler.works_on_vp_samples else k_scale
