"""The eta of A1111's "Sampler parameters": how much fresh noise a stochastic step adds.

`eta_ancestral` (default 1) scales Euler a's ancestral noise as k-diffusion's `get_ancestral_step`
does: sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)), and the
deterministic part goes down to sigma_down = sqrt(sigma_next^2 - sigma_up^2); eta 0 makes it plain Euler.
diffusers' Euler a has eta 1 built in, so at 1 its own step runs unchanged.

`eta_ddim` (default 0, deterministic) is DDIM's eta (diffusers' `DDIMScheduler.step` takes it).

Both also take their step noise from the "NV" source's streams (`philox.PhiloxNormal`), which
diffusers' steps cannot draw from.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from modules.sampling.philox import PhiloxNormal


def step_noise(like: torch.Tensor, generator: Any) -> torch.Tensor:
    """Noise shaped like `like` from per-image generators (torch's or NV streams), as diffusers draws it."""
    if isinstance(generator, list) and generator and isinstance(generator[0], PhiloxNormal):
        return torch.stack([g.randn(like.shape[1:]) for g in generator]).to(like.device, like.dtype)
    return randn_tensor(like.shape, dtype=like.dtype, device=like.device, generator=generator)


class EtaEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    eta: float = 1.0

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True) -> Any:
        streams = isinstance(generator, list) and bool(generator) and isinstance(generator[0], PhiloxNormal)
        if self.eta == 1.0 and not streams:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        x = sample.to(torch.float32)
        if self.config.prediction_type == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        else:
            denoised = x - sigma * model_output
        sigma_up = torch.minimum(sigma_next, self.eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        # Drawn at every step, as diffusers' step does, so the generators stay in step with eta 1.
        x = (x + step_noise(model_output, generator) * sigma_up).to(model_output.dtype)
        self._step_index += 1
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=x, pred_original_sample=denoised) if return_dict \
            else (x, denoised)


class EtaDDIMScheduler(DDIMScheduler):
    eta: float = 0.0

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float | None = None,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> Any:
        eta = self.eta if eta is None else eta
        if eta > 0 and variance_noise is None and generator is not None:
            variance_noise, generator = step_noise(model_output, generator), None
        return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                            variance_noise, return_dict)
