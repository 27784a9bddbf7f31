"""From a detected map to the control hint: resized to the generation size as A1111's extension does.

The extension does not resize maps plainly. Binary maps (edges, scribbles) are resized, re-binarised
with Otsu and, when they are one-pixel lines, thinned back to one-pixel lines, because a ControlNet
was trained on thin lines and a blurred edge reads as something else; maps of a few flat colours
(segmentations) are resized with nearest neighbour so no new colours appear; the rest use area
(shrinking) or cubic (enlarging) interpolation. The three resize modes fit the map to the target:
stretched (Just Resize), covering it and centre-cropped (Crop and Resize), or inside it on a
background of the map's border colour (Resize and Fill). The hint is then the map / 255 as 1xCxHxW.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from modules.controlnet.model_free import hwc3

# Hit-or-miss patterns for thinning (1 = line, -1 = background, 0 = either), each used in its four
# rotations: a pixel matching one is a removable border pixel of a thick line.
_THIN = ("-1 -1 -1 / 0 1 0 / 1 1 1", "0 -1 -1 / 1 1 -1 / 0 1 0")
# End-point spurs left by thinning an enlarged map; removed once.
_PRUNE = ("-1 -1 -1 / -1 1 -1 / 0 0 -1", "-1 -1 -1 / -1 1 -1 / -1 0 0")
# The four directions a local maximum is checked along (horizontal, vertical, two diagonals).
_NMS = ("0 0 0 / 1 1 1 / 0 0 0", "0 1 0 / 0 1 0 / 0 1 0", "1 0 0 / 0 1 0 / 0 0 1", "0 0 1 / 0 1 0 / 1 0 0")
# More distinct colours than this is a picture-like map (depth, normals); fewer, a flat-colour map.
_FLAT_COLOURS = 200


def _kernel(text: str, dtype: type = np.int32) -> np.ndarray:
    return np.array([[int(v) for v in row.split()] for row in text.split("/")], dtype=dtype)


def _rotations(patterns: tuple[str, ...]) -> list[np.ndarray]:
    kernels = [_kernel(p) for p in patterns]
    return [np.rot90(k, turns) for turns in range(4) for k in kernels]


_THIN_KERNELS = _rotations(_THIN)
_PRUNE_KERNELS = _rotations(_PRUNE)
_NMS_KERNELS = [_kernel(p, np.uint8) for p in _NMS]


def _sweep(lines: np.ndarray, kernels: list[np.ndarray]) -> bool:
    """Clear every pixel any kernel matches (in place); whether anything was cleared."""
    changed = False
    for kernel in kernels:
        hits = cv2.morphologyEx(lines, cv2.MORPH_HITMISS, kernel) > 127
        if hits.any():
            lines[hits] = 0
            changed = True
    return changed


def thin_lines(lines: np.ndarray, prune: bool = True) -> np.ndarray:
    """Thin a binary uint8 line map to one-pixel lines (at most 32 sweeps), then prune spurs once."""
    lines = lines.copy()
    for _ in range(32):
        if not _sweep(lines, _THIN_KERNELS):
            break
    if prune:
        _sweep(lines, _PRUNE_KERNELS)
    return lines


def keep_ridges(grey: np.ndarray) -> np.ndarray:
    """Keep a pixel where it is the maximum of its 3-pixel line in at least one direction."""
    out = np.zeros_like(grey)
    for kernel in _NMS_KERNELS:
        np.putmask(out, cv2.dilate(grey, kernel=kernel) == grey, grey)
    return out


def _distinct_colours(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0))


def resize_map(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    """A detected map at width x height, the extension's way (see the module docstring).

    An HxWx4 map (an inpaint map: colour + mask in alpha) has its mask resized alongside and
    re-binarised to 0/255.
    """
    mask = None
    colour = detected
    if detected.ndim == 3 and detected.shape[2] == 4:
        colour, mask = detected[:, :, :3], detected[:, :, 3]
    if colour.shape[:2] == (height, width):
        out = colour
    else:
        new_area, old_area = width * height, colour.shape[0] * colour.shape[1]
        colours = _distinct_colours(colour)
        binary = colours == 2 and np.min(colour) < 16 and np.max(colour) > 240
        one_pixel_lines = False
        if binary:
            kernel = np.ones((3, 3), dtype=np.uint8)
            opened = cv2.dilate(cv2.erode(colour, kernel, iterations=1), kernel, iterations=1)
            # Mostly lines an opening removes: one-pixel edges rather than filled regions.
            one_pixel_lines = np.count_nonzero(opened < colour) * 2 > np.count_nonzero(colour > 127)
        if 2 < colours < _FLAT_COLOURS:
            interpolation = cv2.INTER_NEAREST
        elif new_area < old_area:
            interpolation = cv2.INTER_AREA
        else:
            interpolation = cv2.INTER_CUBIC
        out = cv2.resize(colour, (width, height), interpolation=interpolation)
        if mask is not None:
            mask = cv2.resize(mask, (width, height), interpolation=interpolation)
        if binary:
            grey = np.mean(out.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
            if one_pixel_lines:
                _, grey = cv2.threshold(keep_ridges(grey), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
                grey = thin_lines(grey, prune=new_area > old_area)
            else:
                _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            out = np.stack([grey] * 3, axis=2)
    if mask is not None:
        marked = ((mask > 127).astype(np.float32) * 255.0).clip(0, 255).astype(np.uint8)
        out = np.concatenate([out, marked[:, :, None]], axis=2)
    return out


def _round(value: float) -> int:
    return int(np.round(value))  # numpy's half-to-even, as the extension rounds


def fit_map(detected: np.ndarray, resize_mode: str, width: int, height: int, inpaint: bool = False) -> np.ndarray:
    """The detected map fitted to the generation size with a resize mode (HxWxC, uint8 or float32).

    `inpaint`: the map is an inpaint map, kept as float32 with its mask channel (as the extension
    handles those); other maps are made 3-channel first.
    """
    detected = detected.astype(np.float32) if inpaint else hwc3(detected)
    if resize_mode == "Just Resize":
        return np.ascontiguousarray(resize_map(detected, width, height))
    old_h, old_w = float(detected.shape[0]), float(detected.shape[1])
    k_h, k_w = float(height) / old_h, float(width) / old_w
    if resize_mode == "Resize and Fill":
        k = min(k_h, k_w)
        borders = np.concatenate([detected[0, :, :], detected[-1, :, :], detected[:, 0, :], detected[:, -1, :]],
                                 axis=0)
        fill = np.median(borders, axis=0).astype(detected.dtype)
        if len(fill) == 4:
            fill[3] = 255  # the added area is to be painted
        canvas = np.tile(fill[None, None], [height, width, 1])
        inner = resize_map(detected, _round(old_w * k), _round(old_h * k))
        new_h, new_w = inner.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        canvas[top:top + new_h, left:left + new_w] = inner
        return np.ascontiguousarray(canvas)
    if resize_mode != "Crop and Resize":
        raise ValueError(f"unknown resize mode {resize_mode!r}")
    k = max(k_h, k_w)
    covered = resize_map(detected, _round(old_w * k), _round(old_h * k))
    new_h, new_w = covered.shape[:2]
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(covered[top:top + height, left:left + width])


def hint_tensor(fitted: np.ndarray) -> torch.Tensor:
    """The fitted map as the ControlNet's input: float32 in [0, 1], 1xCxHxW.

    A 4-channel (inpaint) map becomes the extension's inpaint protocol: colour where kept, -1
    where the mask (> 0.5) marks the area to paint.
    """
    hint = torch.from_numpy(np.ascontiguousarray(fitted)).float() / 255.0
    hint = hint.permute(2, 0, 1)[None].contiguous()
    if hint.shape[1] == 4:
        colour, marked = hint[:, :3], (hint[:, 3:4] > 0.5).float()
        hint = colour * (1 - marked) - marked
    return hint
