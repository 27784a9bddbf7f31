"""Train the embedded default model: a small latent diffusion model with the SD 1.x structure.

Four stages, deterministic from one seed:
1. a small KL autoencoder (8× down-sampling, 4 latent channels) on crops of synthetic pictures;
2. a data set of latents: pictures encoded once, the latent scale factor measured, and a linear
   latent → RGB map fitted for the cheap live previews;
3. the UNet and a small CLIP text encoder (real CLIP BPE tokenizer) trained together from scratch,
   with caption dropout for classifier-free guidance and an EMA of the weights;
4. the autoencoder's decoder alone, on whole pictures, with the encoder (and so every latent the
   UNet learned) frozen.

The result is written as one LDM-layout .safetensors plus its .yaml, exactly the kind of pair a
user drops into models/Stable-diffusion, and loaded by the same code.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel

from modules.models.arch import parse_ldm_config
from modules.models.build import build_text_encoder, build_unet, build_vae
from modules.models.load import SDModel, save_checkpoint
from modules.text.conditioning import CHUNK_IDS
from modules.text.tokenizer import BOS_ID, EOS_ID, get_tokenizer
from modules.training.default_model.data import DEFAULT_MODEL_RADIUS_RANGE, batch_to_tensor, make_batch

log = logging.getLogger(__name__)


TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")
PRECISIONS = ("bf16", "fp32")
AUGMENTS = ("none", "dihedral")
CPU_ATTENTIONS = ("flash", "math")


def autocast(s: TrainSettings, device: torch.device) -> torch.autocast:
    """The mixed-precision context `s.precision` asks for on `device`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16")


@dataclass
class TrainSettings:
    seed: int = 1234
    size: int = 128
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    # Stage 4: the decoder alone, trained on whole pictures after the rest is done (0: skip).
    decoder_steps: int = 400
    decoder_batch: int = 8
    decoder_lr: float = 3e-4
    dataset_size: int = 24000
    # Few large batches rather than many small ones: the same samples in ~the same CPU time (the
    # cost is linear in the batch on 2 cores), and what the GPU sweep that found this recipe ran.
    unet_steps: int = 1700
    unet_batch: int = 128
    unet_lr: float = 1.6e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    min_snr_gamma: float = 5.0
    # How stage 3 draws timesteps: "uniform" over all 1000, or "logit-normal" (t/1000 = sigmoid of a
    # normal draw with logit_mean, logit_std), which spends the steps on the middle noise levels where
    # a picture's layout and outline are decided rather than on the nearly clean or nearly pure-noise ends.
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # Offset noise: a per-image, per-channel constant added to the noise, so the model learns to move
    # the picture's mean colour (plain backgrounds); without it backgrounds drift to the latent mean.
    offset_noise: float = 0.1
    # "eps" (SD 1.x) or "v" (SD 2.x's v-prediction, written as `parameterization: v` in the yaml).
    # v learns colours and backgrounds faster but, at 6000 steps, follows the shape word no better
    # than chance (README, "The default model"), so the shipped model stays epsilon.
    parameterization: str = "eps"
    linear_end: float = 0.02
    # 64, not 32: at 32 channels the UNet drew every shape as a rounded blob (README, recipes tried).
    model_channels: int = 64
    # Attention heads per transformer block. Few wide heads run faster on the CPU than many narrow
    # ones (the CPU attention kernels are slow for 16-wide heads, in bf16 above all) and the key
    # layout is the same: with bf16, one 64-wide head trains ~1.8x faster than four 16-wide ones.
    num_heads: int = 1
    # Radius of the shapes' circumscribed circle, as a share of the picture side. Larger than
    # data.RADIUS_RANGE: a shape spans more of the 16×16 latent, so its corners and points are more
    # than a latent pixel's detail.
    radius_min: float = DEFAULT_MODEL_RADIUS_RANGE[0]
    radius_max: float = DEFAULT_MODEL_RADIUS_RANGE[1]
    threads: int = 0  # 0: torch's default
    # "bf16": matrix products and convolutions in bfloat16 under autocast, weights, optimiser and
    # loss in fp32 (mixed precision). CPUs with AVX-512 BF16 or AMX run them several times faster
    # than fp32; elsewhere "fp32" may be faster. The two give different (each deterministic) models.
    precision: str = "bf16"
    # "dihedral": each latent of a stage-3 batch is turned by a random multiple of 90° and mirrored at
    # random (the 8 symmetries of the square). Captions say nothing about orientation, and the
    # autoencoder decodes a turned latent as well as the turned picture's own (it learned every
    # angle), so one encoded data set serves as eight.
    augment: str = "none"
    # Stage 3's attention kernel on the CPU: torch's default ("flash") or the plain one ("math"), which
    # runs this model's single 64-wide heads ~8% faster per step (a full run: 1.93 s per step of 128
    # pictures against 2.1). Off by default because the kernels round differently: "flash" keeps the
    # script's defaults giving exactly the shipped file.
    cpu_attention: str = "flash"
    # Where the networks train ("cpu", "cuda", "auto"). Every random draw happens on the CPU, so the
    # data, noise and timesteps are the same on any device; only float rounding differs.
    device: str = "cpu"
    # Stop stage 3 after this many seconds (0: never); for quick experiments, breaks determinism.
    time_limit: float = 0.0


