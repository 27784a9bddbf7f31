"""Synthetic training pictures for the built-in default model: one shape on a plain background.

Every picture is one flat-coloured shape (or none) on a flat background, drawn anti-aliased, with a
caption that names what is in it. The vocabulary is small and the colours far apart so that a judge
(`judge.py`) can read a generated picture back and check that it follows its prompt.

Geometry conventions, shared with the judge: continuous image coordinates with pixel (i, j) covering
[j, j + 1) x [i, i + 1), x to the right, y down. A shape is given by its centre, its circumradius
(every point of the shape lies within `radius` of the centre) and an angle in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Drawn here but never produced by default: a LoRA test teaches them to the trained model.
EXTRA_SHAPES: tuple[str, ...] = ("heart", "crescent")
ALL_SHAPES: tuple[str, ...] = SHAPES + EXTRA_SHAPES

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

# (foreground colour, shape) pairs the train split never shows: a model that draws them from their
# words alone composes colour and shape instead of memorising pairs.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "star"), ("white", "square")}
)

# "train": no held-out pair; "held_out": only held-out pairs (always a shape); "all": anything.
SPLITS: tuple[str, ...] = ("train", "held_out", "all")

# Circumradius as a fraction of the image side: large enough to read at 64 px, small enough to move.
RADIUS_RANGE: tuple[float, float] = (0.18, 0.35)
# The shipped default model trains on larger shapes (more of each spans its 16×16 latent); what is
# drawn to teach it something new (lora_check) uses the same range.
DEFAULT_MODEL_RADIUS_RANGE: tuple[float, float] = (0.26, 0.44)

# Angle after which a shape looks the same again (0: rotation is meaningless). The judge searches
# one period; the generator draws a uniform angle in it.
ROTATION_PERIOD: dict[str, float] = {
    "circle": 0.0,
    "square": 90.0,
    "triangle": 120.0,
    "star": 72.0,
    "heart": 360.0,
    "crescent": 360.0,
}
# A heart upside down reads as something else, so the generator only tilts it.
HEART_TILT = 20.0

# Caption forms and how often each is drawn; "background" has no shape.
# "shape" and "shape_bg" name no colour for the shape ("a circle", "a circle on a red background"),
# so prompts that leave the colour open (and negative prompts that name one) mean something.
CAPTION_FORMS: dict[str, float] = {"full": 0.50, "article": 0.14, "bare": 0.12, "background": 0.10,
                                   "shape": 0.07, "shape_bg": 0.07}

RGB = tuple[int, int, int]
# Draws (cx, cy, radius, angle) for a shape in a picture of the given side; `random_placement` by default.
PlacementFn = Callable[[np.random.Generator, int, str], tuple[float, float, float, float]]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(fg: str | None, shape: str | None, bg: str | None, form: str = "full") -> str:
    """The caption of a picture; with `shape` None it describes an empty background.

    Forms: "full" ("a red circle on a blue background"), "article" ("a red circle"), "bare"
    ("red circle"). A `bg` of None gives the "article" form.
    """
    if shape is None or fg is None:
        if bg is None:
            raise ValueError("a caption needs a shape or a background")
        return f"{_article(bg)} {bg} background"
    if form == "bare":
        return f"{fg} {shape}"
    if form == "article" or bg is None:
        return f"{_article(fg)} {fg} {shape}"
    if form == "full":
        return f"{_article(fg)} {fg} {shape} on {_article(bg)} {bg} background"
    if form == "shape":
        return f"a {shape}"
    if form == "shape_bg":
        return f"a {shape} on {_article(bg)} {bg} background"
    raise ValueError(f"unknown caption form {form!r}; expected one of {sorted(CAPTION_FORMS)}")


def _heart_outline(n: int) -> np.ndarray:
    # The classic parametric heart, y flipped so the point is at the bottom of the image.
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2.0
    return pts


def _crescent_outline(n: int) -> np.ndarray:
    # The unit disc minus a disc of radius 0.85 centred 0.4 to the right: a moon opening to the right
    # whose thickest part (0.55 of the radius) stays readable at 64 px.
    d, rho = 0.4, 0.85
    xi = (1.0 - rho**2 + d**2) / (2.0 * d)
    yi = math.sqrt(1.0 - xi**2)
    phi0 = math.atan2(yi, xi)
    psi0 = math.atan2(yi, xi - d)
    outer = np.linspace(phi0, 2.0 * math.pi - phi0, n)
    inner = np.linspace(2.0 * math.pi - psi0, psi0, n // 2)[1:-1]
    return np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], axis=1),
            np.stack([d + rho * np.cos(inner), rho * np.sin(inner)], axis=1),
        ]
    )


def _regular(radii: Sequence[float], start_deg: float) -> np.ndarray:
    k = len(radii)
    angles = np.radians(start_deg + 360.0 * np.arange(k) / k)
    r = np.asarray(radii, dtype=np.float64)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


@cache
def unit_polygon(shape: str) -> np.ndarray:
    """Outline of `shape` at angle 0 as an (N, 2) array (x, y), centred so that its circumradius is 1.

    Angle 0: square axis-aligned, triangle and star pointing up, heart point down, crescent open to
    the right. The array is read-only (it is cached).
    """
    if shape == "circle":
        # 256 sides: under 0.02 px from a true circle at 4x supersampling of 128 px.
        pts = _regular([1.0] * 256, 0.0)
    elif shape == "square":
        pts = _regular([1.0] * 4, 45.0)
    elif shape == "triangle":
        pts = _regular([1.0] * 3, -90.0)
    elif shape == "star":
        # Inner radius 0.5: points deep enough to tell from a pentagon, arms thick enough at 64 px.
        pts = _regular([1.0, 0.5] * 5, -90.0)
    elif shape == "heart":
        pts = _heart_outline(256)
    elif shape == "crescent":
        pts = _crescent_outline(256)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(ALL_SHAPES)}")
    pts = pts / np.linalg.norm(pts, axis=1).max()
    pts.setflags(write=False)
    return pts


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float = 0.0) -> np.ndarray:
    """Outline of `shape` centred at (cx, cy) with circumradius `radius`, turned `angle` degrees
    (counter-clockwise as seen on screen)."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    # y points down, so a screen-counter-clockwise turn is this matrix.
    rot = np.array([[c, s], [-s, c]])
    return unit_polygon(shape) @ rot.T * radius + np.array([cx, cy])


