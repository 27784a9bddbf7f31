"""Does the default ControlNet put the map's shape where the map puts it, in the prompt's colours?

Cases: canny maps of the four shapes at places and sizes training never drew (`placement.
held_out_placement`), each taken from a picture in colours of its own, with a prompt naming another
colour pair (a held-in pair of the base model) and a generation seed far from anything used in
training. Each is generated with the default model and the ControlNet (DPM++ 2M, 20 steps, CFG 7,
weight 1, Balanced) and judged: the judge's shape is the map's, the centroid of what it reads as the
shape lies within 10% of the side of the map's centre, and the shape colour and background are the
prompt's. The same prompts without the ControlNet give the base model's figures for contrast, and
weight 0 must give exactly the picture without it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modules.devices import DevicePolicy
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.training.controlnet.dataset import canny_map
from modules.training.controlnet.generate import canny_unit, controlnet_registry, txt2img
from modules.training.controlnet.placement import held_out_placement
from modules.training.default_model.data import COLOURS, HELD_OUT_PAIRS, SHAPES, caption_for, draw_shape
from modules.training.default_model.judge import judge

log = logging.getLogger(__name__)

EVAL_SEED = 90_210  # the maps' draws; training draws from its own seed's streams
FIRST_GENERATION_SEED = 500_000
CENTRE_TOLERANCE = 0.10  # of the image side
SIZE = 128


@dataclass(frozen=True)
class MapCase:
    shape: str
    cx: float
    cy: float
    radius: float
    angle: float
    map_colours: tuple[str, str]  # the picture the map was taken from
    fg: str
    bg: str
    seed: int

    @property
    def prompt(self) -> str:
        return caption_for(self.fg, self.shape, self.bg, "full")

    def picture(self) -> Image.Image:
        """The picture the map is detected from (in colours of its own, not the prompt's)."""
        return draw_shape(self.shape, *self.map_colours, SIZE, self.cx, self.cy, self.radius, self.angle)

    def edge_map(self) -> np.ndarray:
        return canny_map(self.picture())


def _pair(rng: np.random.Generator, shape: str, exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    fgs = [c for c in COLOURS if (c, shape) not in HELD_OUT_PAIRS and c not in exclude]
    fg = fgs[int(rng.integers(len(fgs)))]
    bgs = [c for c in COLOURS if c != fg]
    return fg, bgs[int(rng.integers(len(bgs)))]


def map_cases(count: int) -> list[MapCase]:
    """`count` cases, the four shapes in turn; the same list on every call."""
    cases = []
    for i in range(count):
        rng = np.random.default_rng((EVAL_SEED, i))
        shape = SHAPES[i % len(SHAPES)]
        cx, cy, radius, angle = held_out_placement(rng, SIZE, shape)
        map_colours = _pair(rng, shape)
        fg, bg = _pair(rng, shape)
        cases.append(MapCase(shape, cx, cy, radius, angle, map_colours, fg, bg, FIRST_GENERATION_SEED + i))
    return cases


@dataclass
class Judged:
    case: MapCase
    shape: str | None
    centre: tuple[float, float] | None
    centre_error: float | None  # pixels
    shape_ok: bool
    place_ok: bool  # shape right and centre within tolerance
    colours_ok: bool  # shape colour and background both the prompt's


def judge_case(case: MapCase, image: Image.Image) -> Judged:
    v = judge(image)
    error = math.hypot(v.centroid[0] - case.cx, v.centroid[1] - case.cy) if v.centroid else None
    shape_ok = v.shape == case.shape
    place_ok = shape_ok and error is not None and error <= CENTRE_TOLERANCE * SIZE
    return Judged(case, v.shape, v.centroid, error, shape_ok, place_ok,
                  v.foreground == case.fg and v.background == case.bg)


def params_for(case: MapCase) -> Txt2ImgParams:
    return Txt2ImgParams(prompt=case.prompt, steps=20, cfg_scale=7.0, sampler="DPM++ 2M", seed=case.seed,
                         width=SIZE, height=SIZE, save=False)


def rates(rows: list[Judged]) -> dict[str, float]:
    n = max(1, len(rows))
    return {"place": sum(r.place_ok for r in rows) / n, "shape": sum(r.shape_ok for r in rows) / n,
            "colours": sum(r.colours_ok for r in rows) / n}


def evaluate_file(path: Path, base: Path, count: int = 48, save_images: Path | None = None,
                  weight_zero_checks: int = 4) -> dict[str, object]:
    """Judge the ControlNet `path` with the checkpoint `base`; prints and returns the figures."""
    registry = ModelRegistry([base.parent], [], DevicePolicy.cpu(), HashCache(None))
    registry.load(registry.find(base.name))
    controlnets = controlnet_registry(path)
    with_cn, without, identical, maps_exact = [], [], 0, 0
    for i, case in enumerate(map_cases(count)):
        result = txt2img(registry, controlnets, params_for(case), canny_unit(path.stem, case.picture()))
        image = result.images[0]
        detected = np.asarray(result.detected_maps[0].convert("L")) if result.detected_maps else None
        maps_exact += int(detected is not None and np.array_equal(detected, case.edge_map()))
        plain = txt2img(registry, controlnets, params_for(case)).images[0]
        with_cn.append(judge_case(case, image))
        without.append(judge_case(case, plain))
        if i < weight_zero_checks:
            zero = txt2img(registry, controlnets, params_for(case), canny_unit(path.stem, case.picture(), 0.0))
            identical += int(np.array_equal(np.asarray(zero.images[0]), np.asarray(plain)))
        if save_images is not None:
            save_images.mkdir(parents=True, exist_ok=True)
            image.save(save_images / f"{i:03d}-{case.shape}-cn.png")
            plain.save(save_images / f"{i:03d}-{case.shape}-plain.png")
            Image.fromarray(case.edge_map()).save(save_images / f"{i:03d}-{case.shape}-map.png")
        r = with_cn[-1]
        log.info("%02d %-8s map at (%.0f, %.0f) r %.0f | judged %s at %s err %s | colours %s | %s", i, case.shape,
                 case.cx, case.cy, case.radius, r.shape,
                 None if r.centre is None else f"({r.centre[0]:.0f}, {r.centre[1]:.0f})",
                 None if r.centre_error is None else f"{r.centre_error:.1f}", r.colours_ok, case.prompt)
    result = {"file": str(path), "count": count, "with_controlnet": rates(with_cn), "without": rates(without),
              "weight_zero_identical": f"{identical}/{min(count, weight_zero_checks)}",
              "detected_map_is_the_training_map": f"{maps_exact}/{count}",
              "per_shape": {s: rates([r for r in with_cn if r.case.shape == s]) for s in SHAPES},
              "cases": [asdict(r) for r in with_cn]}
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1))
    return result