def _check_settings(s: TrainSettings) -> None:
    """Refuse settings the stages cannot run with, before any time is spent."""
    if s.parameterization not in ("eps", "v"):
        raise ValueError(f"parameterization must be 'eps' or 'v', got {s.parameterization!r}")
    if s.timestep_sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep_sampling must be one of {list(TIMESTEP_SAMPLINGS)}, got {s.timestep_sampling!r}")
    if s.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {s.precision!r}")
    if s.cpu_attention not in CPU_ATTENTIONS:
        raise ValueError(f"cpu_attention must be one of {list(CPU_ATTENTIONS)}, got {s.cpu_attention!r}")
    if s.augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {list(AUGMENTS)}, got {s.augment!r}")
    if s.decoder_steps < 0 or s.decoder_batch < 1 or s.decoder_lr <= 0:
        raise ValueError(f"decoder_steps must be >= 0, decoder_batch >= 1 and decoder_lr > 0, got "
                         f"{s.decoder_steps}, {s.decoder_batch}, {s.decoder_lr}")


def default_model_config(s: TrainSettings) -> dict[str, Any]:
    """The model's YAML in the original LDM format, with its small widths stated explicitly."""
    _check_settings(s)
    size = s.size
    config = {
        "model": {
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                # SD's schedule ends at linear_end 0.012 for 64×64 latents. At 16×16 the mean of the
                # noise is 4× larger relative to the picture, so the final step still leaks the
                # background colour of the training picture and samples keep whatever background
                # their seed's noise suggests. 0.02 lowers the terminal signal-to-noise ratio ~20×,
                # about the shift the 16× fewer latent pixels call for.
                "linear_start": 0.00085, "linear_end": s.linear_end, "timesteps": 1000,
                "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": size // 8, "channels": 4,
                "conditioning_key": "crossattn", "scale_factor": 1.0, "use_ema": False,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": size // 8, "in_channels": 4, "out_channels": 4,
                        "model_channels": s.model_channels,
                        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 2, 2],
                        "num_heads": s.num_heads, "use_spatial_transformer": True, "transformer_depth": 1,
                        "context_dim": 64, "legacy": False,
                    },
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.AutoencoderKL",
                    "params": {
                        "embed_dim": 4,
                        "ddconfig": {"double_z": True, "z_channels": 4, "resolution": size, "in_channels": 3,
                                     "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1,
                                     "attn_resolutions": [], "dropout": 0.0},
                        "lossconfig": {"target": "torch.nn.Identity"},
                    },
                },
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                    # Not ViT-L: a small CLIP text tower with the real CLIP vocabulary.
                    "params": {"text_config": {"hidden_size": 64, "num_layers": 3, "num_heads": 4,
                                               "intermediate_size": 256}},
                },
            },
        }
    }
    if s.parameterization == "v":
        config["model"]["params"]["parameterization"] = "v"
    return config


