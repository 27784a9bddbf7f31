"""The default model's synthetic data and the judge that reads pictures back.

The judge must be right on the generator's own pictures, clean and degraded (generated pictures are
never perfect), before its verdicts on a trained model's output can mean anything.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from modules.training.default_model.data import (
    ALL_SHAPES,
    COLOUR_RGB,
    COLOURS,
    EXTRA_SHAPES,
    HELD_OUT_PAIRS,
    SHAPES,
    Sample,
    batch_to_tensor,
    caption_for,
    draw_shape,
    iterate_dataset,
    make_batch,
    make_sample,
    random_placement,
)
from modules.training.default_model.judge import Verdict, judge

PAIRS = [(fg, bg) for fg, bg in itertools.product(COLOURS, COLOURS) if fg != bg]


def degrade(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A slight blur then Gaussian noise (sigma 8 per channel), like an imperfect generated picture."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    noisy = blurred + rng.normal(0.0, 8.0, blurred.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def judge_every_combination(
    size: int, noisy: bool, shapes: tuple[str, ...], judged: tuple[str, ...], seed: int
) -> dict[str, np.ndarray]:
    """Per shape: the share of pictures with (background, foreground, shape) right, one picture per
    (shape, fg, bg) combination at a random placement."""
    rng = np.random.default_rng(seed)
    right: dict[str, list[tuple[bool, bool, bool]]] = {s: [] for s in shapes}
    for shape in shapes:
        for fg, bg in PAIRS:
            image = draw_shape(shape, fg, bg, size, *random_placement(rng, size, shape))
            v = judge(degrade(image, rng) if noisy else image, judged)
            right[shape].append((v.background == bg, v.foreground == fg, v.shape == shape))
    return {s: np.mean(r, axis=0) for s, r in right.items()}


# ---- data ---------------------------------------------------------------------------------------


def test_vocabulary() -> None:
    assert SHAPES == ("circle", "square", "triangle", "star")
    assert set(EXTRA_SHAPES) == {"heart", "crescent"} and not set(EXTRA_SHAPES) & set(SHAPES)
    assert len(COLOURS) == 8 and set(COLOUR_RGB) == set(COLOURS)
    rgb = np.array(list(COLOUR_RGB.values()), dtype=float)
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)[np.triu_indices(len(rgb), 1)]
    assert gaps.min() > 75  # orange/yellow, the closest pair, is ~80 apart
    assert all(c in COLOURS and s in SHAPES for c, s in HELD_OUT_PAIRS)


def test_captions() -> None:
    assert caption_for("red", "circle", "blue") == "a red circle on a blue background"
    assert caption_for("orange", "star", "white", "article") == "an orange star"
    assert caption_for("green", "square", "black", "bare") == "green square"
    assert caption_for(None, None, "orange") == "an orange background"


def test_same_seed_same_pictures() -> None:
    a = [next(s) for s in [iterate_dataset(7, 48)] for _ in range(6)]
    b = [next(s) for s in [iterate_dataset(7, 48)] for _ in range(6)]
    c = [next(s) for s in [iterate_dataset(8, 48)] for _ in range(6)]
    for x, y in zip(a, b, strict=True):
        assert x.caption == y.caption and x.placement == y.placement
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert [x.caption for x in a] != [x.caption for x in c]
    images_a, captions_a = make_batch(np.random.default_rng(3), 4, 32)
    images_b, captions_b = make_batch(np.random.default_rng(3), 4, 32)
    assert captions_a == captions_b and np.array_equal(images_a, images_b)


def _check_sample(s: Sample, size: int) -> None:
    arr = np.asarray(s.image)
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
    bg = np.array(COLOUR_RGB[s.bg])
    if s.shape is None:
        assert s.fg is None and s.caption == caption_for(None, None, s.bg)
        assert (arr == bg).all()
        return
    assert s.fg != s.bg
    # Colourless forms ("a star", "a star on a blue background") leave the shape's colour open.
    assert f"{s.fg} {s.shape}" in s.caption or s.caption.startswith(f"a {s.shape}")
    assert s.caption.endswith("background") == (s.bg in s.caption)
    # Fully inside: the outermost ring of pixels is pure background.
    ring = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    assert (ring == bg).all()
    assert (np.abs(arr.astype(int) - COLOUR_RGB[s.fg]).sum(-1) == 0).any()


def test_train_split_never_shows_held_out_pairs() -> None:
    stream = iterate_dataset(0, 32, "train")
    samples = [next(stream) for _ in range(1500)]
    for s in samples[:200]:
        _check_sample(s, 32)
    pairs = Counter((s.fg, s.shape) for s in samples if s.shape)
    assert not set(pairs) & HELD_OUT_PAIRS
    assert len(pairs) == len(COLOURS) * len(SHAPES) - len(HELD_OUT_PAIRS)
    # Caption forms: mostly the full one, about a tenth bare backgrounds.
    full = sum(s.caption.endswith("background") and s.shape is not None for s in samples) / len(samples)
    empty = sum(s.shape is None for s in samples) / len(samples)
    assert 0.5 < full < 0.7 and 0.05 < empty < 0.15
    assert Counter(s.shape for s in samples if s.shape).keys() == set(SHAPES)


def test_held_out_and_extra_splits() -> None:
    rng = np.random.default_rng(1)
    held = [make_sample(rng, 32, "held_out") for _ in range(60)]
    assert {(s.fg, s.shape) for s in held} == set(HELD_OUT_PAIRS)
    extra = [make_sample(rng, 64, "train", EXTRA_SHAPES) for _ in range(40)]
    assert {s.shape for s in extra} == set(EXTRA_SHAPES) | {None}
    for s in extra:
        _check_sample(s, 64)
    with pytest.raises(ValueError):
        make_sample(rng, 32, "held_out", EXTRA_SHAPES)
    with pytest.raises(ValueError):
        make_sample(rng, 32, "validation")


def test_batch_to_tensor() -> None:
    images, captions = make_batch(np.random.default_rng(0), 3, 40)
    assert images.shape == (3, 40, 40, 3) and images.dtype == np.uint8 and len(captions) == 3
    x = batch_to_tensor(images)
    assert tuple(x.shape) == (3, 3, 40, 40) and x.dtype.is_floating_point
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert float(x[0, 0, 0, 0]) == pytest.approx(images[0, 0, 0, 0] / 127.5 - 1.0)
    y = batch_to_tensor([Image.fromarray(im) for im in images])
    assert bool((x == y).all())


# ---- judge ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 64])
@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "noisy"])
def test_judge_reads_every_combination(size: int, noisy: bool) -> None:
    # Measured on 5x this (seeds 0-4): 100% background, foreground and shape in every setting.
    accuracy = judge_every_combination(size, noisy, SHAPES, SHAPES, seed=size + noisy)
    for shape, (bg, fg, sh) in accuracy.items():
        if noisy:
            assert min(bg, fg, sh) >= 0.95, (shape, bg, fg, sh)
        else:
            assert bg >= 0.99 and fg >= 0.99 and sh >= 0.97, (shape, bg, fg, sh)


def test_judge_reads_extra_shapes() -> None:
    # Heart and crescent among all six candidates, on the harder setting (noisy, 64 px).
    accuracy = judge_every_combination(64, True, EXTRA_SHAPES, ALL_SHAPES, seed=11)
    for shape, (bg, fg, sh) in accuracy.items():
        assert min(bg, fg, sh) >= 0.95, (shape, bg, fg, sh)


def test_judge_verdict_details() -> None:
    image = draw_shape("star", "orange", "yellow", 96, 50.0, 44.0, 30.0, 10.0)
    v = judge(image)
    assert v.matches(fg="orange", shape="star", bg="yellow") and v.matches()
    assert not v.matches(shape="circle") and not v.matches(bg="orange")
    assert v.caption == "an orange star on a yellow background"
    assert set(v.shape_scores) == set(SHAPES) and v.shape_score == max(v.shape_scores.values())
    assert v.solidity is not None and v.solidity < 0.75
    assert v.centroid == pytest.approx((50.0, 44.0), abs=0.5)
    assert v.area == pytest.approx(1.4695 * 30.0**2, rel=0.03)
    assert judge(np.asarray(image)) == v  # numpy input, and deterministic


def test_judge_without_shape() -> None:
    v = judge(Image.new("RGB", (64, 64), COLOUR_RGB["purple"]))
    assert (v.background, v.foreground, v.shape) == ("purple", None, None)
    assert v.matches(bg="purple") and not v.matches(fg="purple")
    # A speck under 1.5% of the picture is not a shape.
    speck = draw_shape("circle", "white", "black", 64, 32.0, 32.0, 3.5)
    assert judge(speck).shape is None
    with pytest.raises(ValueError):
        judge(Image.new("RGB", (24, 24)))
    with pytest.raises(ValueError):
        judge(Image.new("RGB", (64, 64)), shapes=["hexagon"])


def test_judge_takes_the_largest_blob() -> None:
    image = draw_shape("triangle", "red", "blue", 128, 45.0, 45.0, 35.0, 0.0)
    ImageDraw.Draw(image).ellipse([100, 100, 118, 118], fill=COLOUR_RGB["green"])
    v = judge(image, ALL_SHAPES)
    assert isinstance(v, Verdict)
    assert (v.background, v.foreground, v.shape) == ("blue", "red", "triangle")
