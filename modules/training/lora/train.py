"""Train a LoRA on a folder of captioned pictures: the loop, sample pictures, saving, progress, stop.

Adapters come from `peft` (LoRA on the UNet's attention projections to_q/to_k/to_v/to_out.0, and on
the text encoders' q/k/v/out projections when asked); the base weights stay frozen. Steps:
1. read the folder, size each picture (square crop or aspect-ratio bucket), encode it once with the VAE;
2. encode the captions once (or every step, when the text encoder trains too);
3. per step: a batch of one size, noise at a random timestep, the UNet's prediction against the noise
   (or v), AdamW on the adapters; on CUDA in mixed precision, optionally with gradient checkpointing;
4. every `sample_every` steps pictures from fixed prompts and seeds, every `save_every` steps (and at
   the end, or at a stop) the LoRA file, written atomically in kohya's naming.
The model passed in gets adapters injected: give it a freshly loaded copy, not the one generation uses.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.errors import UserError
from modules.models.load import SDModel
from modules.processing.run import decode_latents
from modules.sampling.noise import initial_noise
from modules.sampling.samplers import make_scheduler, scheduler_step
from modules.text.conditioning import PromptEncoder, chunk_ids, sdxl_time_ids, tokenize_prompt
from modules.training.lora import data as D
from modules.training.lora.export import addnet_hashes, kohya_state_dict, save_lora_file

log = logging.getLogger(__name__)

# Which UNet layers get adapters. "attention": the attention projections only; "transformer": every
# linear layer of the attention (transformer) blocks, also their projections in and out and the
# feed-forward, as kohya's sd-scripts does by default: more capacity for new shapes and styles.
UNET_TARGETS = {
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    "transformer": ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"),
}
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LR_SCHEDULES = ("constant", "cosine")
_BAD_NAME_CHARS = set('/\\:*?"<>|') | {"\0"}


@dataclass(frozen=True)
class LoraTrainSettings:
    """What the user sets; `validate()` checks it once (the UI and the CLI build the same object)."""

    data_dir: Path
    name: str
    rank: int = 16
    alpha: float = 8.0
    learning_rate: float = 1e-4
    train_text_encoder: bool = False
    text_encoder_lr: float = 0.0  # 0: the UNet's learning rate
    steps: int = 1000
    batch_size: int = 1
    resolution: int = 0  # 0: the model's native size
    bucket: bool = False  # aspect-ratio buckets instead of square centre crops
    seed: int = 1234
    default_caption: str = ""  # for pictures without a .txt; "" uses the LoRA's name
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine": down to 0 at the last step
    unet_targets: str = "transformer"  # a key of UNET_TARGETS
    min_snr_gamma: float = 0.0  # 0: off; 5 is the usual value
    sample_every: int = 0  # 0: no sample pictures
    sample_prompts: tuple[str, ...] = ()  # default: the first caption
    sample_steps: int = 20
    sample_seed: int = 42
    save_every: int = 0  # 0: only at the end (and at a stop)
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on the CPU
    save_dtype: str = "fp16"  # fp16, bf16 or fp32

    def validate(self) -> LoraTrainSettings:
        name = self.name.strip()
        if not name or name.startswith(".") or any(c in _BAD_NAME_CHARS for c in name):
            raise UserError(f"{self.name!r} cannot be a LoRA name: use letters, digits, '-' or '_' "
                            "(it becomes the file name and the <lora:NAME> tag).")
        checks = [(self.rank >= 1, "Rank must be 1 or more."), (self.alpha > 0, "Alpha must be above 0."),
                  (self.learning_rate > 0, "The learning rate must be above 0."),
                  (self.text_encoder_lr >= 0, "The text encoder learning rate cannot be negative."),
                  (self.steps >= 1, "Train for at least 1 step."), (self.batch_size >= 1, "Batch size must be 1 or more."),
                  (self.resolution == 0 or (64 <= self.resolution <= 4096 and self.resolution % 8 == 0),
                   "Resolution must be 0 (the model's size) or a multiple of 8 from 64 to 4096."),
                  (self.warmup_steps >= 0 and self.sample_every >= 0 and self.save_every >= 0,
                   "Warm-up, sample and save intervals cannot be negative."),
                  (self.min_snr_gamma >= 0, "Min-SNR gamma cannot be negative."),
                  (self.lr_schedule in LR_SCHEDULES, f"Learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}."),
                  (self.unet_targets in UNET_TARGETS, f"UNet layers must be one of {', '.join(UNET_TARGETS)}."),
                  (1 <= self.sample_steps <= 150, "Sample steps must be 1 to 150."),
                  (self.save_dtype in _SAVE_DTYPES, f"Save precision must be one of {', '.join(_SAVE_DTYPES)}.")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return replace(self, name=name, data_dir=Path(self.data_dir).expanduser(),
                       sample_prompts=tuple(p for p in self.sample_prompts if p.strip()))


_SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TrainProgress:
    """Reported after every step."""

    step: int
    total: int
    loss: float
    average_loss: float  # smoothed over the last ~50 steps
    learning_rate: float
    elapsed: float
    samples: list[Path] = field(default_factory=list)  # pictures written at this step
    saved: Path | None = None  # the LoRA file, when it was (re)written at this step

    @property
    def eta(self) -> float:
        return self.elapsed / max(1, self.step) * (self.total - self.step)


@dataclass
class TrainResult:
    path: Path | None  # None when stopped before the first step finished
    steps: int
    stopped: bool
    loss: float
    seconds: float
    samples: list[Path] = field(default_factory=list)


ProgressCallback = Callable[[TrainProgress], None]


# ------------------------------------------------------------------------------------------ data

@dataclass
class _Prepared:
    latents: list[torch.Tensor]  # per picture [4, h, w], scaled, float32 on the CPU
    caption_index: list[int]  # per picture, its caption in `captions`
    captions: list[str]
    sizes: list[tuple[int, int]]  # per picture (width, height)
    groups: dict[tuple[int, int], list[int]]


@torch.no_grad()
def _prepare(model: SDModel, items: list[D.TrainItem], resolution: int, bucket: bool) -> _Prepared:
    buckets = D.bucket_sizes(resolution) if bucket else None
    vae_param = next(model.vae.parameters())
    captions = list(dict.fromkeys(item.caption for item in items))
    prepared = _Prepared([], [], captions, [], {})
    for index, item in enumerate(items):
        picture = D.load_picture(item.path)
        width, height = D.target_size(picture, resolution, buckets)
        x = torch.from_numpy(D.to_array(D.fit(picture, width, height)))[None]
        # The distribution's mean: the same latents every run (kohya samples; the difference is noise).
        latent = model.vae.encode(x.to(vae_param.device, vae_param.dtype)).latent_dist.mean
        prepared.latents.append((latent[0].float() * model.arch.scale_factor).cpu())
        prepared.caption_index.append(captions.index(item.caption))
        prepared.sizes.append((width, height))
        prepared.groups.setdefault((width, height), []).append(index)
    return prepared


def encode_captions(model: SDModel, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context [B, 77, D], pooled or None) for training: each caption's first 75 tokens, through the
    same layer and final norm as generation uses, with gradients when the encoders train."""
    contexts, pooled = [], None
    for spec, encoder in zip(model.arch.text_encoders, model.text_encoders, strict=True):
        param = next(encoder.parameters())
        rows = [chunk_ids(tokenize_prompt(caption)[0][0], spec.pad_with_eos)[0] for caption in captions]
        out = encoder(input_ids=torch.tensor(rows, device=param.device), output_hidden_states=True)
        z = out.hidden_states[-spec.layer_from_end]
        if spec.final_layer_norm:
            z = getattr(encoder, "text_model", encoder).final_layer_norm(z)
        contexts.append(z)
        if spec.projection:
            pooled = out.text_embeds
    return torch.cat(contexts, dim=-1), pooled


