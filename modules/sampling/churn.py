"""Euler with A1111's "sigma churn" settings (s_churn, s_tmin, s_tmax, s_noise), as k-diffusion's sample_euler.

Before the model sees a step at level sigma within [s_tmin, s_tmax], noise is added that raises the
level to sigma_hat = sigma * (1 + gamma), gamma = min(s_churn / steps, sqrt(2) - 1), the noise scaled by
s_noise; the model is then evaluated at sigma_hat and the Euler step goes from sigma_hat to the next
level. diffusers' Euler adds its churn after the model call, which is not the same picture, so the
step loop calls `churn` first (`processing/run.py`), and `scale_model_input` and `step` use sigma_hat.
With s_churn 0 (the default) nothing changes and diffusers' own step runs.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import EulerDiscreteScheduler

from modules.sampling.eta import step_noise


class ChurnEulerScheduler(EulerDiscreteScheduler):
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 = no upper bound, as A1111's setting
    s_noise: float = 1.0
    _sigma_hat: torch.Tensor | None = None

    def churn(self, sample: torch.Tensor, timestep: torch.Tensor, generator: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's sample and model time after the churn noise (unchanged when there is none)."""
        self._sigma_hat = None
        if self.s_churn <= 0:
            return sample, timestep
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        upper = self.s_tmax or float("inf")
        if not self.s_tmin <= float(sigma) <= upper:
            return sample, timestep
        gamma = min(self.s_churn / (len(self.sigmas) - 1), 2**0.5 - 1)
        sigma_hat = sigma * (gamma + 1)
        noise = step_noise(sample, generator).float() * self.s_noise
        sample = sample + noise * (sigma_hat**2 - sigma**2) ** 0.5
        self._sigma_hat = sigma_hat
        model_time = self.k_model.sigma_to_t(sigma_hat.reshape(1).float())[0]  # type: ignore[attr-defined]
        return sample, model_time.to(timestep.device, timestep.dtype)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        if self._sigma_hat is None:
            return super().scale_model_input(sample, timestep)
        self.is_scale_input_called = True
        return sample / (self._sigma_hat**2 + 1) ** 0.5

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any,
             generator: Any = None, return_dict: bool = True, **kwargs: Any) -> Any:
        if self._sigma_hat is None:
            return super().step(model_output, timestep, sample, *args, generator=generator, return_dict=return_dict,
                                **kwargs)
        sigma_hat, self._sigma_hat = self._sigma_hat, None
        x = sample.float()
        if self.config.prediction_type == "v_prediction":
            denoised = model_output * (-sigma_hat / (sigma_hat**2 + 1) ** 0.5) + x / (sigma_hat**2 + 1)
        else:
            denoised = x - sigma_hat * model_output
        x = x + (x - denoised) / sigma_hat * (self.sigmas[self.step_index + 1] - sigma_hat)
        self._step_index += 1
        x = x.to(model_output.dtype)
        return (x, denoised) if not return_dict else type(self)._output(x, denoised)

    @staticmethod
    def _output(x: torch.Tensor, denoised: torch.Tensor) -> Any:
        from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

        return EulerDiscreteSchedulerOutput(prev_sample=x, pred_original_sample=denoised)
