"""Train the embedded default model's canny ControlNet (models/ControlNet/default-shapes-canny.safetensors
+ .yaml), or judge one.

    python scripts/train_default_controlnet.py [--out FILE] [--seed 1234] [--steps 1500]
    python scripts/train_default_controlnet.py --evaluate FILE [--count 48]

Training: the default model (--base) stays frozen; the ControlNet starts from its UNet's encoder and
learns from canny maps (OpenCV, thresholds 100/200, at 128 px) of pictures of one shape at random
places and sizes, except the held-out sizes and places (modules/training/controlnet/placement.py).
Deterministic from the seed (same thread count, same machine kind). See docs/default-controlnet.md.

Evaluation: canny maps of shapes at held-out sizes and places, generated with the default model and
the ControlNet (DPM++ 2M, 20 steps, CFG 7, weight 1, Balanced) and judged: the shape, its centre
within 10% of the side of the map's, and the prompt's colours; also weight 0 against no ControlNet.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.training.controlnet.train import DEFAULT_BASE, ControlSettings, train_default_controlnet  # noqa: E402

DEFAULT_OUT = Path("models/ControlNet/default-shapes-canny.safetensors")
HELP = {
    "seed": "seed of every random draw (pictures, batches, noise, the hint encoder's start)",
    "steps": "optimiser steps", "batch": "pictures per step", "lr": "peak learning rate (AdamW, cosine decay)",
    "warmup": "steps of linear warm-up", "dataset_size": "pictures drawn, mapped and encoded before training",
    "caption_dropout": "share of captions replaced by the empty one (for CFG)",
    "min_snr_gamma": "min-SNR loss weighting's gamma", "offset_noise": "offset noise, as the base model's",
    "augment": "'dihedral' (turn/mirror latent and map together) or 'none'",
    "precision": "'bf16' (autocast, fp32 weights) or 'fp32'", "threads": "torch threads (0: torch's default)",
    "timesteps": "'uniform' or 'high' (t / T = sqrt(u))", "log_every": "steps between progress lines", "time_limit": "stop after this many seconds (0: never; breaks determinism)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"file to write (default {DEFAULT_OUT})")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"base checkpoint (default {DEFAULT_BASE})")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="FILE",
                        help="judge the ControlNet FILE on held-out maps instead of training")
    parser.add_argument("--count", type=int, default=48, help="evaluation: number of maps (a multiple of 4)")
    parser.add_argument("--save-images", type=Path, default=None, help="evaluation: write the pictures here")
    for f in dataclasses.fields(ControlSettings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            help=f"{HELP.get(f.name, '')} (default {f.default})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.time()
    if args.evaluate is not None:
        from modules.training.controlnet.evaluate import evaluate_file

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)  # figures are reproducible for a given thread count
        evaluate_file(args.evaluate, args.base, args.count, args.save_images)
        return
    settings = ControlSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ControlSettings)})
    path = train_default_controlnet(args.out, settings, args.base)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
