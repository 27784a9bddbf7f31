"""Prompt adherence of the embedded default model (or any checkpoint of the shapes vocabulary).

    python scripts/eval_default_model.py [--ckpt models/Stable-diffusion/default-shapes.safetensors]
        [--seeds 2] [--every 1] [--steps 20] [--cfg 7] [--sampler "DPM++ 2M"]

Prints accuracy tables (shape colour, shape, background) for held-in prompts and for the colour-shape
pairs held out of training, judged by the transparent judge in modules/training/default_model/judge.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.devices import DevicePolicy  # noqa: E402
from modules.models.discovery import HashCache  # noqa: E402
from modules.models.registry import ModelRegistry  # noqa: E402
from modules.training.default_model.evaluate import accuracy_table, cases, evaluate, summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=ROOT / "models/Stable-diffusion/default-shapes.safetensors")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (1000, 1001, ...)")
    parser.add_argument("--every", type=int, default=1, help="keep every n-th held-in combination")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--sampler", default="DPM++ 2M", help="the UI's default (Karras sigmas)")
    parser.add_argument("--show-failures", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (fp32 either way)")
    args = parser.parse_args()

    registry = ModelRegistry([args.ckpt.parent], [], DevicePolicy.from_flags(args.device, precision="full"),
                             HashCache(None))
    registry.load(registry.find(args.ckpt.name))
    seeds = range(1000, 1000 + args.seeds)
    start = time.time()
    for title, held_out in (("Held-in prompts", False), ("Held-out colour-shape pairs", True)):
        outcomes = evaluate(registry, cases(held_out, seeds, args.every if not held_out else 1), args.steps,
                            args.cfg, args.sampler)
        s = summary(outcomes)
        print(f"\n## {title}: {len(outcomes)} images, {args.sampler}, {args.steps} steps, CFG {args.cfg}")
        print(f"shape colour {100 * s['colour']:.1f}%, shape {100 * s['shape']:.1f}%, "
              f"background {100 * s['background']:.1f}%\n")
        print(accuracy_table(outcomes, "shape"))
        print()
        print(accuracy_table(outcomes, "fg"))
        if args.show_failures:
            for o in outcomes:
                if not (o.fg_ok and o.shape_ok and o.bg_ok):
                    print(f"  seed {o.case.seed}: {o.case.prompt!r} -> {o.verdict}")
    print(f"\n({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
