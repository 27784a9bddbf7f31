"""Check LoRA training on the embedded default model: teach it a shape it never saw, judge the result.

The default model knows circles, squares, triangles and stars; `data.py` can also draw hearts and
crescents, which it never trained on. `write_shape_folder` makes a small training folder of one of those
(pictures + same-named .txt captions, the layout a user gives train-lora), and `judge_prompts` generates
fixed-seed pictures and asks the judge (with the extra shapes as candidates) what they show. Used by
tests/test_lora.py and scripts/eval_lora.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.training.default_model.data import (
    COLOURS,
    DEFAULT_MODEL_RADIUS_RANGE,
    SHAPES,
    caption_for,
    draw_shape,
    random_placement,
)
from modules.training.default_model.judge import Verdict, judge

# (shape colour, background) pairs the check asks for: some in the training folder, some not.
EVAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "blue"), ("yellow", "black"), ("green", "white"), ("purple", "yellow"), ("white", "red"),
    ("blue", "orange"), ("orange", "green"), ("black", "white"),
)


def write_shape_folder(folder: Path, shape: str, count: int = 32, size: int = 128, seed: int = 0,
                       radius_range: tuple[float, float] = DEFAULT_MODEL_RADIUS_RANGE) -> list[str]:
    """`count` pictures of `shape` in random colours and places, with captions "a red heart on a blue
    background" in same-named .txt files; returns the captions. The shapes' size range defaults to the
    one the default model learnt: a LoRA then teaches the new shape, not also a new size."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for i in range(count):
        fg = COLOURS[int(rng.integers(len(COLOURS)))]
        others = [c for c in COLOURS if c != fg]
        bg = others[int(rng.integers(len(others)))]
        image = draw_shape(shape, fg, bg, size, *random_placement(rng, size, shape, radius_range))
        caption = caption_for(fg, shape, bg)
        image.save(folder / f"{shape}-{i:03d}.png")
        (folder / f"{shape}-{i:03d}.txt").write_text(caption, encoding="utf-8")
        captions.append(caption)
    return captions


@dataclass
class Judged:
    prompt: str
    seed: int
    verdict: Verdict
    fg: str
    bg: str
    expected_shape: str

    @property
    def shape_ok(self) -> bool:
        return self.verdict.shape is not None and self.verdict.shape == self.expected_shape

    @property
    def colour_ok(self) -> bool:
        """The shape, in the asked shape colour (the default model's known gap is the background)."""
        return self.shape_ok and self.verdict.foreground == self.fg

    @property
    def all_ok(self) -> bool:
        return self.colour_ok and self.verdict.background == self.bg


def prompt_for(fg: str, shape: str, bg: str, suffix: str = "") -> str:
    return caption_for(fg, shape, bg) + (f" {suffix}" if suffix else "")


def judge_prompts(registry: ModelRegistry, shape: str, pairs: Sequence[tuple[str, str]], seeds: Sequence[int],
                  lora_dir: Path | None = None, tag: str = "", steps: int = 20, cfg_scale: float = 7.0,
                  all_shapes: Sequence[str] = (*SHAPES, "heart", "crescent")) -> list[Judged]:
    """One picture per (pair, seed) for "a FG SHAPE on a BG background TAG", judged among `all_shapes`."""
    results = []
    for fg, bg in pairs:
        prompt = prompt_for(fg, shape, bg, tag)
        for seed in seeds:
            params = Txt2ImgParams(prompt=prompt, seed=seed, steps=steps, cfg_scale=cfg_scale, save=False)
            image = generate(params, registry, lora_dir=lora_dir).images[0]
            results.append(Judged(prompt, seed, judge(image, shapes=all_shapes), fg, bg, shape))
    return results


def rates(results: Sequence[Judged]) -> tuple[float, float, float]:
    """Shares of pictures with the asked shape; with it in the asked colour; and on the asked background too."""
    n = max(1, len(results))
    return (sum(r.shape_ok for r in results) / n, sum(r.colour_ok for r in results) / n,
            sum(r.all_ok for r in results) / n)