def polygon_area_centroid(pts: np.ndarray) -> tuple[float, np.ndarray]:
    """Area (positive) and centroid of a simple polygon (shoelace formula)."""
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6.0 * area)
    return abs(float(area)), centroid


def rasterize(pts: np.ndarray, size: int | tuple[int, int], supersample: int = 4) -> np.ndarray:
    """Coverage of the polygon `pts` (image coordinates) per pixel, float32 in [0, 1], shape (H, W)."""
    w, h = (size, size) if isinstance(size, int) else size
    canvas = Image.new("L", (w * supersample, h * supersample), 0)
    _fill(canvas, pts, supersample, 255)
    if supersample > 1:
        canvas = canvas.resize((w, h), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _fill(canvas: Image.Image, pts: np.ndarray, supersample: int, fill: int | RGB) -> None:
    # PIL fills a pixel from its integer coordinate, the centre of our [k, k+1) pixel is k + 0.5.
    scaled = pts * supersample - 0.5
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in scaled], fill=fill)


def _rgb(colour: str | Sequence[int]) -> RGB:
    if isinstance(colour, str):
        try:
            return COLOUR_RGB[colour]
        except KeyError:
            raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}") from None
    r, g, b = (int(v) for v in colour)
    return (r, g, b)


def draw_shape(
    shape: str,
    fg: str | Sequence[int],
    bg: str | Sequence[int],
    size: int,
    cx: float,
    cy: float,
    radius: float,
    angle: float = 0.0,
    supersample: int = 4,
) -> Image.Image:
    """An RGB picture of `shape` in colour `fg` on `bg` (names or RGB), anti-aliased by drawing at
    `supersample` times the size and box-filtering down (exact area coverage, no ringing)."""
    big = Image.new("RGB", (size * supersample, size * supersample), _rgb(bg))
    _fill(big, shape_polygon(shape, cx, cy, radius, angle), supersample, _rgb(fg))
    if supersample > 1:
        big = big.resize((size, size), Image.Resampling.BOX)
    return big


