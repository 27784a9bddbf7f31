"""Train the embedded default model (models/Stable-diffusion/default-shapes.safetensors + .yaml).

    python scripts/train_default_model.py [--out models/Stable-diffusion] [--seed 1234] [--unet-steps 1700]

    python scripts/train_default_model.py --finetune-decoder FILE [--out DIR]   (stage 4 alone)

Deterministic from the seed (same thread count, same machine kind). The defaults are the recipe of
the shipped file: about 70 minutes on 2 CPU cores with AVX-512 BF16 (stage 3 in bf16 mixed precision;
`--precision fp32` where bf16 is slow; `--cpu-attention math` is ~8% faster but rounds differently,
so it gives another model). Not part of the test run: the tests use the shipped file.
See README, "The embedded default model".
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.training.default_model.train import (  # noqa: E402
    TrainSettings,
    finetune_decoder_of,
    train_default_model,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/Stable-diffusion"))
    parser.add_argument("--name", default="default-shapes")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="continue from an earlier result (keeps its autoencoder, skips stage 1)")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="take only the autoencoder of an earlier result; train the rest from scratch")
    parser.add_argument("--finetune-decoder", type=Path, default=None, metavar="FILE",
                        help="run stage 4 alone (the decoder) on a finished result; the rest stays as it is")
    parser.add_argument("--work-dir", type=Path, default=None, help="where snapshots are written every 1000 steps")
    for f in dataclasses.fields(TrainSettings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    start = time.time()
    if args.finetune_decoder is not None:
        if args.init_from is not None or args.vae_from is not None:
            parser.error("--finetune-decoder takes a finished result; it cannot be combined with --init-from or --vae-from")
        path = finetune_decoder_of(args.finetune_decoder, args.out, settings, args.name)
    else:
        path = train_default_model(args.out, settings, args.name, args.work_dir, args.init_from, args.vae_from)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
