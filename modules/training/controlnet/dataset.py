"""The ControlNet's training data: pictures of one shape at random places and sizes, their canny maps
(the hint), their captions, and the latents the frozen autoencoder makes of them, computed once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules.controlnet.preprocessors import run_module
from modules.training.default_model.data import PlacementFn, batch_to_tensor, make_sample

# The canny preprocessor's defaults (the extension's sliders): what a user gets without touching them.
CANNY_LOW, CANNY_HIGH = 100, 200


def canny_map(image: Image.Image | np.ndarray, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
    """The `canny` preprocessor's map of `image` at the image's own resolution, one channel, uint8."""
    arr = np.asarray(image)
    return run_module("canny", arr, min(arr.shape[:2]), low, high)[..., 0].copy()


def hint_batch(maps: torch.Tensor) -> torch.Tensor:
    """uint8 maps [n, H, W] as the ControlNet's input: float in [0, 1], three equal channels, as
    `modules.controlnet.hint.hint_tensor` gives a preprocessor's RGB map."""
    return (maps.float() / 255.0)[:, None].expand(-1, 3, -1, -1)


@dataclass
class ControlData:
    latents: torch.Tensor  # [n, 4, h, w], unscaled means of the frozen encoder
    maps: torch.Tensor  # [n, H, W] uint8 canny maps
    captions: list[str]


@torch.no_grad()
def build_dataset(vae: torch.nn.Module, count: int, size: int, rng: np.random.Generator,
                  placement: PlacementFn, precision: str = "bf16", chunk: int = 64) -> ControlData:
    """`count` pictures drawn with `placement`, encoded and mapped; depends only on the state of `rng`."""
    latents, maps, captions = [], [], []
    device = next(vae.parameters()).device
    use_bf16 = precision == "bf16"
    for start in range(0, count, chunk):
        samples = [make_sample(rng, size, placement=placement) for _ in range(min(chunk, count - start))]
        images = np.stack([np.asarray(s.image, dtype=np.uint8) for s in samples])
        maps.append(torch.from_numpy(np.stack([canny_map(im) for im in images])))
        # bf16 as the base trainer's stage 2 encodes (half the time; the latents move ~0.1%)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            z = vae.encode(batch_to_tensor(images).to(device)).latent_dist.mean
        latents.append(z.float().cpu())
        captions += [s.caption for s in samples]
    return ControlData(torch.cat(latents), torch.cat(maps), captions)