def random_placement(rng: np.random.Generator, size: int, shape: str,
                     radius_range: tuple[float, float] = RADIUS_RANGE) -> tuple[float, float, float, float]:
    """A random (cx, cy, radius, angle) that keeps the whole shape inside a `size` picture; the radius
    (of the circumscribed circle) is drawn from `radius_range` times the size."""
    radius = float(rng.uniform(*radius_range)) * size
    # 1.5 px at least: PIL's polygon fill can reach half a (supersampled) pixel past the outline, and
    # the outermost ring of pixels must stay pure background.
    margin = max(1.5, 0.02 * size)
    lo, hi = radius + margin, size - radius - margin
    cx, cy = (float(v) for v in rng.uniform(lo, hi, size=2))
    if shape == "heart":
        angle = float(rng.uniform(-HEART_TILT, HEART_TILT))
    else:
        angle = float(rng.uniform(0.0, ROTATION_PERIOD[shape]))
    return cx, cy, radius, angle


@dataclass
class Sample:
    """One training picture and what it shows (`shape`/`fg` are None for a bare background)."""

    image: Image.Image
    caption: str
    shape: str | None
    fg: str | None
    bg: str
    # (cx, cy, radius, angle) of the shape, None for a bare background.
    placement: tuple[float, float, float, float] | None = None


def _check_split_and_shapes(split: str, shapes: Sequence[str]) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    unknown = [s for s in shapes if s not in ALL_SHAPES]
    if unknown or not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {list(ALL_SHAPES)}, got {list(shapes)}")


def _pick_pair(rng: np.random.Generator, split: str, shapes: Sequence[str]) -> tuple[str, str]:
    if split == "held_out":
        pairs = sorted((c, s) for c, s in HELD_OUT_PAIRS if s in shapes)
        if not pairs:
            raise ValueError(f"no held-out pair uses any of the shapes {list(shapes)}")
        return pairs[int(rng.integers(len(pairs)))]
    # Shape first, then a colour allowed with it, so every shape is equally frequent.
    shape = shapes[int(rng.integers(len(shapes)))]
    colours = [c for c in COLOURS if split == "all" or (c, shape) not in HELD_OUT_PAIRS]
    return colours[int(rng.integers(len(colours)))], shape


def make_sample(
    rng: np.random.Generator, size: int = 128, split: str = "train", shapes: Sequence[str] = SHAPES,
    radius_range: tuple[float, float] = RADIUS_RANGE, placement: PlacementFn | None = None,
) -> Sample:
    """One random picture and caption; the whole result depends only on the state of `rng`.

    `placement` replaces the default draw of place, size and angle (`random_placement` with
    `radius_range`), e.g. to keep some places out of a training set; the rest is drawn as always."""
    _check_split_and_shapes(split, shapes)
    forms = list(CAPTION_FORMS)
    form = forms[int(rng.choice(len(forms), p=list(CAPTION_FORMS.values())))]
    if split == "held_out" and form == "background":
        form = "full"  # the held-out split exists to test pairs, an empty picture tests nothing
    if form == "background":
        bg = COLOURS[int(rng.integers(len(COLOURS)))]
        image = Image.new("RGB", (size, size), COLOUR_RGB[bg])
        return Sample(image, caption_for(None, None, bg), None, None, bg)
    fg, shape = _pick_pair(rng, split, shapes)
    others = [c for c in COLOURS if c != fg]
    bg = others[int(rng.integers(len(others)))]
    where = placement(rng, size, shape) if placement else random_placement(rng, size, shape, radius_range)
    image = draw_shape(shape, fg, bg, size, *where)
    return Sample(image, caption_for(fg, shape, bg, form), shape, fg, bg, where)


def iterate_dataset(
    seed: int, size: int = 128, split: str = "train", shapes: Sequence[str] = SHAPES
) -> Iterator[Sample]:
    """An endless, deterministic stream of samples: the same seed gives the same stream."""
    rng = np.random.default_rng(seed)
    while True:
        yield make_sample(rng, size, split, shapes)


def make_batch(
    rng: np.random.Generator,
    n: int,
    size: int = 128,
    split: str = "train",
    shapes: Sequence[str] = SHAPES,
    radius_range: tuple[float, float] = RADIUS_RANGE,
) -> tuple[np.ndarray, list[str]]:
    """`n` samples as a uint8 array [n, size, size, 3] and their captions."""
    samples = [make_sample(rng, size, split, shapes, radius_range) for _ in range(n)]
    images = np.stack([np.asarray(s.image, dtype=np.uint8) for s in samples])
    return images, [s.caption for s in samples]


def batch_to_tensor(images: np.ndarray | Sequence[Image.Image]) -> torch.Tensor:
    """uint8 pictures ([n, H, W, 3] array or PIL images) as a float32 NCHW tensor in [-1, 1]."""
    import torch  # imported here so that drawing and judging do not pay for loading torch

    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected pictures shaped [n, H, W, 3], got {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
