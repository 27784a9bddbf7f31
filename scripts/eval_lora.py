"""Teach the embedded default model a new shape with a LoRA and measure it with the judge.

    python scripts/eval_lora.py [--shape heart] [--pictures 32] [--steps 500] [--seeds 3]

Writes a training folder of the shape (data.py's drawing, captions "a red heart on a blue background"),
trains a LoRA on a fresh copy of the model exactly as `webui.py train-lora` does, then generates every
evaluation prompt at fixed seeds without the LoRA and with it at weight 1, and prints how
often the judge sees the shape (and the asked colours). The model is DEFAULT_MODEL_PATH or the shipped one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from modules.devices import DevicePolicy  # noqa: E402
from modules.models.discovery import HashCache  # noqa: E402
from modules.models.load import load_checkpoint  # noqa: E402
from modules.models.registry import DEFAULT_MODEL_STEM, ModelRegistry  # noqa: E402
from modules.training.default_model.lora_check import (  # noqa: E402
    EVAL_PAIRS,
    judge_prompts,
    rates,
    write_shape_folder,
)
from modules.training.lora.train import LoraTrainSettings, train_lora  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "Stable-diffusion" / f"{DEFAULT_MODEL_STEM}.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("DEFAULT_MODEL_PATH", SHIPPED)))
    parser.add_argument("--shape", default="heart", choices=("heart", "crescent"))
    parser.add_argument("--pictures", type=int, default=32)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-text-encoder", action="store_true")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0)
    parser.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    parser.add_argument("--unet-layers", default="transformer", choices=("transformer", "attention"))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per evaluation prompt")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument("--work", type=Path, default=None, help="keep the folder and LoRA here")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or auto; on CUDA the model is fp16 and the LoRA trains in mixed "
                             "precision with gradient checkpointing, as webui.py train-lora does there")
    args = parser.parse_args()
    policy = DevicePolicy.cpu() if args.device == "cpu" else DevicePolicy.from_flags(args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    work = args.work or Path(tempfile.mkdtemp(prefix="eval-lora-"))
    data, lora_dir = work / "data", work / "Lora"
    write_shape_folder(data, args.shape, args.pictures)
    settings = LoraTrainSettings(data_dir=data, name=f"{args.shape}-lora", rank=args.rank, alpha=args.alpha,
                                 learning_rate=args.lr, steps=args.steps, batch_size=args.batch_size,
                                 train_text_encoder=args.train_text_encoder, min_snr_gamma=args.min_snr_gamma,
                                 lr_schedule=args.lr_schedule, unet_targets=args.unet_layers)
    start = time.time()
    result = train_lora(load_checkpoint(args.model, policy), settings, lora_dir)
    train_seconds = time.time() - start

    registry = ModelRegistry([args.model.parent], [], policy, HashCache(None))
    registry.load(registry.find(args.model.name))
    seeds = list(range(100, 100 + args.seeds))
    runs = {
        "base": judge_prompts(registry, args.shape, EVAL_PAIRS, seeds, steps=args.sample_steps),
        "lora 1": judge_prompts(registry, args.shape, EVAL_PAIRS, seeds, lora_dir, f"<lora:{settings.name}:1>",
                                steps=args.sample_steps),
    }
    print(f"\nmodel {args.model.name}; {args.pictures} pictures of a {args.shape}; {result.steps} steps, batch "
          f"{args.batch_size}, rank {args.rank}, lr {args.lr}: trained in {train_seconds:.0f}s, final loss {result.loss:.4f}")
    for label, judged in runs.items():
        shape_rate, colour_rate, all_rate = rates(judged)
        seen: dict[str | None, int] = {}
        for j in judged:
            seen[j.verdict.shape] = seen.get(j.verdict.shape, 0) + 1
        print(f"{label:25s} {args.shape} seen {shape_rate:5.0%}, in the asked colour {colour_rate:5.0%}, "
              f"also on the asked background {all_rate:5.0%}  (shapes seen: {seen})")
    for j in runs["lora 1"]:
        if not j.colour_ok:
            print(f"  miss: {j.prompt!r} seed {j.seed} → {j.verdict.caption}")
    print(f"files under {work}")


if __name__ == "__main__":
    main()
