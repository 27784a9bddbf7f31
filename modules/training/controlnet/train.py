"""Train a ControlNet for the embedded default model on canny maps of the synthetic shape pictures.

The base model (UNet, text encoder, autoencoder) stays frozen; only the ControlNet learns. Its encoder
starts as a copy of the UNet's and its zero convolutions at zero, so at step 0 it changes nothing and
the base model's pictures are where training starts from. The pictures are drawn, mapped and encoded
once (`dataset.build_dataset`), the captions' text embeddings computed once per distinct caption.
Deterministic from the seed (same thread count, same machine kind).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel

from modules.devices import DevicePolicy
from modules.models.load import SDModel, load_checkpoint
from modules.training.controlnet.dataset import build_dataset, hint_batch
from modules.training.controlnet.model import cldm_config, controlnet_from_unet, write_controlnet
from modules.training.controlnet.placement import train_placement
from modules.training.default_model.train import TrainSettings, _lr, _set_up_torch, _tokens, dihedral

log = logging.getLogger(__name__)

DEFAULT_BASE = Path("models/Stable-diffusion/default-shapes.safetensors")


@dataclass
class ControlSettings:
    seed: int = 1234
    # Many small steps rather than few large ones: the cost is linear in the batch on the CPU, and a
    # ControlNet's zero convolutions need steps, not samples, to open up (700 steps of 16 began to
    # follow the maps near step 300 and placed 65% of held-out shapes, 1400 of 8 placed 73%; see
    # docs/default-controlnet.md).
    steps: int = 2400
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 30
    # Pictures drawn, mapped and encoded before training; every step draws its batch from them
    # (turned and mirrored, each is eight pictures).
    dataset_size: int = 3000
    # Share of captions replaced by the empty one: the unconditional half of CFG gets the control too
    # ("Balanced"), so the ControlNet must also work without a prompt. Higher than the base model's
    # 0.1, as in ControlNet's own recipe, so that the map alone carries the place and shape.
    caption_dropout: float = 0.3
    min_snr_gamma: float = 5.0
    # How timesteps are drawn: "uniform" over all, or "high" (t / T = sqrt(u), density rising linearly
    # with the noise level): a picture's layout, which is all the map decides, is set at high noise.
    timesteps: str = "high"
    # The base model was trained with this offset noise; its ControlNet sees the same noise process.
    offset_noise: float = 0.1
    # "dihedral": each latent and its map turned by the same random multiple of 90° and mirrored at
    # random (captions say nothing of orientation): eight pictures from each one encoded.
    augment: str = "dihedral"
    # "bf16": ControlNet and UNet under bf16 autocast, weights and optimiser in fp32 (the base
    # trainer's setting: 1.8x faster on CPUs with AVX-512 BF16); "fp32" elsewhere.
    precision: str = "bf16"
    # One thread: on a CPU shared with other work, two threads of one process wait on each other
    # (measured here: a UNet step 4x slower with 2 threads than with 1 while others ran). The thread
    # count is part of what makes a run reproducible. 0: torch's default.
    threads: int = 1
    log_every: int = 50
    # Write `<out stem>-step<N>` beside the result every this many steps (0: never), to judge a run early.
    snapshot_every: int = 0
    # Stop after this many seconds (0: never); for quick experiments, breaks determinism.
    time_limit: float = 0.0


def _check(s: ControlSettings) -> None:
    if s.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {s.precision!r}")
    if s.timesteps not in ("uniform", "high"):
        raise ValueError(f"timesteps must be 'uniform' or 'high', got {s.timesteps!r}")
    if s.augment not in ("none", "dihedral"):
        raise ValueError(f"augment must be 'none' or 'dihedral', got {s.augment!r}")
    if s.steps < 1 or s.batch < 1 or s.dataset_size < 1 or s.lr <= 0:
        raise ValueError("steps, batch and dataset_size must be >= 1 and lr > 0")
    if not 0.0 <= s.caption_dropout <= 1.0:
        raise ValueError(f"caption_dropout must be within [0, 1], got {s.caption_dropout}")


@torch.no_grad()
def _contexts(text_encoder: torch.nn.Module, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings of the distinct captions (the last one the empty caption) and each caption's row."""
    distinct = sorted(set(captions)) + [""]
    index = {c: i for i, c in enumerate(distinct)}
    rows = [text_encoder(_tokens(distinct[i: i + 256])).last_hidden_state.float()
            for i in range(0, len(distinct), 256)]
    return torch.cat(rows), torch.tensor([index[c] for c in captions])


