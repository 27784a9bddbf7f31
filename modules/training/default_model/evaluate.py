"""Prompt adherence of a model on the synthetic-shapes vocabulary, judged by `judge.judge`.

Generates one picture per (prompt, seed) with fixed seeds through the normal processing layer and
counts how often the judge finds the asked foreground colour, shape and background colour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.sampling.samplers import SamplerSettings
from modules.training.default_model.data import COLOURS, HELD_OUT_PAIRS, SHAPES, caption_for
from modules.training.default_model.judge import judge


@dataclass(frozen=True)
class Case:
    fg: str
    shape: str
    bg: str
    seed: int

    @property
    def prompt(self) -> str:
        return caption_for(self.fg, self.shape, self.bg, "full")


@dataclass
class Outcome:
    case: Case
    fg_ok: bool
    shape_ok: bool
    bg_ok: bool
    verdict: str


def cases(held_out: bool, seeds: Iterable[int], every: int = 1) -> list[Case]:
    """Every (fg, shape, bg) with fg != bg — held-in or held-out pairs — for each seed.

    `every` > 1 keeps every n-th combination (a quicker, still balanced sample)."""
    combos = [(fg, shape, bg) for shape in SHAPES for fg in COLOURS for bg in COLOURS
              if fg != bg and ((fg, shape) in HELD_OUT_PAIRS) == held_out]
    combos = combos[::every]
    return [Case(fg, shape, bg, seed) for seed in seeds for fg, shape, bg in combos]


def evaluate(registry: ModelRegistry, items: list[Case], steps: int = 20, cfg_scale: float = 7.0,
             sampler: str = "DPM++ 2M", sampling: SamplerSettings | None = None) -> list[Outcome]:
    """Each case generated and judged; `sampling`: sampler settings (token merging, ...) other than the defaults."""
    outcomes = []
    for case in items:
        params = Txt2ImgParams(prompt=case.prompt, steps=steps, cfg_scale=cfg_scale, sampler=sampler,
                               seed=case.seed, save=False)
        image = generate(params, registry, sampling=sampling).images[0]
        v = judge(image)
        outcomes.append(Outcome(case, v.foreground == case.fg, v.shape == case.shape, v.background == case.bg,
                                f"{v.foreground} {v.shape} on {v.background}"))
    return outcomes


def accuracy_table(outcomes: list[Outcome], by: str) -> str:
    """Rows grouped by `by` ("shape", "fg" or "bg"), plus a total: percentages of colour, shape, background."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[getattr(o.case, by)].append(o)
    lines = [f"| {by} | n | shape colour | shape | background |", "|---|---|---|---|---|"]
    for key in sorted(groups) + ["all"]:
        rows = outcomes if key == "all" else groups[key]
        n = len(rows)
        lines.append(f"| {key} | {n} | {100 * sum(o.fg_ok for o in rows) / n:.1f}% | "
                     f"{100 * sum(o.shape_ok for o in rows) / n:.1f}% | {100 * sum(o.bg_ok for o in rows) / n:.1f}% |")
    return "\n".join(lines)


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    n = max(1, len(outcomes))
    return {"colour": sum(o.fg_ok for o in outcomes) / n, "shape": sum(o.shape_ok for o in outcomes) / n,
            "background": sum(o.bg_ok for o in outcomes) / n}
