"""Cheap live previews: latents → RGB through a fixed linear map instead of the full VAE decoder."""

from __future__ import annotations

import torch
from PIL import Image

from modules.models.arch import ModelArch

# Least-squares fits of latent channels to RGB for the released VAEs (published approximations).
_FACTORS = {
    "sd": [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    "sdxl": [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
}


def latent_rgb_factors(arch: ModelArch) -> tuple[torch.Tensor, torch.Tensor]:
    """(4×3 matrix, 3 bias) for `arch`; a model's YAML may carry its own fit (`latent_rgb_factors`,
    `latent_rgb_bias` under model.params), as the embedded default model does."""
    params = arch.raw.get("model", {}).get("params", {}) if arch.raw else {}
    factors = params.get("latent_rgb_factors") or _FACTORS["sdxl" if arch.is_sdxl else "sd"]
    bias = params.get("latent_rgb_bias") or [0.0, 0.0, 0.0]
    return torch.tensor(factors, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def latent_preview(latents: torch.Tensor, arch: ModelArch, size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB picture of the first latent of a batch; `size` = (width, height) to upscale to."""
    factors, bias = latent_rgb_factors(arch)
    rgb = torch.einsum("chw,cr->hwr", latents[0, :4].float().cpu(), factors) + bias
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(rgb)
    return image.resize(size, Image.BILINEAR) if size else image
