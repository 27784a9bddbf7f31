"""Pixel-side preparation for img2img, inpainting and outpainting: resizing, masks, fills, compositing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def resize_image(image: Image.Image, width: int, height: int, mode: str,
                 upscale: Callable[[Image.Image, tuple[int, int]], Image.Image] | None = None) -> Image.Image:
    """Fit `image` to width×height: "just resize" stretches, "crop and resize" fills and crops the
    overflow, "resize and fill" fits inside and fills the borders by stretching the edge pixels.

    `upscale(image, size)` (A1111's "Upscaler for img2img") enlarges a picture that is smaller than the
    mode needs to that scale first; the rest is Lanczos.
    """
    image = image.convert("RGB")
    if upscale is not None:
        cover = max(width / image.width, height / image.height)
        scale = min(width / image.width, height / image.height) if mode == "resize and fill" else cover
        if scale > 1.0:
            image = upscale(image, (round(image.width * scale), round(image.height * scale)))
    if mode == "just resize" or image.size == (width, height):
        return image.resize((width, height), Image.LANCZOS)
    if mode == "crop and resize":
        return ImageOps.fit(image, (width, height), Image.LANCZOS)
    scale = min(width / image.width, height / image.height)
    inner = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    left, top = (width - inner.width) // 2, (height - inner.height) // 2
    return extend_with_edges(inner, left, width - inner.width - left, top, height - inner.height - top)


def extend_with_edges(image: Image.Image, left: int, right: int, top: int, bottom: int) -> Image.Image:
    """Pad by repeating the outermost pixels (a neutral start for outpainting)."""
    arr = np.asarray(image.convert("RGB"))
    arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="edge")
    return Image.fromarray(arr)


def binary_mask(mask: Image.Image, invert: bool = False) -> Image.Image:
    """White = repaint. Any non-black pixel counts; alpha-only masks (painted strokes) count too."""
    if mask.mode in ("RGBA", "LA"):
        alpha = np.asarray(mask.getchannel("A"))
        lum = np.asarray(mask.convert("L"))
        arr = (alpha > 0) & (lum > 0) if alpha.min() == 255 else alpha > 0
    else:
        arr = np.asarray(mask.convert("L")) > 127
    if invert:
        arr = ~arr
    return Image.fromarray((arr * 255).astype(np.uint8), "L")


def soft_mask(mask: Image.Image, blur: int) -> Image.Image:
    """The blending mask: blurred, but never reaching outside the hard mask, so pixels the user did
    not mark stay exactly as they were."""
    if blur <= 0:
        return mask
    blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    hard = np.asarray(mask, dtype=np.float32) > 0
    return Image.fromarray(np.where(hard, np.maximum(blurred, 1.0), 0).astype(np.uint8), "L")


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"fill" masked content: replace the masked area with the surrounding colours, smeared inward,
    so the model starts from the context instead of from what was there."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    hard = np.asarray(mask) > 0
    if hard.all():
        return Image.fromarray(np.full_like(arr, arr.mean(axis=(0, 1))).astype(np.uint8))
    result = arr.copy()
    result[hard] = arr[~hard].mean(axis=0)
    # Progressive blurs pull the nearby context colours into the hole.
    for radius in (64, 32, 16, 8, 4, 2):
        blurred = np.asarray(Image.fromarray(result.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
                             dtype=np.float32)
        result[hard] = blurred[hard]
    return Image.fromarray(result.astype(np.uint8))


def mask_box(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The masked region plus padding, grown to the aspect ratio of width×height, inside the image."""
    box = mask.getbbox()
    if box is None:
        return 0, 0, mask.width, mask.height
    x1, y1, x2, y2 = box
    x1, y1, x2, y2 = max(0, x1 - padding), max(0, y1 - padding), min(mask.width, x2 + padding), min(mask.height, y2 + padding)
    target = width / height
    w, h = x2 - x1, y2 - y1
    if w / h < target:
        grow = min(mask.width, round(h * target)) - w
        x1 = max(0, x1 - grow // 2)
        x2 = min(mask.width, x1 + w + grow)
        x1 = max(0, x2 - (w + grow))
    else:
        grow = min(mask.height, round(w / target)) - h
        y1 = max(0, y1 - grow // 2)
        y2 = min(mask.height, y1 + h + grow)
        y1 = max(0, y2 - (h + grow))
    return x1, y1, x2, y2


def composite(original: Image.Image, generated: Image.Image, blend: Image.Image) -> Image.Image:
    """Generated pixels where the blending mask is white, the original elsewhere."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), blend)


def outpaint_canvas(image: Image.Image, left: int, right: int, top: int, bottom: int, fill: str,
                    seed: int) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """The extended canvas, its mask (white = new area) and the extra padding per side.

    The canvas is rounded up to multiples of 8 (the latent grid); the rounding goes to the sides
    that are being extended.
    """
    lpad, rpad = _round_to_8(image.width, left, right)
    tpad, bpad = _round_to_8(image.height, top, bottom)
    pads = (lpad, rpad, tpad, bpad)
    canvas = extend_with_edges(image, lpad, rpad, tpad, bpad)
    arr = np.asarray(canvas, dtype=np.float32).copy()
    new = np.ones((canvas.height, canvas.width), dtype=bool)
    new[tpad: tpad + image.height, lpad: lpad + image.width] = False
    if fill == "mean":
        arr[new] = _border_pixels(np.asarray(image.convert("RGB"), dtype=np.float32)).mean(axis=0)
    elif fill == "noise":
        rng = np.random.default_rng(seed)
        arr[new] = rng.uniform(0, 255, size=(int(new.sum()), 3))
    mask = Image.fromarray((new * 255).astype(np.uint8), "L")
    return Image.fromarray(arr.astype(np.uint8)), mask, pads


def _round_to_8(size: int, a: int, b: int) -> tuple[int, int]:
    extra = (-(size + a + b)) % 8
    if a and b:
        return a + extra // 2, b + extra - extra // 2
    return (a + extra, b) if a else (a, b + extra)


def _border_pixels(arr: np.ndarray, width: int = 2) -> np.ndarray:
    return np.concatenate([arr[:width].reshape(-1, 3), arr[-width:].reshape(-1, 3),
                           arr[:, :width].reshape(-1, 3), arr[:, -width:].reshape(-1, 3)])
