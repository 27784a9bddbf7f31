"""Noise schedules ("Schedule type") as A1111 1.9+ computes them, and the k-diffusion time map.

A1111 runs its samplers through k-diffusion: the model's 1000 training noise levels
(sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), held in float32) are the table every schedule is
built from, and the UNet is evaluated at the *fractional* training time t whose log-sigma lies
between two table entries (linear interpolation in log sigma). The functions here reproduce those
rules, so a seed, sampler and schedule type from an A1111 infotext select the same noise levels
and the same model evaluation points here.

Each schedule returns `steps + 1` sigmas ending with 0, except "KL Optimal", which ends at the
model's smallest sigma (A1111 keeps that last level), and "DDIM", whose length follows the
training-step stride. All are computed on the CPU in float32, as A1111 does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from modules.sampling.schedule_types import find_schedule

# Align Your Steps' published 10-step noise levels (NVIDIA), as A1111 ships them.
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


@dataclass(frozen=True)
class ModelSigmas:
    """The training noise levels of a model, ascending (index = training timestep)."""

    sigmas: torch.Tensor  # float32, [num_train_timesteps]
    is_sdxl: bool = False

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional training time of each sigma: linear in log sigma between table neighbours."""
        log_sigmas = self.log_sigmas
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        # Index of the last table entry at or below each value, kept inside [0, len - 2] so that
        # values outside the table extrapolate from the end intervals (then clamped to the ends).
        below = torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True).reshape(log_sigma.shape)
        low = (below - 1).clamp(0, len(log_sigmas) - 2)
        low_value, high_value = log_sigmas[low], log_sigmas[low + 1]
        w = ((low_value - log_sigma) / (low_value - high_value)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at fractional training time t: log-linear between the two nearest entries."""
        t = torch.as_tensor(t, dtype=torch.float32)
        w = t.frac()
        log_sigmas = self.log_sigmas
        return ((1 - w) * log_sigmas[t.floor().long()] + w * log_sigmas[t.ceil().long()]).exp()


def training_sigmas(training_schedule: Mapping[str, Any], is_sdxl: bool = False) -> ModelSigmas:
    """The model's noise levels from its training schedule (betas in float64, then float32 as the
    original LDM / SGM code registers `alphas_cumprod`)."""
    n = int(training_schedule.get("num_train_timesteps", 1000))
    start = float(training_schedule.get("beta_start", 0.00085))
    end = float(training_schedule.get("beta_end", 0.012))
    kind = training_schedule.get("beta_schedule", "scaled_linear")
    if training_schedule.get("trained_betas") is not None:
        betas = np.asarray(training_schedule["trained_betas"], dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif kind == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        raise ValueError(f"unsupported beta schedule {kind!r}")
    alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
    return ModelSigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, is_sdxl)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float32), torch.zeros(1)])


@dataclass(frozen=True)
class ScheduleSettings:
    """A1111's schedule settings: rho 0 means the schedule's own (Karras 7, Polyexponential 1)."""

    rho: float = 0.0
    beta_alpha: float = 0.6  # beta_dist_alpha
    beta_beta: float = 0.6  # beta_dist_beta


# ------------------------------------------------------------------------------------ schedules
# Each takes (steps, model sigmas, settings) and returns float32 sigmas, highest first.

def _uniform(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    return _append_zero(m.t_to_sigma(torch.linspace(len(m.sigmas) - 1, 0, n)))


def _karras(n: int, m: ModelSigmas, s: ScheduleSettings) -> torch.Tensor:
    rho = s.rho or 7.0
    ramp = torch.linspace(0, 1, n)
    high, low = m.sigma_max ** (1 / rho), m.sigma_min ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho)


def _exponential(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(m.sigma_max), math.log(m.sigma_min), n).exp())


def _polyexponential(n: int, m: ModelSigmas, s: ScheduleSettings) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** (s.rho or 1.0)
    log_min, log_max = math.log(m.sigma_min), math.log(m.sigma_max)
    return _append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def _evenly_in_time(n: int, m: ModelSigmas, points: int) -> torch.Tensor:
    start, end = m.sigma_to_t(torch.tensor(m.sigma_max)), m.sigma_to_t(torch.tensor(m.sigma_min))
    return torch.linspace(start.item(), end.item(), points)


def _sgm_uniform(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    # n + 1 points from the top to the bottom of the table, the last dropped for the final 0.
    return _append_zero(m.t_to_sigma(_evenly_in_time(n, m, n + 1)[:-1]))


def _normal(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    return _append_zero(m.t_to_sigma(_evenly_in_time(n, m, n)))


def _kl_optimal(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    # Evenly spaced in arctan(sigma), from sigma_max down to sigma_min itself (no final 0).
    low, high = torch.arctan(torch.tensor(m.sigma_min)), torch.arctan(torch.tensor(m.sigma_max))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * low + (1.0 - frac) * high)


def _align_your_steps(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    table = AYS_SDXL if m.is_sdxl else AYS_SD15
    if n == len(table):
        return _append_zero(torch.tensor(table, dtype=torch.float32))
    # Other step counts: log-linear interpolation of the table over [0, 1] (in float64).
    log_ascending = np.log(np.asarray(table[::-1], dtype=np.float64))
    values = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), log_ascending))[::-1]
    return _append_zero(torch.tensor(values.copy(), dtype=torch.float32))


def _simple(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    stride = len(m.sigmas) / n  # fractional stride from the top, each index truncated
    return _append_zero(torch.stack([m.sigmas[-(1 + int(i * stride))] for i in range(n)]))


def _ddim(n: int, m: ModelSigmas, _: ScheduleSettings) -> torch.Tensor:
    stride = max(len(m.sigmas) // n, 1)
    indices = list(range(1, len(m.sigmas), stride))  # timesteps 1, 1 + stride, ... as CompVis' DDIM
    return _append_zero(m.sigmas[indices].flip(0))


def _beta(n: int, m: ModelSigmas, s: ScheduleSettings) -> torch.Tensor:
    # Noise levels at the quantiles of a Beta(alpha, beta) distribution over [sigma_min, sigma_max].
    quantiles = [stats.beta.ppf(x, s.beta_alpha, s.beta_beta) for x in 1 - np.linspace(0, 1, n)]
    values = [m.sigma_min + q * (m.sigma_max - m.sigma_min) for q in quantiles]
    return _append_zero(torch.tensor(values, dtype=torch.float32))


# Sigma function per schedule type (A1111's internal names); "automatic" is resolved by the caller.
_FUNCTIONS: dict[str, Callable[[int, ModelSigmas, ScheduleSettings], torch.Tensor]] = {
    "uniform": _uniform, "karras": _karras, "exponential": _exponential, "polyexponential": _polyexponential,
    "sgm_uniform": _sgm_uniform, "kl_optimal": _kl_optimal, "align_your_steps": _align_your_steps,
    "simple": _simple, "normal": _normal, "ddim": _ddim, "beta": _beta,
}


def schedule_sigmas(label: str, steps: int, model: ModelSigmas,
                    settings: ScheduleSettings | None = None) -> torch.Tensor:
    """The sigmas of schedule `label` for `steps` steps ("Automatic" is resolved by the caller)."""
    schedule = find_schedule(label)
    if schedule is None or schedule.name not in _FUNCTIONS:
        raise ValueError(f"no sigma function for schedule {label!r}")
    return _FUNCTIONS[schedule.name](steps, model, settings or ScheduleSettings())


def sampler_sigmas(label: str, steps: int, model: ModelSigmas, discard_penultimate: bool = False,
                   settings: ScheduleSettings | None = None) -> torch.Tensor:
    """A1111's `get_sigmas`: with `discard_penultimate` (DPM2, DPM2 a, or the setting
    `always_discard_next_to_last_sigma`) one more level is computed and the next-to-last dropped,
    so the sampler still takes `steps` steps but never stops at the tiny penultimate sigma."""
    if not discard_penultimate:
        return schedule_sigmas(label, steps, model, settings)
    sigmas = schedule_sigmas(label, steps + 1, model, settings)
    return torch.cat([sigmas[:-2], sigmas[-1:]])
