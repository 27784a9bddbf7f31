"""A LoRA training set from a folder: pictures, their captions, and the size each is trained at.

Each picture may have a caption in a `.txt` file of the same stem beside it (kohya / A1111 layout);
pictures without one get the default caption. Pictures are trained either at one square size
(resized so the shorter side fits, then centre-cropped) or, with bucketing, at the size among a set of
"buckets" of about the same area whose aspect ratio is closest to the picture's, so tall and wide
pictures keep their composition instead of losing their ends to a square crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from modules.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_BUCKET_RATIO = 2.0  # the widest bucket is twice as wide as tall (and the tallest the reverse)


@dataclass(frozen=True)
class TrainItem:
    path: Path
    caption: str


def scan_folder(folder: Path, default_caption: str) -> list[TrainItem]:
    """Every picture in `folder` (not its sub-folders) with its caption, sorted by file name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"The training data folder {folder} does not exist.")
    items = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        items.append(TrainItem(path, caption or default_caption))
    if not items:
        raise UserError(f"No pictures in {folder}: put PNG/JPEG/WebP files there, each with an optional "
                        "caption in a .txt file of the same name.")
    return items


def load_picture(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"Cannot read the training picture {path}: {exc}.") from exc


def bucket_step(resolution: int) -> int:
    """Bucket sides are multiples of this: 64 for SD-sized training, finer for small models (≥ 8,
    the VAE's factor)."""
    return max(8, min(64, resolution // 8 // 8 * 8))


def bucket_sizes(resolution: int, step: int | None = None, max_ratio: float = MAX_BUCKET_RATIO,
                 ) -> list[tuple[int, int]]:
    """(width, height) buckets of at most resolution² pixels, sides multiples of `step`, from the
    tallest to the widest allowed shape."""
    step = step or bucket_step(resolution)
    area = resolution * resolution
    sizes = set()
    width = step
    while width <= resolution * max_ratio:
        height = min(int(area / width) // step * step, int(resolution * max_ratio) // step * step)
        if height >= step and max(width / height, height / width) <= max_ratio + 1e-9:
            sizes.add((width, height))
        width += step
    return sorted(sizes, key=lambda wh: wh[0] / wh[1])


def choose_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket with the aspect ratio closest to the picture's (in log space: 2:1 and 1:2 are as far from 1:1)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - ratio), -wh[0] * wh[1]))


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize so the picture covers width × height, then cut the centre out."""
    scale = max(width / image.width, height / image.height)
    new = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(new, Image.Resampling.LANCZOS) if new != image.size else image
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def target_size(image: Image.Image, resolution: int, buckets: list[tuple[int, int]] | None) -> tuple[int, int]:
    if not buckets:
        return resolution, resolution
    return choose_bucket(image.width, image.height, buckets)


def to_array(image: Image.Image) -> np.ndarray:
    """RGB picture → float32 [3, H, W] in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def batches(groups: dict[tuple[int, int], list[int]], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch: each size group shuffled and cut into batches (pictures of one batch share a size),
    the batches in random order."""
    out = []
    for indices in groups.values():
        order = [indices[i] for i in rng.permutation(len(indices))]
        out += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]
