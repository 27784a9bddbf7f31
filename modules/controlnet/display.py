"""How a detected map is shown (API answers, the gallery, /controlnet/detect), as the extension shows it."""

from __future__ import annotations

import numpy as np
from PIL import Image


def visible_map(detected: np.ndarray | Image.Image) -> Image.Image:
    """A map as a picture: an inpaint map's mask (alpha, 255 = repaint) drawn half-transparent
    (alpha 255 - mask // 2, the extension's rule) so the picture under it stays visible."""
    arr = np.clip(np.asarray(detected), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr.copy()
        arr[:, :, 3] = 255 - arr[:, :, 3] // 2
        return Image.fromarray(arr, "RGBA")
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    return Image.fromarray(arr[:, :, :3], "RGB")
