"""Upscalers by name: the built-in pixel filters, the latent variants, and (later) model files.

Names are the ones API clients send as `hr_upscaler` / `upscaler_1`: "None", "Lanczos", "Nearest",
"Latent", "Latent (antialiased)", ... An unknown name is a UserError that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from modules.errors import UserError

# Built-in pixel upscalers: PIL filters, no model file.
PIXEL_FILTERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}

# Latent upscalers: (torch interpolation mode, antialias). Used by hires fix before the second pass.
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


@dataclass(frozen=True)
class UpscalerInfo:
    name: str
    kind: str  # "pixel" (PIL filter), "latent", or "model" (a file in models/ESRGAN etc.)
    path: Path | None = None
    scale: int = 1  # a model's native factor; filters scale freely


def upscale_latent(latent: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """`latent` [B, C, h, w] to `size` (height, width) in latent pixels with a latent upscaler."""
    if name not in LATENT_MODES:
        raise UserError(f"Unknown latent upscaler {name!r}; choose one of {', '.join(LATENT_MODES)}.")
    mode, antialias = LATENT_MODES[name]
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(latent, size=size, mode=mode)
    return F.interpolate(latent, size=size, mode=mode, antialias=antialias)


class UpscalerRegistry:
    """The upscalers a user can pick. Model files (spandrel) are added by `model_dirs` scanning."""

    def __init__(self, model_dirs: list[Path] | None = None) -> None:
        self.model_dirs = list(model_dirs or [])

    def pixel_upscalers(self) -> list[UpscalerInfo]:
        """Pixel-space upscalers: the built-in filters (model files join them when supported)."""
        return [UpscalerInfo(name, "pixel") for name in PIXEL_FILTERS]

    def latent_upscalers(self) -> list[UpscalerInfo]:
        return [UpscalerInfo(name, "latent") for name in LATENT_MODES]

    def names(self) -> list[str]:
        return [u.name for u in self.pixel_upscalers()] + list(LATENT_MODES)

    def is_latent(self, name: str) -> bool:
        return name in LATENT_MODES

    def upscale_image(self, image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
        """`image` to `size` (width, height) with the pixel upscaler `name`."""
        if name not in PIXEL_FILTERS:
            known = ", ".join(u.name for u in self.pixel_upscalers())
            raise UserError(f"Unknown upscaler {name!r}; choose one of {known}.")
        if image.size == size:
            return image
        resample = PIXEL_FILTERS[name]
        return image.resize(size, resample if resample is not None else Image.Resampling.LANCZOS)
