"""Token merging (the token_merging_ratio settings): how much faster a step gets, and what it does to pictures.

    ./venv/bin/python scripts/benchmark_tome.py [--ratios 0,0.3,0.5] [--sizes 512] [--steps 3]
        [--precision fp32] [--workdir DIR] [--seeds 2] [--skip-speed] [--skip-pictures]

Speed: full-size SD 1.5 with random weights (the checkpoint scripts/benchmark.py builds, reused from
--workdir), the product's generate with Euler and CFG 7, seconds per step (the first step dropped) at each
ratio, and the ratio to no merging, all in one process and one run.
Pictures: the embedded default model at its native size on the colour-shape pairs held out of its
training, with seeds neither its training nor its tuning used (5000, 5001, ...): the judge's accuracy
(shape colour, shape, background) at each ratio, and how far the pixels move from the unmerged picture.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modules.devices import DevicePolicy, configure_threads  # noqa: E402
from modules.models.discovery import HashCache  # noqa: E402
from modules.models.registry import DEFAULT_MODEL_STEM, ModelRegistry  # noqa: E402
from modules.processing.control import GenerationControl, ProgressState  # noqa: E402
from modules.processing.params import Txt2ImgParams  # noqa: E402
from modules.processing.run import generate  # noqa: E402
from modules.sampling.samplers import SamplerSettings  # noqa: E402
from modules.training.default_model.evaluate import cases, evaluate, summary  # noqa: E402

log = logging.getLogger("benchmark_tome")
DEFAULT_MODEL = REPO / "models" / "Stable-diffusion" / f"{DEFAULT_MODEL_STEM}.safetensors"
HELD_OUT_SEEDS = 5000  # first seed of the picture check: not used by training or tuning


@cache
def _benchmark_module() -> Any:  # scripts/benchmark.py builds the random SD 1.5 checkpoint
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_seconds(registry: ModelRegistry, size: int, steps: int, ratio: float) -> float:
    bench = _benchmark_module()
    stamps: list[float] = []

    def on_step(state: ProgressState) -> None:
        stamps.append(time.perf_counter())

    params = Txt2ImgParams(prompt=bench.PROMPT, negative_prompt=bench.NEGATIVE, sampler="Euler", steps=steps + 1,
                           cfg_scale=bench.CFG, seed=bench.SEED, width=size, height=size, save=False)
    generate(params, registry, None, GenerationControl(on_step=on_step), sampling=SamplerSettings(token_merging=ratio))
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def speed(args: argparse.Namespace, ratios: list[float]) -> None:
    bench = _benchmark_module()
    workdir = args.workdir or Path(tempfile.gettempdir()) / "sd-webui-benchmark"
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = bench.make_checkpoint(workdir, 0)
    policy = DevicePolicy.from_flags(None, precision="full" if args.precision == "fp32" else args.precision)
    registry = ModelRegistry([checkpoint.parent], [], policy, HashCache(None))
    registry.load(registry.add_file(checkpoint))
    print(f"\n## Speed: SD 1.5 (random weights), Euler, CFG 7, {policy.describe()}\n")
    print("| size | ratio | s/step | vs ratio 0 |\n|---|---|---|---|")
    for size in args.sizes:
        base = None
        for ratio in ratios:
            seconds = step_seconds(registry, size, args.steps, ratio)
            base = base or seconds
            print(f"| {size} | {ratio:g} | {seconds:.2f} | {base / seconds:.2f}x faster |", flush=True)


def pictures(args: argparse.Namespace, ratios: list[float]) -> None:
    registry = ModelRegistry([DEFAULT_MODEL.parent], [], DevicePolicy.from_flags(None, precision="full"),
                             HashCache(None))
    registry.load(registry.find(DEFAULT_MODEL.name))
    items = cases(True, range(HELD_OUT_SEEDS, HELD_OUT_SEEDS + args.seeds))
    print(f"\n## Pictures: the embedded model, {len(items)} held-out colour-shape prompts × seeds, DPM++ 2M, 20 steps\n")
    print("| ratio | shape colour | shape | background | mean pixel change | s/image |\n|---|---|---|---|---|---|")
    reference: list[np.ndarray] = []
    for ratio in ratios:
        settings = replace(SamplerSettings(), token_merging=ratio)
        start = time.perf_counter()
        outcomes = evaluate(registry, items, sampling=settings)
        seconds = (time.perf_counter() - start) / len(items)
        images = [np.asarray(generate(Txt2ImgParams(prompt=o.case.prompt, seed=o.case.seed, save=False), registry,
                                      sampling=settings).images[0], dtype=np.float32) for o in outcomes[:8]]
        reference = reference or images
        change = float(np.mean([np.abs(a - b).mean() for a, b in zip(images, reference, strict=True)]))
        s = summary(outcomes)
        print(f"| {ratio:g} | {s['colour']:.0%} | {s['shape']:.0%} | {s['background']:.0%} | {change:.1f}/255 | "
              f"{seconds:.2f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="0,0.3,0.5")
    parser.add_argument("--sizes", default="512", type=lambda text: [int(x) for x in text.split(",")])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (one more is run first)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per held-out prompt")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-pictures", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    configure_threads(args.threads)
    ratios = [float(x) for x in args.ratios.split(",")]
    if not args.skip_speed:
        speed(args, ratios)
    if not args.skip_pictures:
        pictures(args, ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
