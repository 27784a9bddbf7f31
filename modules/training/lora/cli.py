"""`python webui.py train-lora --data DIR --name NAME [options]`: train a LoRA from the command line.

The base model is `--ckpt` (or the default checkpoint), loaded as a separate copy for training. The
LoRA is written to models/Lora/NAME.safetensors under the data folder; its path is the only line on
stdout. Light at import (webui.py imports it for --help): torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.training.lora.train import LoraTrainSettings

log = logging.getLogger(__name__)

COMMAND = "train-lora"
_HELP = "train a LoRA on a folder of pictures (captions in .txt files beside them)"


def add_train_lora_parser(subparsers: argparse._SubParsersAction,
                          parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Add the `train-lora` sub-command; `parents` carry the global flags (--ckpt, --data-dir, --device...)."""
    parser = subparsers.add_parser(COMMAND, help=_HELP, description=_HELP + ". Writes models/Lora/NAME.safetensors.",
                                   parents=list(parents))
    g = parser.add_argument_group("train-lora options")
    g.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="folder of pictures (PNG/JPEG/WebP), each with an optional same-named .txt caption")
    g.add_argument("--name", required=True, help="LoRA name: the file name and the <lora:NAME> tag")
    g.add_argument("--default-caption", default="", metavar="TEXT",
                   help="caption for pictures without a .txt (default: the name)")
    g.add_argument("--rank", type=int, default=None, help="LoRA rank (network dim) (default: 16)")
    g.add_argument("--alpha", type=float, default=None,
                   help="LoRA alpha; the change is scaled by alpha/rank (default: 8; 16 for small models)")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: from the base model: 1e-4 for full-size SD 1.x/2.x/SDXL, "
                        "2e-3 for small models such as the embedded one)")
    g.add_argument("--train-text-encoder", action="store_true", help="train LoRA layers in the text encoder(s) too")
    g.add_argument("--text-encoder-lr", type=float, default=0.0, help="text encoder learning rate (default: --lr)")
    g.add_argument("--steps", type=int, default=None, help="training steps (default: 1000)")
    g.add_argument("--batch-size", type=int, default=None, help="pictures per step (default: 1; 8 for small models)")
    g.add_argument("--resolution", type=int, default=0,
                   help="training size in pixels (default: 0 = the model's native size)")
    g.add_argument("--bucket", action="store_true",
                   help="aspect-ratio buckets instead of square centre crops")
    g.add_argument("--seed", type=int, default=1234, help="seed (default: 1234)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps (default: 0)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                   help="learning rate after the warm-up: constant, or cosine down to 0 "
                        "(default: constant; cosine for small models)")
    g.add_argument("--unet-layers", choices=("transformer", "attention"), default="transformer",
                   help="UNet layers with adapters: every linear layer of the attention blocks (kohya's default), "
                        "or only the attention projections q/k/v/out (default: transformer)")
    g.add_argument("--min-snr-gamma", type=float, default=None,
                   help="min-SNR loss weighting, e.g. 5 (default: off; 5 for small models)")
    g.add_argument("--sample-every", type=int, default=0, metavar="N",
                   help="make sample pictures every N steps (default: 0 = never)")
    g.add_argument("--sample-prompt", action="append", default=[], metavar="TEXT",
                   help="prompt for the sample pictures; repeat for several (default: the first caption)")
    g.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="write the LoRA file every N steps too (default: only at the end)")
    ckpt = g.add_mutually_exclusive_group()
    ckpt.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
                      help="trade compute for memory (default: on for CUDA, off on the CPU)")
    ckpt.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    g.add_argument("--save-precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="precision of the saved weights (default: fp16)")
    parser.set_defaults(mode=COMMAND)
    return parser


# Flags whose default comes from the base model (modules/training/lora/defaults.py).
_TUNED_FLAGS = {"rank": "rank", "alpha": "alpha", "lr": "learning_rate", "steps": "steps",
                "batch_size": "batch_size", "lr_schedule": "lr_schedule", "min_snr_gamma": "min_snr_gamma"}


def settings_from_args(args: argparse.Namespace) -> tuple[LoraTrainSettings, set[str]]:
    """The settings from the flags (checked), and which of the model-dependent ones were given."""
    from modules.training.lora.train import LoraTrainSettings

    given = {field: getattr(args, flag) for flag, field in _TUNED_FLAGS.items() if getattr(args, flag) is not None}
    settings = LoraTrainSettings(
        data_dir=args.data, name=args.name, train_text_encoder=args.train_text_encoder,
        text_encoder_lr=args.text_encoder_lr, resolution=args.resolution, bucket=args.bucket, seed=args.seed,
        default_caption=args.default_caption, warmup_steps=args.warmup_steps, unet_targets=args.unet_layers,
        sample_every=args.sample_every, sample_prompts=tuple(args.sample_prompt), save_every=args.save_every,
        gradient_checkpointing=args.gradient_checkpointing, save_dtype=args.save_precision, **given,
    ).validate()
    return settings, set(given)


def run_train_lora(ctx: AppContext, args: argparse.Namespace) -> int:
    """Train; prints the LoRA file's path on stdout, progress on stderr. Ctrl-C stops and keeps what was learnt."""
    import signal
    import threading

    from tqdm import tqdm

    from modules.errors import UserError
    from modules.training.lora.defaults import defaults_for, with_defaults
    from modules.training.lora.run import load_base_model
    from modules.training.lora.train import TrainProgress, train_lora

    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        settings, given = settings_from_args(args)  # bad flags fail before any model is loaded
        model, info = load_base_model(ctx)
        defaults = defaults_for(model.arch)
        settings = with_defaults(settings, defaults, given).validate()
        log.info("Training defaults for %s: %s (lr %g, batch %d, %s, min-SNR %g; flags given override them)",
                 info.name, defaults.why, settings.learning_rate, settings.batch_size, settings.lr_schedule,
                 settings.min_snr_gamma)
        bar = tqdm(total=settings.steps, desc=f"train-lora {settings.name}", dynamic_ncols=True, file=sys.stderr)

        def on_progress(report: TrainProgress) -> None:
            bar.update(report.step - bar.n)
            bar.set_postfix(loss=f"{report.average_loss:.4f}", lr=f"{report.learning_rate:.1e}")
            for path in report.samples:
                log.info("sample picture: %s", path)

        stop = threading.Event()

        def on_interrupt(_signum: int, _frame: object) -> None:
            # The first Ctrl-C finishes the step and saves; a second one aborts at once.
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()
            log.warning("Stopping after this step and saving; press Ctrl-C again to abort without saving.")

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
        try:
            result = train_lora(model, settings, ctx.paths.lora_dir,
                                sample_dir=ctx.outdir / "lora-samples" / settings.name, base_name=info.stem,
                                base_hash=ctx.registry.short_hash(info), progress=on_progress, stop=stop)
        except KeyboardInterrupt:
            raise UserError("Interrupted; the LoRA file from the last save (if any) is kept.") from None
        finally:
            bar.close()
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        if result.path is None:
            raise UserError("Stopped before the first step finished; nothing was written.")
        log.info("LoRA %s: %d steps in %.0fs, loss %.4f → %s", settings.name, result.steps, result.seconds,
                 result.loss, result.path)
    print(result.path, file=real_stdout)
    real_stdout.flush()
    return 0
