"""Upscaler model files (ESRGAN, RealESRGAN, SwinIR, ...): safe loading with spandrel, tiled inference.

spandrel's own `load_from_file` unpickles .pth files with a restricted unpickler and runs .pt files
through TorchScript; this program reads weights only with safetensors or torch.load(weights_only=True)
(modules/networks/files.read_tensors) and gives spandrel nothing but the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import spandrel
import torch
from PIL import Image

from modules.errors import UserError
from modules.networks.files import read_tensors

TILE = 192  # input pixels per tile side: bounds memory on big pictures
OVERLAP = 16  # context pixels around each tile, cut away after inference so tiles join without seams


@dataclass
class LoadedUpscaler:
    """An image-to-image model with a fixed factor, ready on its device."""

    name: str
    model: Any  # spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return int(self.model.scale)

    @torch.inference_mode()
    def upscale(self, image: Image.Image, tile: int = TILE, overlap: int = OVERLAP) -> Image.Image:
        """`image` times the model's factor, computed tile by tile (`tile` 0: the whole picture at once)."""
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        x = pixels.permute(2, 0, 1).unsqueeze(0)
        if self.model.tiling != spandrel.ModelTiling.SUPPORTED:
            tile = 0  # the model tiles internally, or its output suffers from tiling (spandrel says which)
        out = tiled(lambda t: self.model(t.to(self.device, self.dtype)).float().cpu(), x, self.scale, tile, overlap)
        array = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(array)


def tiled(run: Any, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """`run` over `x` [1, C, H, W] in tiles of `tile` pixels, each with `overlap` pixels of context
    on every side; the context is cut from each result, so each output pixel comes from one tile that
    saw its neighbourhood (a convolution net's receptive field)."""
    _, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return run(x)
    out = torch.zeros(1, c, h * scale, w * scale)
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            t1, l1 = min(bottom + overlap, h), min(right + overlap, w)
            result = run(x[:, :, t0:t1, l0:l1])
            dy, dx = (top - t0) * scale, (left - l0) * scale
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = \
                result[:, :, dy:dy + (bottom - top) * scale, dx:dx + (right - left) * scale]
    return out


def load_upscaler(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedUpscaler:
    """The model in `path`; a UserError naming the file when it is damaged or not an upscaler."""
    state, _ = read_tensors(path, "upscaler model")
    # Some trainers wrap the weights: {"params_ema": {...}} (RealESRGAN), {"params": ...}, {"state_dict": ...}.
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"The upscaler model file {path.name} holds no weights.")
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(tensors)
    except spandrel.UnsupportedModelError as exc:
        raise UserError(f"The upscaler model file {path.name} is not an architecture spandrel knows "
                        "(ESRGAN, RealESRGAN, SwinIR, HAT, DAT, ...). Remove it from the upscaler folder.") from exc
    except Exception as exc:  # noqa: BLE001 - mismatched shapes and the like: a damaged or unusual file
        raise UserError(f"The upscaler model file {path.name} could not be built ({exc}).") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3:
        raise UserError(f"{path.name} is a {descriptor.architecture.name} model ({descriptor.purpose}, "
                        f"{descriptor.input_channels} input channels), not an RGB upscaler.")
    if dtype == torch.float16 and not descriptor.supports_half:
        dtype = torch.float32
    elif dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        dtype = torch.float32
    descriptor.to(device).to(dtype).eval()
    return LoadedUpscaler(name=path.stem, model=descriptor, device=device, dtype=dtype)
