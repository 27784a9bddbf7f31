"""Upscalers by name: the built-in pixel filters, the latent variants, and model files.

Model files (ESRGAN, RealESRGAN, SwinIR, ... anything spandrel recognises) dropped into
models/ESRGAN or models/RealESRGAN are listed by their file name without the suffix. They are read
without running code (safetensors, or torch.load with weights_only=True) and handed to spandrel,
which detects the architecture from the keys; inference runs in overlapping tiles (modules/tiled_upscale.py).

Names are the ones API clients send as `hr_upscaler` / `upscaler_1`: "None", "Lanczos", "Nearest",
"Latent", "Latent (antialiased)", ... An unknown name is a UserError that lists the known ones.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from modules.errors import UserError
from modules.models.discovery import list_model_files
from modules.upscaler_models import LoadedUpscaler, load_upscaler

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")

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
    """The upscalers a user can pick: built-in filters, latent modes and model files in `model_dirs`.

    The last model file used stays loaded (upscaling a batch reuses it); `device` is where it runs.
    """

    def __init__(self, model_dirs: list[Path] | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model_dirs = list(model_dirs or [])
        self.device = torch.device(device)
        self.dtype = dtype
        self._models: list[UpscalerInfo] | None = None
        self._loaded: tuple[Path, float, LoadedUpscaler] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Rescan the model folders (new or removed files) and forget the loaded model."""
        with self._lock:
            self._models = None
            self._loaded = None

    def model_upscalers(self) -> list[UpscalerInfo]:
        """The model files, named by file name without suffix (the first of a name wins)."""
        if self._models is None:
            found: dict[str, UpscalerInfo] = {}
            for info in list_model_files(self.model_dirs, MODEL_SUFFIXES):
                if info.stem in PIXEL_FILTERS or info.stem in LATENT_MODES:
                    log.warning("Upscaler file %s has the name of a built-in upscaler; skipped.", info.path)
                    continue
                found.setdefault(info.stem, UpscalerInfo(info.stem, "model", info.path, _scale_from_name(info.stem)))
            self._models = list(found.values())
        return list(self._models)

    def pixel_upscalers(self) -> list[UpscalerInfo]:
        """Pixel-space upscalers: the built-in filters, then the model files."""
        return [UpscalerInfo(name, "pixel") for name in PIXEL_FILTERS] + self.model_upscalers()

    def latent_upscalers(self) -> list[UpscalerInfo]:
        return [UpscalerInfo(name, "latent") for name in LATENT_MODES]

    def names(self) -> list[str]:
        return [u.name for u in self.pixel_upscalers()] + list(LATENT_MODES)

    def is_latent(self, name: str) -> bool:
        return name in LATENT_MODES

    def find(self, name: str) -> UpscalerInfo:
        """A pixel upscaler by name (exact, then ignoring case); a UserError listing the known ones."""
        upscalers = self.pixel_upscalers()
        for match in (lambda u: u.name == name, lambda u: u.name.lower() == str(name).lower()):
            for info in upscalers:
                if match(info):
                    return info
        known = ", ".join(u.name for u in upscalers)
        raise UserError(f"Unknown upscaler {name!r}; choose one of {known}. Upscaler model files go into "
                        f"{' or '.join(str(d) for d in self.model_dirs) or 'models/ESRGAN'}.")

    def upscale_image(self, image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
        """`image` to `size` (width, height) with the pixel upscaler `name`.

        A model runs at its native factor (again, while the picture is still smaller than asked, at
        most three times) and the result is resized to `size` with Lanczos.
        """
        info = self.find(name)
        if info.kind == "model":
            if image.size == size:
                return image
            assert info.path is not None
            model = self._model(info.path)
            image = image.convert("RGB")
            for _ in range(3):
                if image.width >= size[0] and image.height >= size[1]:
                    break
                image = model.upscale(image)
            return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
        if image.size == size:
            return image
        resample = PIXEL_FILTERS[info.name]
        return image.resize(size, resample if resample is not None else Image.Resampling.LANCZOS)

    def model_scale(self, name: str) -> int:
        """The native factor of upscaler `name` (loads a model file to read it); 1 for filters."""
        info = self.find(name)
        if info.kind != "model" or info.path is None:
            return 1
        return self._model(info.path).scale

    def _model(self, path: Path) -> LoadedUpscaler:
        with self._lock:
            mtime = path.stat().st_mtime if path.exists() else 0.0
            if self._loaded is None or self._loaded[0] != path or self._loaded[1] != mtime:
                self._loaded = None  # free the previous model before loading the next
                self._loaded = (path, mtime, load_upscaler(path, self.device, self.dtype))
                scale = self._loaded[2].scale
                if self._models is not None:  # the listing guessed the factor from the name: now it is known
                    self._models = [UpscalerInfo(u.name, u.kind, u.path, scale) if u.path == path else u
                                    for u in self._models]
            return self._loaded[2]


def _scale_from_name(stem: str) -> int:
    """The factor a file name announces ("4x-UltraSharp", "RealESRGAN_x2plus"); 4, the usual one, otherwise."""
    match = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", stem.lower())
    if match:
        return int(match.group(1) or match.group(2))
    return 4
