"""The ControlNet preprocessors that need no annotator weights, done with OpenCV and numpy.

Each function follows the processing of A1111's ControlNet extension (sd-webui-controlnet) step by
step, because a ControlNet was trained on maps made exactly that way: the image is brought to the
processor resolution by `resize_with_pad` (shorter side to the resolution, edges padded to a
multiple of 64, the map cropped back afterwards), and every result is an HWC uint8 RGB array.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# The flow grid of content shuffle is one random value per 256 pixels, as in the extension.
SHUFFLE_CELL = 256


def hwc3(image: np.ndarray) -> np.ndarray:
    """Any uint8 grey, RGB or RGBA array as HxWx3 RGB; alpha is composed over white."""
    if image.dtype != np.uint8:
        raise ValueError(f"hwc3 needs a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"hwc3 needs an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.concatenate([image] * 3, axis=2)
    colour = image[:, :, :3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    return (colour * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def _pad64(length: int) -> int:
    return int(np.ceil(float(length) / 64.0) * 64 - length)


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The shorter side scaled to `resolution`, then edge-padded to multiples of 64.

    Returns the padded RGB image and a function that crops a map of the padded size back to the
    scaled size. Cubic interpolation when enlarging, area when shrinking (the extension's choice).
    """
    img = hwc3(image)
    height, width = img.shape[:2]
    k = float(resolution) / float(min(height, width))
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    target_h = int(np.round(float(height) * k))
    target_w = int(np.round(float(width) * k))
    img = cv2.resize(img, (target_w, target_h), interpolation=interpolation)
    padded = np.pad(img, [[0, _pad64(target_h)], [0, _pad64(target_w)], [0, 0]], mode="edge")

    def remove_pad(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:target_h, :target_w]).copy()

    return np.ascontiguousarray(padded), remove_pad


def identity(image: np.ndarray) -> np.ndarray:
    return hwc3(image)


def invert(image: np.ndarray) -> np.ndarray:
    # No resize: the extension inverts the picture at its own size (its resolution slider is hidden).
    return 255 - hwc3(image)


def canny(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    img, remove_pad = resize_with_pad(image, resolution)
    edges = cv2.Canny(img, int(low), int(high))
    return remove_pad(cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB))


def scribble_xdog(image: np.ndarray, resolution: int, threshold: float) -> np.ndarray:
    """Difference of Gaussians (sigma 0.5 and 5), darkest channel, white where 2 * DoG > threshold."""
    img, remove_pad = resize_with_pad(image, resolution)
    fine = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(img, dtype=np.uint8)
    # Kept in uint8 as the extension does: 2 * (255 - dog) wraps modulo 256 above 127, so the
    # maps are the extension's bit for bit.
    result[2 * (255 - dog) > threshold] = 255
    return remove_pad(result)


def threshold(image: np.ndarray, resolution: int, level: float) -> np.ndarray:
    """White where every channel is above `level` (binarisation of a white-background drawing)."""
    img, remove_pad = resize_with_pad(image, resolution)
    result = np.zeros_like(img, dtype=np.uint8)
    result[np.min(img, axis=2) > level] = 255
    return remove_pad(result)


def lineart_standard(image: np.ndarray, resolution: int) -> np.ndarray:
    """Dark lines on a light background: blur (sigma 6) minus image, normalised by the median line."""
    img, remove_pad = resize_with_pad(image, resolution)
    x = img.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    # An image without any line has no median; the extension's floor of 16 then applies.
    median = float(np.median(strong)) if strong.size else 0.0
    intensity /= max(16.0, median)
    intensity *= 127
    return remove_pad(hwc3(intensity.clip(0, 255).astype(np.uint8)))


def tile_resample(image: np.ndarray, rate: float) -> np.ndarray:
    """The image shrunk by `rate` (area interpolation); below 1.1 it is left as it is."""
    img = hwc3(image)
    if rate < 1.1:
        return img.copy()
    height, width = img.shape[:2]
    new_h = int(float(height) / float(rate))
    new_w = int(float(width) / float(rate))
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)


