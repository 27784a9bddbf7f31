"""The Train tab: train a LoRA on a folder of captioned pictures, watch loss and sample pictures, stop.

Training runs in a background thread (`modules.training.lora.run`) on its own copy of the chosen
checkpoint; the Start handler streams its progress to the page. One training at a time per server:
pressing Start while one runs shows that one's progress. Stop finishes the current step and saves.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError
from modules.training.lora.defaults import FULL_SIZE, LoraDefaults, defaults_for_file
from modules.training.lora.run import TrainJob, start_training
from modules.training.lora.train import LR_SCHEDULES, UNET_TARGETS, LoraTrainSettings
from modules.ui.common import checkpoint_names, error_html, info_html, selected_checkpoint

POLL_SECONDS = 1.0


def model_defaults(ctx: AppContext, checkpoint: str | None) -> LoraDefaults:
    """The training defaults for a checkpoint of the list (the usual values if it cannot be read)."""
    try:
        info = ctx.registry.find(checkpoint) if checkpoint else ctx.registry.default_checkpoint()
        return defaults_for_file(info.path) if info else FULL_SIZE
    except (UserError, OSError, ValueError):
        return FULL_SIZE


def _defaults_note(defaults: LoraDefaults) -> str:
    return f"Defaults for this checkpoint: {defaults.why}. Change any of them below."


def _eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_html(job: TrainJob) -> str:
    """ "Step 120/1000 · 12% · loss 0.1234 (avg 0.1301) · lr 1.0e-04 · ETA 0:05:10" with a bar."""
    report = job.latest
    name = html.escape(job.settings.name)
    if report is None:
        return f'<div class="progress-line" id="train_progress_text">{name}: {html.escape(job.status)}…</div>'
    percent = int(100 * report.step / max(1, report.total))
    parts = [f"{name}: step {report.step}/{report.total}", f"{percent}%",
             f"loss {report.loss:.4f} (avg {report.average_loss:.4f})", f"lr {report.learning_rate:.1e}",
             f"elapsed {_eta(report.elapsed)}"]
    if job.running:
        parts.append(f"ETA {_eta(report.eta)}")
    return (f'<div class="progress-line" id="train_progress_text">{" · ".join(parts)}</div>'
            f'<div class="progress-bar"><div style="width:{percent}%"></div></div>')


def result_html(job: TrainJob) -> str:
    if job.error:
        return error_html(job.error)
    result = job.result
    if result is None or result.path is None:
        return info_html(f"Training {job.settings.name} {job.status}; no LoRA file was written.")
    verb = f"stopped after {result.steps} steps" if result.stopped else f"finished {result.steps} steps"
    return info_html(f"Training {verb} in {_eta(result.seconds)}, loss {result.loss:.4f}. Saved {result.path}: "
                     f"use it with <lora:{job.settings.name}:1> in a prompt.")


def _gallery(job: TrainJob) -> list[tuple[str, str]]:
    # Files are NAME-stepNNNNNN-I.png: label each with its step.
    labels = []
    for path in job.samples:
        _, step, index = path.stem.rsplit("-", 2)
        labels.append((str(path), f"step {int(step.removeprefix('step'))} #{index}"))
    return labels


def build_train_tab(ctx: AppContext) -> None:
    """The tab's components, built inside an open `gr.Tab` (or Blocks) context, and their events."""
    start_defaults = model_defaults(ctx, selected_checkpoint(ctx))  # shown before starting; follow the checkpoint
    current: dict[str, TrainJob | None] = {"job": None}  # this server's training (one at a time)

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id="train_settings"):
            gr.Markdown("Train a **LoRA** on your own pictures: put them in a folder, each with an optional "
                        "caption in a `.txt` file of the same name. The result goes to "
                        f"`{ctx.paths.lora_dir}` and is used with `<lora:NAME:1>` in a prompt.")
            checkpoint = gr.Dropdown(checkpoint_names(ctx), value=lambda: selected_checkpoint(ctx),
                                     label="Base checkpoint", elem_id="train_checkpoint")
            defaults_note = gr.Markdown(_defaults_note(start_defaults), elem_id="train_defaults")
            data_dir = gr.Textbox(label="Data folder", placeholder="/path/to/pictures", elem_id="train_data_dir")
            with gr.Row():
                name = gr.Textbox(label="LoRA name", placeholder="my-style", elem_id="train_name")
                default_caption = gr.Textbox(label="Caption for pictures without a .txt",
                                             placeholder="(the name)", elem_id="train_default_caption")
            with gr.Row():
                rank = gr.Slider(1, 128, value=start_defaults.rank, step=1, label="Rank (dim)", elem_id="train_rank")
                alpha = gr.Number(value=start_defaults.alpha, label="Alpha", minimum=0.01, elem_id="train_alpha")
            with gr.Row():
                lr = gr.Number(value=start_defaults.learning_rate, label="Learning rate", elem_id="train_lr")
                steps = gr.Number(value=start_defaults.steps, precision=0, minimum=1, label="Steps",
                                  elem_id="train_steps")
                batch_size = gr.Slider(1, 64, value=start_defaults.batch_size, step=1, label="Batch size",
                                       elem_id="train_batch_size")
            with gr.Row():
                resolution = gr.Slider(0, 2048, value=0, step=8, label="Resolution", info="0 = the model's size",
                                       elem_id="train_resolution")
                bucket = gr.Checkbox(False, label="Aspect-ratio buckets", info="instead of square centre crops",
                                     elem_id="train_bucket")
                seed = gr.Number(value=1234, precision=0, label="Seed", elem_id="train_seed")
            with gr.Row():
                train_te = gr.Checkbox(False, label="Train the text encoder too", elem_id="train_text_encoder")
                te_lr = gr.Number(value=0.0, label="Text encoder learning rate", info="0 = the same",
                                  elem_id="train_te_lr")
            with gr.Row():
                sample_every = gr.Number(value=100, precision=0, minimum=0, label="Sample pictures every N steps",
                                         info="0 = never", elem_id="train_sample_every")
                save_every = gr.Number(value=0, precision=0, minimum=0, label="Save every N steps",
                                       info="0 = at the end", elem_id="train_save_every")
            sample_prompts = gr.Textbox(label="Sample prompts (one per line)", lines=2,
                                        placeholder="(the first caption)", elem_id="train_sample_prompts")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    warmup = gr.Number(value=0, precision=0, minimum=0, label="Warm-up steps", elem_id="train_warmup")
                    min_snr = gr.Number(value=start_defaults.min_snr_gamma, minimum=0, label="Min-SNR gamma",
                                        info="0 = off; 5 is usual", elem_id="train_min_snr")
                    checkpointing = gr.Dropdown(["Automatic", "On", "Off"], value="Automatic",
                                                label="Gradient checkpointing", info="Automatic: on for CUDA",
                                                elem_id="train_gradient_checkpointing")
                with gr.Row():
                    schedule = gr.Dropdown(list(LR_SCHEDULES), value=start_defaults.lr_schedule,
                                           label="Learning-rate schedule",
                                           info="cosine: down to 0 at the last step", elem_id="train_lr_schedule")
                    layers = gr.Dropdown(list(UNET_TARGETS), value="transformer", label="UNet layers",
                                         info="transformer: all linear layers of the attention blocks (kohya's "
                                              "default); attention: q/k/v/out only", elem_id="train_unet_layers")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train_start")
                stop = gr.Button("Stop", elem_id="train_stop")
        with gr.Column(scale=1, elem_id="train_results"):
            progress = gr.HTML("", elem_id="train_progress")
            samples = gr.Gallery(label="Sample pictures", columns=4, height=420, interactive=False,
                                 object_fit="contain", elem_id="train_samples")
            message = gr.HTML("", elem_id="train_message")

    inputs = [checkpoint, data_dir, name, default_caption, rank, alpha, lr, steps, batch_size, resolution, bucket,
              seed, train_te, te_lr, sample_every, save_every, sample_prompts, warmup, min_snr, checkpointing,
              schedule, layers]

    def on_start(ckpt: str | None, folder: str, lora_name: str, caption: str, *values: Any
                 ) -> Iterator[tuple[Any, Any, Any]]:
        job = current["job"]
        if job is None or not job.running:
            try:
                settings = make_settings(folder, lora_name, caption, *values)
                job = current["job"] = start_training(ctx, settings, ckpt or None)
            except UserError as exc:
                yield gr.skip(), gr.skip(), error_html(str(exc))
                return
            note = ""
        else:
            note = info_html(f"Training {job.settings.name} is already running: showing its progress.")
        shown = -1
        while job.running:
            gallery = _gallery(job) if len(job.samples) != shown else gr.skip()
            shown = len(job.samples)
            yield progress_html(job), gallery, note
            time.sleep(POLL_SECONDS)
        yield progress_html(job), _gallery(job), result_html(job)

    def on_stop() -> str:
        job = current["job"]
        if job is None or not job.running:
            return info_html("No training is running.")
        job.stop.set()
        return info_html("Stopping after the current step; what was learnt so far is saved.")

    def on_checkpoint(ckpt: str | None) -> list[Any]:
        chosen = model_defaults(ctx, ckpt)
        return [_defaults_note(chosen), chosen.rank, chosen.alpha, chosen.learning_rate, chosen.steps,
                chosen.batch_size, chosen.lr_schedule, chosen.min_snr_gamma]

    checkpoint.change(on_checkpoint, inputs=checkpoint,
                      outputs=[defaults_note, rank, alpha, lr, steps, batch_size, schedule, min_snr],
                      concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")
    start.click(on_start, inputs=inputs, outputs=[progress, samples, message], concurrency_id="train",
                concurrency_limit=1, api_visibility="undocumented", show_progress="minimal")
    stop.click(on_stop, inputs=None, outputs=message, concurrency_limit=None, show_progress="hidden",
               api_visibility="undocumented")


def make_settings(folder: str, name: str, caption: str, rank: float, alpha: float, lr: float, steps: float,
                  batch_size: float, resolution: float, bucket: bool, seed: float, train_te: bool, te_lr: float,
                  sample_every: float, save_every: float, sample_prompts: str, warmup: float, min_snr: float,
                  checkpointing: str, lr_schedule: str = "constant", unet_layers: str = "transformer",
                  ) -> LoraTrainSettings:
    """The tab's values as checked settings (a UserError says what to fix)."""
    if not (folder or "").strip():
        raise UserError("Give the folder with the training pictures.")
    return LoraTrainSettings(
        data_dir=Path(folder.strip()), name=name or "", default_caption=(caption or "").strip(), rank=int(rank),
        alpha=float(alpha or 0), learning_rate=float(lr or 0), steps=int(steps or 0), batch_size=int(batch_size),
        resolution=int(resolution or 0), bucket=bool(bucket), seed=int(seed or 0), train_text_encoder=bool(train_te),
        text_encoder_lr=float(te_lr or 0), sample_every=int(sample_every or 0), save_every=int(save_every or 0),
        sample_prompts=tuple(line.strip() for line in (sample_prompts or "").splitlines() if line.strip()),
        warmup_steps=int(warmup or 0), min_snr_gamma=float(min_snr or 0),
        gradient_checkpointing={"On": True, "Off": False}.get(checkpointing), lr_schedule=lr_schedule,
        unet_targets=unet_layers,
    ).validate()