def _tokens(captions: list[str]) -> torch.Tensor:
    """77 ids per caption: BOS, tokens, EOS, EOS padding (as SD 1.x's tokenizer pads)."""
    tok = get_tokenizer()
    rows = []
    for caption in captions:
        ids = [BOS_ID] + tok.tokenize_fragment(caption)[: CHUNK_IDS - 2] + [EOS_ID]
        rows.append(ids + [EOS_ID] * (CHUNK_IDS - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def draw_timesteps(s: TrainSettings, n: int, gen: torch.Generator) -> torch.Tensor:
    """`n` training timesteps (0-999) drawn as `s.timestep_sampling` says."""
    if s.timestep_sampling == "uniform":
        return torch.randint(0, 1000, (n,), generator=gen)
    if s.timestep_sampling == "logit-normal":
        u = torch.sigmoid(s.logit_mean + s.logit_std * torch.randn(n, generator=gen))
        return (u * 1000).long().clamp(0, 999)
    raise ValueError(f"timestep_sampling must be one of {list(TIMESTEP_SAMPLINGS)}, got {s.timestep_sampling!r}")


def dihedral(z: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """Latents [n, c, h, w] each turned by `codes % 4` quarter turns, then mirrored where `codes >= 4`."""
    out = torch.empty_like(z)
    for code in np.unique(codes):
        rows = torch.from_numpy(np.flatnonzero(codes == code))
        turned = z[rows].rot90(int(code) % 4, dims=(-2, -1))
        out[rows] = turned.flip(-1) if code >= 4 else turned
    return out


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _set_up_torch(s: TrainSettings) -> None:
    if s.threads:
        torch.set_num_threads(s.threads)
    # Tiny gradients and Adam moments turn denormal as training settles; on x86 CPUs each denormal
    # operation costs ~100x, which slowed training several-fold. Flushing them changes nothing else.
    torch.set_flush_denormal(True)


def _pixel_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The autoencoder's reconstruction loss (stages 1 and 4)."""
    return F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x)


@torch.no_grad()
def _round_to_fp16(module: torch.nn.Module) -> None:
    """Weights as the fp16 file will hold them, so what trains next sees what ships."""
    for p in module.parameters():
        p.copy_(p.half().float())


# ------------------------------------------------------------------------------------------- stage 1

def train_vae(vae: torch.nn.Module, s: TrainSettings, rng: np.random.Generator) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    vae.train()
    start = time.time()
    for step in range(s.vae_steps):
        images, _ = make_batch(rng, s.vae_batch, s.size)
        x = batch_to_tensor(images)
        top, left = (int(v) for v in rng.integers(0, s.size - s.vae_crop + 1, size=2))
        x = x[:, :, top: top + s.vae_crop, left: left + s.vae_crop].to(next(vae.parameters()).device)
        for group in opt.param_groups:
            group["lr"] = _lr(step, s.vae_steps, s.vae_lr, 100)
        # fp32 even with precision bf16: this autoencoder's convolutions train no faster in bf16.
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = _pixel_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == s.vae_steps - 1:
            log.info("vae step %d/%d loss %.4f (%.0fs)", step, s.vae_steps, loss.item(), time.time() - start)
    vae.eval()


# ------------------------------------------------------------------------------------------- stage 2

@torch.no_grad()
def encode_dataset(vae: torch.nn.Module, s: TrainSettings, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, list[str], list[float], list[list[float]], list[float]]:
    """Latents (unscaled means) and captions of `dataset_size` pictures, the scale factor, and a
    least-squares latent → RGB map for previews."""
    latents, captions, pooled_rgb = [], [], []
    for _ in range(0, s.dataset_size, 64):
        images, caps = make_batch(rng, 64, s.size, radius_range=(s.radius_min, s.radius_max))
        x = batch_to_tensor(images)
        device = next(vae.parameters()).device
        with autocast(s, device):  # bf16 halves the encoding time; the latents move ~0.1%
            z = vae.encode(x.to(device)).latent_dist.mean
        latents.append(z.float().cpu())
        captions += caps
        pooled_rgb.append(F.avg_pool2d(x, 8))
    z = torch.cat(latents)[: s.dataset_size]
    rgb = torch.cat(pooled_rgb)[: s.dataset_size]
    scale = float(1.0 / z.std())
    flat_z = (z * scale).permute(0, 2, 3, 1).reshape(-1, 4)
    flat_rgb = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([flat_z, torch.ones(len(flat_z), 1)], dim=1)
    solution = torch.linalg.lstsq(design, flat_rgb).solution  # [5, 3]
    factors = solution[:4].tolist()
    bias = solution[4].tolist()
    return z, captions[: s.dataset_size], scale, factors, bias


# ------------------------------------------------------------------------------------------- stage 3

def train_unet(unet: torch.nn.Module, text_encoder: torch.nn.Module, latents: torch.Tensor,
               captions: list[str], scale: float, s: TrainSettings, arch_schedule: dict[str, Any],
               rng: np.random.Generator, snapshot: Any = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    device = next(unet.parameters()).device
    betas = torch.linspace(arch_schedule["beta_start"] ** 0.5, arch_schedule["beta_end"] ** 0.5, 1000,
                           dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    v_pred = s.parameterization == "v"
    # Min-SNR weighting: the easy low-noise steps stop dominating the loss. In terms of the predicted
    # target that is min(SNR, gamma)/SNR for epsilon and min(SNR, gamma)/(SNR + 1) for v.
    loss_weight = (torch.clamp(snr, max=s.min_snr_gamma) / (snr + 1 if v_pred else snr)).to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    # fused: one kernel for all parameters (~6% of a CPU step saved against the per-tensor loop)
    opt = torch.optim.AdamW(params, lr=s.unet_lr, weight_decay=0.01, fused=True)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    tokens = _tokens(captions)
    empty = _tokens([""])[0]
    unet.train()
    text_encoder.train()
    start = time.time()
    gen = torch.Generator().manual_seed(s.seed + 7)
    running = 0.0
    for step in range(s.unet_steps):
        idx = torch.from_numpy(rng.integers(0, len(latents), size=s.unet_batch))
        z0 = latents[idx] * scale
        if s.augment == "dihedral":
            z0 = dihedral(z0, rng.integers(0, 8, size=s.unet_batch))
        ids = tokens[idx].clone()
        drop = torch.from_numpy(rng.random(s.unet_batch) < s.caption_dropout)
        ids[drop] = empty
        noise = torch.randn(z0.shape, generator=gen)
        if s.offset_noise:
            noise = noise + s.offset_noise * torch.randn(z0.shape[0], z0.shape[1], 1, 1, generator=gen)
        t = draw_timesteps(s, s.unet_batch, gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * z0 if v_pred else noise
        zt, target, ids, t_dev = zt.to(device), target.to(device), ids.to(device), t.to(device)
        with autocast(s, device):
            context = text_encoder(ids).last_hidden_state
            pred = unet(zt, t_dev, encoder_hidden_states=context).sample.float()
        loss = (loss_weight[t_dev] * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in opt.param_groups:
            group["lr"] = _lr(step, s.unet_steps, s.unet_lr, s.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        elapsed = time.time() - start
        if step % 100 == 0 or step == s.unet_steps - 1:
            log.info("unet step %d/%d loss %.4f lr %.2e (%.0fs, eta %.0fs)", step, s.unet_steps, running,
                     opt.param_groups[0]["lr"], elapsed, elapsed / (step + 1) * (s.unet_steps - step - 1))
        if snapshot and step and step % 1000 == 0:
            snapshot(ema_unet, ema_text, step)
        if s.time_limit and elapsed > s.time_limit:
            log.warning("time limit reached: stopping stage 3 after %d of %d steps", step + 1, s.unet_steps)
            break
    return ema_unet, ema_text


# ------------------------------------------------------------------------------------------- stage 4

def finetune_decoder(vae: torch.nn.Module, s: TrainSettings) -> None:
    """Train the decoder (and post_quant_conv) further on whole pictures; the encoder stays frozen.

    Stage 1's decoder, trained on crops, got flat colours wrong by up to ~24 levels: a black
    background came back dark grey inside a rim of clipped black, orange on black came back lighter,
    towards yellow. The judge then misread pictures the UNet had drawn right (the grey inside read as
    a shape of its own). With the encoder frozen the latents stay exactly what stage 3 learned, so
    this stage can run last, or alone on a finished file (`finetune_decoder_of`), with the same
    result; its random draws come from generators of its own for the same reason."""
    rng = np.random.default_rng((s.seed, 4))
    noise = torch.Generator().manual_seed(int(rng.integers(2**62)))
    device = next(vae.parameters()).device
    vae.requires_grad_(False)
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=s.decoder_lr, weight_decay=0.0)
    vae.train()
    start = time.time()
    for step in range(s.decoder_steps):
        # The stage-3 pictures (its shape sizes), since those are what the UNet's latents show.
        images, _ = make_batch(rng, s.decoder_batch, s.size, radius_range=(s.radius_min, s.radius_max))
        x = batch_to_tensor(images).to(device)
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            # A posterior sample, not the mean: the UNet's latents are never exactly an encoding,
            # and the decoder should stay smooth around them.
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(step, s.decoder_steps, s.decoder_lr, 20)
        recon = vae.decode(z).sample  # fp32, like stage 1
        loss = _pixel_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == s.decoder_steps - 1:
            log.info("decoder step %d/%d loss %.4f (%.0fs)", step, s.decoder_steps, loss.item(), time.time() - start)
    vae.eval()
    vae.requires_grad_(False)
    _round_to_fp16(vae)


def finetune_decoder_of(source: Path, out_dir: Path, s: TrainSettings, name: str = "default-shapes") -> Path:
    """Stage 4 alone on a finished result: `source` with its decoder trained by `finetune_decoder`,
    written as `<out_dir>/<name>.safetensors` + `.yaml`. For a result of a run with decoder_steps 0,
    this gives exactly what the run would have given with stage 4 (same seed and settings)."""
    from modules.devices import DevicePolicy
    from modules.models.load import load_checkpoint

    _check_settings(s)
    _set_up_torch(s)
    model = load_checkpoint(source, DevicePolicy.cpu())
    model.vae.float()
    log.info("stage 4 only: decoder of %s", source)
    finetune_decoder(model.vae, s)
    config = yaml.safe_load(source.with_suffix(".yaml").read_text(encoding="utf-8"))
    lineage = {"training.decoder_finetuned_from": f"{source.name} sha256:{hashlib.sha256(source.read_bytes()).hexdigest()}"}
    return _write(model, config, s, name, out_dir / f"{name}.safetensors", lineage)


def _write(model: SDModel, config: dict[str, Any], s: TrainSettings, name: str, path: Path,
           lineage: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".yaml").write_text(
        "# The embedded default model: SD 1.x structure at small widths, trained by\n"
        "# scripts/train_default_model.py on synthetic shapes (see README).\n"
        + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return save_checkpoint(model, path, dtype=torch.float16,
                           metadata={"modelspec.title": name, "training.seed": str(s.seed),
                                     "modelspec.prediction_type": "v" if s.parameterization == "v" else "epsilon",
                                     "training.settings": repr(s), **lineage})


def train_default_model(out_dir: Path, s: TrainSettings, name: str = "default-shapes",
                        work_dir: Path | None = None, init_from: Path | None = None,
                        vae_from: Path | None = None) -> Path:
    """Run all four stages and write `<out_dir>/<name>.safetensors` + `.yaml`; returns the file.

    `init_from`: continue from an earlier result of this script (its autoencoder is kept, stages 1
    and 4 are skipped, stages 2 and 3 run again with `s`). `vae_from`: take only the autoencoder of an
    earlier result (stages 1 and 4 skipped) and train the UNet and text encoder from scratch."""
    from modules.devices import DevicePolicy
    from modules.models.load import load_checkpoint

    _set_up_torch(s)
    device = torch.device("cuda" if s.device == "auto" and torch.cuda.is_available() else
                          "cpu" if s.device == "auto" else s.device)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    config = default_model_config(s)
    arch = parse_ldm_config(config)
    vae, unet = build_vae(arch), build_unet(arch)
    text_encoder = build_text_encoder(arch.text_encoders[0])
    with torch.no_grad():
        # Rows of tokens the captions never use stay zero: unknown words then mean "nothing", and the
        # shipped file compresses well.
        text_encoder.get_input_embeddings().weight.zero_()

    if init_from is not None:
        start = load_checkpoint(init_from, DevicePolicy.cpu())
        config, arch = start.arch.raw, start.arch
        vae, unet, text_encoder = start.vae, start.unet.train(), start.text_encoders[0].train()
        unet.requires_grad_(True)
        text_encoder.requires_grad_(True)
        log.info("continuing from %s", init_from)
    elif vae_from is not None:
        vae = load_checkpoint(vae_from, DevicePolicy.cpu()).vae.float()
        log.info("autoencoder from %s", vae_from)
    vae, unet, text_encoder = vae.to(device), unet.to(device), text_encoder.to(device)
    if init_from is None and vae_from is None:
        log.info("stage 1: autoencoder (%s)", device)
        train_vae(vae, s, rng)
        # The UNet learns the latents of the autoencoder as the fp16 file holds it, which also makes
        # --vae-from (that file) give exactly this run's model.
        _round_to_fp16(vae)
    elif vae_from is not None:
        # Draw what stage 1 would have drawn, so that an autoencoder from a full run of the same seed
        # gives exactly the model that full run gives (~1 minute of drawing instead of stage 1).
        for _ in range(s.vae_steps):
            make_batch(rng, s.vae_batch, s.size)
            rng.integers(0, s.size - s.vae_crop + 1, size=2)
    vae.requires_grad_(False)
    log.info("stage 2: encoding %d pictures", s.dataset_size)
    latents, captions, scale, factors, bias = encode_dataset(vae, s, rng)
    params = config["model"]["params"]
    if init_from is not None:
        scale = float(params["scale_factor"])  # the UNet already works in this scale
    params["scale_factor"] = round(scale, 5)
    params["latent_rgb_factors"] = [[round(v, 4) for v in row] for row in factors]
    params["latent_rgb_bias"] = [round(v, 4) for v in bias]
    arch = parse_ldm_config(config)
    log.info("latent scale factor %.4f", scale)

    lineage = {}
    for key, source in (("training.continued_from", init_from), ("training.vae_from", vae_from)):
        if source is not None:
            # Name and hash of the file it grew from: with it in git history, the result is reproducible.
            lineage[key] = f"{source.name} sha256:{hashlib.sha256(source.read_bytes()).hexdigest()}"

    def write(unet_: torch.nn.Module, text_: torch.nn.Module, path: Path) -> Path:
        return _write(SDModel(arch=arch, unet=unet_, vae=vae, text_encoders=[text_]), config, s, name, path, lineage)

    def snapshot(unet_: torch.nn.Module, text_: torch.nn.Module, step: int) -> None:
        if work_dir:
            write(unet_, text_, work_dir / f"{name}-step{step}.safetensors")

    log.info("stage 3: UNet + text encoder (%s)", device)
    math_kernel = device.type == "cpu" and s.cpu_attention == "math"
    with sdpa_kernel(SDPBackend.MATH) if math_kernel else contextlib.nullcontext():
        ema_unet, ema_text = train_unet(unet, text_encoder, latents, captions, scale, s, arch.scheduler_config,
                                        rng, snapshot)
    if init_from is None and vae_from is None and s.decoder_steps:
        # An autoencoder taken from a file stays as it is: a result of this script already had its
        # decoder trained (finetune_decoder_of does it for one that had not).
        log.info("stage 4: decoder (%s)", device)
        finetune_decoder(vae, s)
    return write(ema_unet, ema_text, out_dir / f"{name}.safetensors")