# ------------------------------------------------------------------------------------------ adapters

def inject_adapters(model: SDModel, settings: LoraTrainSettings) -> list[dict[str, object]]:
    """peft LoRA layers in the UNet (and text encoders); returns the optimiser's parameter groups."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(settings.seed)  # the adapters' initial down weights
    groups: list[dict[str, object]] = []
    parts = [(model.unet, UNET_TARGETS[settings.unet_targets], settings.learning_rate)]
    if settings.train_text_encoder:
        te_lr = settings.text_encoder_lr or settings.learning_rate
        parts += [(encoder, TEXT_TARGETS, te_lr) for encoder in model.text_encoders]
    for module, targets, lr in parts:
        module.requires_grad_(False)
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(targets),
                            lora_dropout=0.0, init_lora_weights=True)
        inject_adapter_in_model(config, module)
        params = [p for n, p in module.named_parameters() if "lora_" in n]
        for p in params:
            # Adapters train in fp32 even when the frozen base runs in half precision.
            p.data = p.data.float()
            p.requires_grad_(True)
        groups.append({"params": params, "lr": lr, "base_lr": lr})
    return groups


# ------------------------------------------------------------------------------------------ samples

@torch.no_grad()
def sample_images(model: SDModel, prompts: Sequence[str], seed: int, size: tuple[int, int], steps: int = 20,
                  cfg_scale: float = 7.0) -> list[Image.Image]:
    """Pictures from the model as it is now (adapters included), Euler, fixed seeds: seed + i for prompt i."""
    device = next(model.unet.parameters()).device
    dtype = next(model.unet.parameters()).dtype
    width, height = size
    encoder = PromptEncoder(model.arch.text_encoders, model.text_encoders)
    images = []
    for i, prompt in enumerate(prompts):
        cond, uncond = encoder.encode_for_cfg([prompt], [""])
        scheduler = make_scheduler("Euler", "Automatic", model.arch.scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        latents = initial_noise([seed + i], (4, height // 8, width // 8), device, torch.float32)
        latents = latents * scheduler.init_noise_sigma
        context = torch.cat([uncond.context, cond.context]).to(device, dtype)
        added = None
        if cond.pooled is not None and uncond.pooled is not None:
            time_ids = sdxl_time_ids((height, width), (0, 0), (height, width)).to(device, dtype)[None].expand(2, -1)
            added = {"text_embeds": torch.cat([uncond.pooled, cond.pooled]).to(device, dtype), "time_ids": time_ids}
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            out = model.unet(x.to(dtype), t, encoder_hidden_states=context, added_cond_kwargs=added).sample.float()
            uncond_out, cond_out = out.chunk(2)
            latents = scheduler_step(scheduler, uncond_out + cfg_scale * (cond_out - uncond_out), t, latents)
        images += decode_latents(model, latents)
    return images


# ------------------------------------------------------------------------------------------ training

def _metadata(settings: LoraTrainSettings, model: SDModel, prepared: _Prepared, step: int, started: float,
              resolution: int, base_name: str, base_hash: str, mixed: str, checkpointing: bool,
              data_dir: Path) -> dict[str, str]:
    family = model.arch.family
    version = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sdxl_refiner": "sdxl_refiner_v1-0"}
    architecture = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                    "sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}
    if family == "sd2" and model.arch.prediction_type == "v_prediction":
        architecture["sd2"] = "stable-diffusion-v2-768-v"
    tags: Counter[str] = Counter(t.strip() for c in (prepared.captions[i] for i in prepared.caption_index)
                                 for t in c.split(",") if t.strip())
    now = time.time()
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": str(settings.alpha),
        "ss_network_args": json.dumps({"unet_target_modules": list(UNET_TARGETS[settings.unet_targets])}),
        "ss_network_train_unet_only": str(not settings.train_text_encoder),
        "ss_learning_rate": str(settings.learning_rate),
        "ss_unet_lr": str(settings.learning_rate),
        "ss_text_encoder_lr": str((settings.text_encoder_lr or settings.learning_rate)
                                  if settings.train_text_encoder else 0.0),
        "ss_lr_scheduler": (settings.lr_schedule if settings.lr_schedule != "constant" or not settings.warmup_steps
                            else "constant_with_warmup"),
        "ss_lr_warmup_steps": str(settings.warmup_steps),
        "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01)",
        "ss_max_train_steps": str(settings.steps),
        "ss_steps": str(step),
        "ss_epoch": str(math.ceil(step * settings.batch_size / max(1, len(prepared.latents)))),
        "ss_batch_size_per_device": str(settings.batch_size),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": str(settings.bucket),
        "ss_bucket_info": json.dumps({f"{w}x{h}": len(ix) for (w, h), ix in prepared.groups.items()}),
        "ss_seed": str(settings.seed),
        "ss_min_snr_gamma": str(settings.min_snr_gamma) if settings.min_snr_gamma else "None",
        "ss_mixed_precision": mixed,
        "ss_gradient_checkpointing": str(checkpointing),
        "ss_num_train_images": str(len(prepared.latents)),
        "ss_tag_frequency": json.dumps({data_dir.name: dict(tags)}),
        "ss_sd_model_name": base_name,
        "ss_sd_model_hash": base_hash,
        "ss_base_model_version": version.get(family, family),
        "ss_v2": str(family == "sd2"),
        "ss_v_parameterization": str(model.arch.prediction_type == "v_prediction"),
        "ss_output_name": settings.name,
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(now),
        "ss_training_comment": "trained with this web UI's train-lora",
        "ss_training_settings": json.dumps({k: str(v) for k, v in asdict(settings).items()}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture.get(family, family)}/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": settings.name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
    }


def train_lora(model: SDModel, settings: LoraTrainSettings, lora_dir: Path, *, sample_dir: Path | None = None,
               base_name: str = "", base_hash: str = "", progress: ProgressCallback | None = None,
               stop: threading.Event | None = None) -> TrainResult:
    """Train and write `lora_dir/NAME.safetensors`; see the module docstring for the steps."""
    settings = settings.validate()
    if model.arch.is_inpainting:
        raise UserError("Train LoRAs on an ordinary checkpoint, not an inpainting one (its UNet takes a mask).")
    start = time.time()
    device = next(model.unet.parameters()).device
    dtype = next(model.unet.parameters()).dtype
    resolution = settings.resolution or model.arch.native_size
    items = D.scan_folder(settings.data_dir, settings.default_caption or settings.name)
    log.info("LoRA %s: %d pictures from %s, %d steps", settings.name, len(items), settings.data_dir, settings.steps)

    # 1-2. Pictures → latents once; captions → conditioning once unless the text encoder trains.
    prepared = _prepare(model, items, resolution, settings.bucket)
    groups = inject_adapters(model, settings)
    trainable = [p for g in groups for p in g["params"]]  # type: ignore[attr-defined]
    fixed_context: tuple[torch.Tensor, torch.Tensor | None] | None = None
    if not settings.train_text_encoder:
        with torch.no_grad():
            fixed_context = encode_captions(model, prepared.captions)

    checkpointing = settings.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device.type == "cuda"
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            for encoder in model.text_encoders:
                if hasattr(encoder, "activation_checkpointing_enable"):  # transformers ≥ 5 renamed it
                    encoder.activation_checkpointing_enable()
                else:
                    encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    half = dtype in (torch.float16, torch.bfloat16)
    mixed = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
    autocast = torch.autocast(device.type, dtype=dtype) if half else nullcontext()
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" else None

    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**model.arch.scheduler_config)
    alphas_cumprod = noise_scheduler.alphas_cumprod.float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)  # type: ignore[arg-type]
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    sample_prompts = list(settings.sample_prompts) or [prepared.captions[0]]
    first_size = prepared.sizes[0]
    lora_path = Path(lora_dir) / f"{settings.name}.safetensors"
    save_dtype = _SAVE_DTYPES[settings.save_dtype]

    def save(step: int) -> Path:
        state = kohya_state_dict(model, settings.alpha, save_dtype)
        metadata = _metadata(settings, model, prepared, step, start, resolution, base_name, base_hash, mixed,
                             checkpointing, settings.data_dir)
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(state)
        return save_lora_file(state, metadata, lora_path)

    def samples(step: int) -> list[Path]:
        model.unet.eval()
        images = sample_images(model, sample_prompts, settings.sample_seed, first_size, settings.sample_steps)
        model.unet.train()
        paths = []
        if sample_dir is not None:
            sample_dir.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                path = sample_dir / f"{settings.name}-step{step:06d}-{i}.png"
                image.save(path)
                paths.append(path)
        return paths

    # 3. The loop.
    model.unet.train()
    epoch: list[list[int]] = []
    step = 0
    average = 0.0
    loss_value = float("nan")
    all_samples: list[Path] = []
    saved: Path | None = None
    stopped = False
    for step in range(1, settings.steps + 1):
        if stop is not None and stop.is_set():
            stopped, step = True, step - 1
            break
        if not epoch:
            epoch = D.batches(prepared.groups, settings.batch_size, rng)
        batch = epoch.pop()
        latents = torch.stack([prepared.latents[i] for i in batch]).to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t.to(device))
        target = noise if model.arch.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise,
                                                                                                    t.to(device))
        captions = [prepared.caption_index[i] for i in batch]
        lr = _learning_rate(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr / settings.learning_rate
        with autocast:
            if fixed_context is not None:
                context = fixed_context[0][captions].to(device)
                pooled = fixed_context[1][captions].to(device) if fixed_context[1] is not None else None
            else:
                context, pooled = encode_captions(model, [prepared.captions[c] for c in captions])
            added = None
            if pooled is not None:
                w, h = prepared.sizes[batch[0]]
                time_ids = sdxl_time_ids((h, w), (0, 0), (h, w)).to(device)[None].expand(len(batch), -1)
                added = {"text_embeds": pooled, "time_ids": time_ids}
            pred = model.unet(noisy.to(dtype), t.to(device), encoder_hidden_states=context.to(dtype),
                              added_cond_kwargs=added).sample
        per_item = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if settings.min_snr_gamma:
            s = snr[t].to(device)
            weight = torch.clamp(s, max=settings.min_snr_gamma)
            per_item = per_item * weight / (s if model.arch.prediction_type == "epsilon" else s + 1)
        loss = per_item.mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise UserError(f"Training diverged at step {step} (loss {loss_value}); the file from the last save "
                            "is kept. Lower the learning rate and train again.")
        average = loss_value if step == 1 else average + (loss_value - average) / min(step, 50)
        report = TrainProgress(step, settings.steps, loss_value, average, lr, time.time() - start)
        if settings.sample_every and step % settings.sample_every == 0:
            report.samples = samples(step)
            all_samples += report.samples
        if (settings.save_every and step % settings.save_every == 0) or step == settings.steps:
            saved = report.saved = save(step)
        if step % 50 == 0 or step == settings.steps:
            log.info("LoRA %s step %d/%d loss %.4f (avg %.4f) lr %.2e, %.0fs", settings.name, step, settings.steps,
                     loss_value, average, lr, report.elapsed)
        if progress is not None:
            progress(report)
    if stopped and step > 0:
        saved = save(step)  # a stop keeps what was learnt so far, written as atomically as any save
        log.info("LoRA %s stopped at step %d; saved %s", settings.name, step, saved)
    model.unet.eval()
    return TrainResult(path=saved, steps=step, stopped=stopped, loss=average, seconds=time.time() - start,
                       samples=all_samples)


def _learning_rate(step: int, settings: LoraTrainSettings) -> float:
    if settings.warmup_steps and step <= settings.warmup_steps:
        return settings.learning_rate * step / settings.warmup_steps
    if settings.lr_schedule == "cosine":
        done = (step - 1 - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return settings.learning_rate