def blur_gaussian(image: np.ndarray, resolution: int, sigma: float) -> np.ndarray:
    img, remove_pad = resize_with_pad(image, resolution)
    return cv2.GaussianBlur(remove_pad(img), (0, 0), float(sigma))


def _recolor(image: np.ndarray, conversion: int, channel: int, gamma: float) -> np.ndarray:
    # The extension converts its RGB array with OpenCV's BGR conversions; kept, the maps match its.
    converted = cv2.cvtColor(hwc3(image), conversion)
    value = (converted[:, :, channel].astype(np.float32) / 255.0) ** gamma
    return cv2.cvtColor((value * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def recolor_luminance(image: np.ndarray, gamma: float) -> np.ndarray:
    return _recolor(image, cv2.COLOR_BGR2LAB, 0, gamma)


def recolor_intensity(image: np.ndarray, gamma: float) -> np.ndarray:
    return _recolor(image, cv2.COLOR_BGR2HSV, 2, gamma)


def _noise_disk(rng: np.random.RandomState, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse uniform grid upscaled by cubic interpolation, HxWx1."""
    noise = rng.uniform(low=0, high=1, size=((height // cell) + 2, (width // cell) + 2, 1))
    noise = cv2.resize(noise, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell: cell + height, cell: cell + width]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None]


def shuffle(image: np.ndarray, resolution: int, seed: int) -> np.ndarray:
    """Content shuffle: the image remapped through a smooth random flow drawn from `seed`.

    The extension seeds NumPy's global generator with the generation's seed and draws the x flow,
    then the y flow; a `RandomState(seed)` draws the same numbers without touching global state.
    """
    img, remove_pad = resize_with_pad(image, resolution)
    img = remove_pad(img)
    height, width = img.shape[:2]
    rng = np.random.RandomState(seed & 0xFFFFFFFF)
    flow_x = _noise_disk(rng, height, width, SHUFFLE_CELL) * float(width - 1)
    flow_y = _noise_disk(rng, height, width, SHUFFLE_CELL) * float(height - 1)
    flow = np.concatenate([flow_x, flow_y], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def _thin_maxima(x: np.ndarray, level: float, sigma: float) -> np.ndarray:
    """Non-maximum suppression of a soft edge map: blurred, kept where it is the largest along any
    of the four directions (horizontal, vertical, two diagonals), then thresholded at `level`."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kernels = (
        np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8),
        np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=np.uint8),
        np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.uint8),
        np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8),
    )
    kept = np.zeros_like(x)
    for kernel in kernels:
        np.putmask(kept, cv2.dilate(x, kernel=kernel) == x, x)
    return np.where(kept > level, 255, 0).astype(np.uint8)


def soft_edge_to_scribble(edges: np.ndarray) -> np.ndarray:
    """A soft edge map (HED, PiDiNet) made into a scribble: thin maxima above 127, widened by a
    blur of sigma 3 and binarised (anything above 4 is a stroke), as the extension's scribble_hed."""
    thin = _thin_maxima(hwc3(edges)[:, :, 0], 127, 3.0)
    wide = cv2.GaussianBlur(thin, (0, 0), 3.0)
    return hwc3(np.where(wide > 4, 255, 0).astype(np.uint8))


def inpaint_rgba(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The image with the inpaint mask in its alpha channel (255 = repaint), as the extension carries it.

    Without a mask nothing is marked (the extension adds an all-zero mask then).
    """
    rgb = hwc3(image)
    if mask is None:
        alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)
    else:
        alpha = np.where(mask > 127, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[:, :, None]], axis=2)


def inpaint_hint(rgba: np.ndarray) -> np.ndarray:
    """The control hint of an inpaint map: colour in [0, 1], masked pixels -1 (HxWx3 float32).

    This is the extension's inpaint protocol, `c * (1 - m) - m` with `m = alpha > 0.5`.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"inpaint_hint needs an HxWx4 map, got shape {rgba.shape}")
    colour = rgba[:, :, :3].astype(np.float32) / 255.0
    marked = (rgba[:, :, 3:4].astype(np.float32) / 255.0 > 0.5).astype(np.float32)
    return colour * (1.0 - marked) - marked