def draw_timesteps(how: str, n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    """`n` training timesteps in [0, total): uniform, or "high" (density rising linearly with t)."""
    if how == "uniform":
        return torch.randint(0, total, (n,), generator=gen)
    return (torch.rand(n, generator=gen).sqrt() * total).long().clamp(0, total - 1)


def train_controlnet(base: SDModel, s: ControlSettings,
                     snapshot: Callable[[ControlNetModel, int], None] | None = None) -> ControlNetModel:
    """Train and return a ControlNet for `base` (its modules are left exactly as they were);
    `snapshot(controlnet, step)` is called every `s.snapshot_every` steps."""
    _check(s)
    _set_up_torch(TrainSettings(threads=s.threads))
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    gen = torch.Generator().manual_seed(s.seed + 7)
    for module in (base.unet, base.vae, base.text_encoders[0]):
        module.requires_grad_(False).eval()
    cldm = cldm_config(base.arch.raw)
    controlnet = controlnet_from_unet(base.unet, cldm).train()
    size = base.arch.native_size
    scale = float(base.arch.raw["model"]["params"]["scale_factor"])

    start = time.time()
    data = build_dataset(base.vae, s.dataset_size, size, rng, train_placement, s.precision)
    contexts, caption_rows = _contexts(base.text_encoders[0], data.captions)
    empty_row = len(contexts) - 1
    log.info("data: %d pictures, %d distinct captions (%.0fs)", len(data.captions), empty_row, time.time() - start)

    sched = base.arch.scheduler_config
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, sched["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    loss_weight = torch.clamp(snr, max=s.min_snr_gamma) / snr  # min-SNR, epsilon target (as the base)
    params = [p for p in controlnet.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0, fused=True)

    start, running = time.time(), 0.0
    for step in range(s.steps):
        idx = torch.from_numpy(rng.integers(0, len(data.captions), size=s.batch))
        z0, maps = data.latents[idx] * scale, data.maps[idx]
        if s.augment == "dihedral":
            codes = rng.integers(0, 8, size=s.batch)
            z0, maps = dihedral(z0, codes), dihedral(maps, codes)
        rows = caption_rows[idx].clone()
        rows[torch.from_numpy(rng.random(s.batch) < s.caption_dropout)] = empty_row
        noise = torch.randn(z0.shape, generator=gen)
        noise = noise + s.offset_noise * torch.randn(z0.shape[0], z0.shape[1], 1, 1, generator=gen)
        t = draw_timesteps(s.timesteps, s.batch, sched["num_train_timesteps"], gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        context = contexts[rows]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.precision == "bf16"):
            down, mid = controlnet(zt, t, encoder_hidden_states=context, controlnet_cond=hint_batch(maps),
                                   return_dict=False)
            pred = base.unet(zt, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample.float()
        loss = (loss_weight[t] * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in opt.param_groups:
            group["lr"] = _lr(step, s.steps, s.lr, s.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        elapsed = time.time() - start
        if step % s.log_every == 0 or step == s.steps - 1:
            log.info("controlnet step %d/%d loss %.4f (last %.4f) lr %.2e (%.0fs, eta %.0fs)", step, s.steps,
                     running, loss.item(), opt.param_groups[0]["lr"], elapsed,
                     elapsed / (step + 1) * (s.steps - step - 1))
        if snapshot and s.snapshot_every and step and step % s.snapshot_every == 0:
            snapshot(controlnet, step)
        if s.time_limit and elapsed > s.time_limit:
            log.warning("time limit reached: stopping after %d of %d steps", step + 1, s.steps)
            break
    return controlnet.eval().requires_grad_(False)


def training_header(base_path: Path, s: ControlSettings) -> str:
    """The comment atop the written `.yaml`: what made the file (settings that change the result only,
    so a run with other logging or snapshots writes the same file)."""
    shown = {k: v for k, v in asdict(s).items() if k not in ("log_every", "snapshot_every")}
    return (f"# ControlNet (canny) for {base_path.name}, trained by scripts/train_default_controlnet.py\n"
            f"# settings: {shown}\n")


def train_default_controlnet(out: Path, s: ControlSettings, base_path: Path = DEFAULT_BASE) -> Path:
    """Load the base checkpoint, train its ControlNet and write `out` (.safetensors + .yaml)."""
    base = load_checkpoint(base_path, DevicePolicy.cpu())
    for module in (base.unet, base.vae, base.text_encoders[0]):
        module.float()
    cldm = cldm_config(base.arch.raw)
    header = training_header(base_path, s)

    def snapshot(model: ControlNetModel, step: int) -> None:
        write_controlnet(model, cldm, out.with_name(f"{out.stem}-step{step}{out.suffix}"), header)

    return write_controlnet(train_controlnet(base, s, snapshot), cldm, out, header)

