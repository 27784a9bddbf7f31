"""Running a LoRA training for the UI and the command line: the base model, a background job, stop.

Training gets its own copy of the base checkpoint (adapters are injected into it), so generation
with the loaded model goes on unchanged while it runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modules.errors import UserError
from modules.models.discovery import CheckpointInfo
from modules.models.load import SDModel, load_checkpoint
from modules.training.lora.train import LoraTrainSettings, TrainProgress, TrainResult, train_lora

if TYPE_CHECKING:
    from modules.context import AppContext

log = logging.getLogger(__name__)


def load_base_model(ctx: AppContext, checkpoint: str | None = None) -> tuple[SDModel, CheckpointInfo]:
    """A fresh copy of `checkpoint` (a name from the list), else of the loaded or default checkpoint."""
    registry = ctx.registry
    info = registry.find(checkpoint) if checkpoint else (registry.current_info or registry.default_checkpoint())
    if info is None:
        raise UserError("No checkpoint to train on: put one into models/Stable-diffusion or pass --ckpt.")
    log.info("Loading %s for training", info.name)
    return load_checkpoint(info.path, ctx.policy), info


@dataclass
class TrainJob:
    """One training running in a background thread; the UI polls it."""

    settings: LoraTrainSettings
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    latest: TrainProgress | None = None
    samples: list[Path] = field(default_factory=list)
    result: TrainResult | None = None
    error: str | None = None
    status: str = "loading the base model"

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def _on_progress(self, report: TrainProgress) -> None:
        self.latest = report
        self.samples += report.samples
        self.status = "training"

    def _run(self, ctx: AppContext, checkpoint: str | None) -> None:
        try:
            model, info = load_base_model(ctx, checkpoint)
            if self.stop.is_set():
                self.status = "stopped before training began"
                return
            self.status = "preparing pictures"
            self.result = train_lora(model, self.settings, ctx.paths.lora_dir,
                                     sample_dir=ctx.outdir / "lora-samples" / self.settings.name,
                                     base_name=info.stem, base_hash=ctx.registry.short_hash(info),
                                     progress=self._on_progress, stop=self.stop)
            self.status = "stopped" if self.result.stopped else "finished"
        except UserError as exc:
            self.error, self.status = str(exc), "failed"
        except Exception as exc:  # noqa: BLE001 - a bug, but the page must hear of it; the log has the traceback
            log.exception("LoRA training failed")
            self.error, self.status = f"{type(exc).__name__}: {exc} (an internal error; the console has the details)", "failed"
        finally:
            self.done.set()


def start_training(ctx: AppContext, settings: LoraTrainSettings, checkpoint: str | None = None) -> TrainJob:
    """Check the settings and start training in a background thread."""
    job = TrainJob(settings.validate())
    thread = threading.Thread(target=job._run, args=(ctx, checkpoint), name=f"train-lora-{settings.name}", daemon=True)
    thread.start()
    return job
