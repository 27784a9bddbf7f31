"""Key conversion between the original single-file (LDM / SGM) layout and diffusers / transformers modules.

The conversion is a table of `KeyRule`s derived from the modules' own state-dict keys; the same table
drives loading (LDM → modules) and exporting (modules → LDM), so a round trip is exact by construction.

Checkpoint keys that belong to no module are either kept as `extras` (schedule buffers, CLIP
position ids, OpenCLIP's logit scale, ...) so an export can write them back, or dropped on purpose
(EMA shadows); anything else is an error naming the keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch

from modules.errors import CheckpointError
from modules.models.arch import ModelArch, TextEncoderSpec
from modules.models.build import build_empty

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)
# Training-only state that released files may hold and inference never needs.
DROPPED_PATTERNS = (re.compile(r"^model_ema\."), re.compile(r"^(lvlb_weights|logvar)$"))


@dataclass(frozen=True)
class KeyRule:
    """One checkpoint tensor ↔ one or more module tensors.

    transform: "same"; "conv1x1" (LDM 1×1 conv [C,C,1,1] ↔ linear [C,C]); "transpose" (OpenCLIP
    text_projection is applied as x @ P, a Linear stores P.T); "fused" (OpenCLIP's in_proj = q, k, v
    stacked on dim 0).
    """

    module: str
    hf_keys: tuple[str, ...]
    ldm_key: str
    transform: str = "same"


# ---------------------------------------------------------------------------------------------- UNet

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _unet_ldm_key(key: str, arch: ModelArch) -> str:
    n = arch.unet["layers_per_block"]
    attn = [t.startswith("CrossAttn") for t in arch.unet["down_block_types"]]
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for hf, ldm in top.items():
        if key.startswith(hf + "."):
            return ldm + key[len(hf):]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.*
            return f"input_blocks.{(b + 1) * (n + 1)}.0.op." + ".".join(parts[5:])
        block = 1 + b * (n + 1) + int(parts[3])
        return _block_inner(f"input_blocks.{block}", kind, parts[4:])
    if parts[0] == "up_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # the last output block of the level holds it after its attention
            has_attn = attn[len(attn) - 1 - b]
            return f"output_blocks.{b * (n + 1) + n}.{2 if has_attn else 1}.conv." + ".".join(parts[5:])
        block = b * (n + 1) + int(parts[3])
        return _block_inner(f"output_blocks.{block}", kind, parts[4:])
    if parts[0] == "mid_block":
        kind, i = parts[1], int(parts[2])
        index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, i)]
        return _block_inner(f"middle_block.{index}", kind, parts[3:], in_block=False)
    raise KeyError(key)


def _block_inner(prefix: str, kind: str, rest: list[str], in_block: bool = True) -> str:
    sub = "0" if kind == "resnets" else "1"
    head = f"{prefix}.{sub}" if in_block else prefix
    if kind == "resnets":
        name = rest[0]
        return f"{head}.{_UNET_RESNET[name]}." + ".".join(rest[1:])
    return f"{head}." + ".".join(rest)  # SpatialTransformer names are the same on both sides


# ----------------------------------------------------------------------------------------------- VAE

_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_ldm_key(key: str, arch: ModelArch) -> tuple[str, str]:
    levels = len(arch.vae["block_out_channels"])
    key = key.replace("conv_norm_out", "norm_out")
    key = key.replace("conv_shortcut", "nin_shortcut")
    m = re.match(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        side, _, level, kind, idx, rest = m.groups()
        level = int(level) if side == "encoder" else levels - 1 - int(level)
        group = "down" if side == "encoder" else "up"
        if kind == "resnets":
            return f"{side}.{group}.{level}.block.{idx}.{rest}", "same"
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return f"{side}.{group}.{level}.{sampler}.{rest}", "same"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        side, kind, idx, rest = m.groups()
        if kind == "resnets":
            return f"{side}.mid.block_{int(idx) + 1}.{rest}", "same"
        for hf, ldm in _VAE_ATTN.items():
            if rest.startswith(hf + "."):
                transform = "conv1x1" if hf != "group_norm" else "same"
                return f"{side}.mid.attn_1.{ldm}{rest[len(hf):]}", transform
        raise KeyError(key)
    return key, "same"  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv


# -------------------------------------------------------------------------------------- text towers

def _hf_clip_rules(module: str, keys: Iterable[str], spec: TextEncoderSpec) -> list[KeyRule]:
    # transformers 5 puts CLIPTextModel's weights at the top level but CLIPTextModelWithProjection's
    # under text_model.; the checkpoint always has text_model.
    rules = []
    for key in keys:
        canonical = key.removeprefix("text_model.")
        rules.append(KeyRule(module, (key,), f"{spec.prefix}text_model.{canonical}"))
    return rules


_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _open_clip_rules(module: str, keys: Iterable[str], spec: TextEncoderSpec) -> list[KeyRule]:
    p = spec.prefix
    rules: list[KeyRule] = []
    fused: dict[str, dict[str, str]] = {}
    for key in keys:
        canonical = key.removeprefix("text_model.")
        if canonical == "embeddings.token_embedding.weight":
            rules.append(KeyRule(module, (key,), p + "token_embedding.weight"))
        elif canonical == "embeddings.position_embedding.weight":
            rules.append(KeyRule(module, (key,), p + "positional_embedding"))
        elif canonical.startswith("final_layer_norm."):
            rules.append(KeyRule(module, (key,), p + "ln_final." + canonical.split(".")[-1]))
        elif canonical == "text_projection.weight":
            rules.append(KeyRule(module, (key,), p + "text_projection", "transpose"))
        else:
            m = re.match(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", canonical)
            if not m:
                raise KeyError(key)
            layer, name, what = m.groups()
            base = f"{p}transformer.resblocks.{layer}."
            qkv = re.match(r"self_attn\.([qkv])_proj$", name)
            if qkv:
                fused.setdefault(f"{base}attn.in_proj_{what}", {})[qkv.group(1)] = key
            else:
                rules.append(KeyRule(module, (key,), f"{base}{_OPEN_CLIP_LAYER[name]}.{what}"))
    for ldm_key, parts in fused.items():
        rules.append(KeyRule(module, (parts["q"], parts["k"], parts["v"]), ldm_key, "fused"))
    return rules


# ------------------------------------------------------------------------------------------- tables

@lru_cache(maxsize=8)
def key_rules(arch: ModelArch) -> tuple[KeyRule, ...]:
    """The full conversion table of `arch`, derived from the modules built on the meta device."""
    modules = build_empty(arch, "meta")
    rules: list[KeyRule] = []
    for key in modules["unet"].state_dict():
        rules.append(KeyRule("unet", (key,), UNET_PREFIX + _unet_ldm_key(key, arch)))
    for key in modules["vae"].state_dict():
        ldm, transform = _vae_ldm_key(key, arch)
        rules.append(KeyRule("vae", (key,), VAE_PREFIX + ldm, transform))
    for i, spec in enumerate(arch.text_encoders):
        name = f"text_encoder_{i}"
        keys = [k for k in modules[name].state_dict() if not k.endswith("position_ids")]
        make = _hf_clip_rules if spec.layout == "hf_clip" else _open_clip_rules
        rules.extend(make(name, keys, spec))
    return tuple(rules)


def extra_key_names(arch: ModelArch) -> list[str]:
    """Checkpoint keys that no module holds but a released file of this architecture has."""
    names: list[str] = []
    if not arch.is_sdxl:
        names += list(SCHEDULE_BUFFERS)
    for spec in arch.text_encoders:
        if spec.layout == "hf_clip":
            names.append(f"{spec.prefix}text_model.embeddings.position_ids")
        else:
            names.append(spec.prefix + "logit_scale")
            if not spec.projection:
                names.append(spec.prefix + "text_projection")
    if arch.is_sdxl:
        names.append("denoiser.sigmas")
    return names


def _is_optional_extra(key: str) -> bool:
    # Files re-saved by newer tools may lack these; SDXL's denoiser.sigmas may be absent too.
    return key.endswith("position_ids") or key == "denoiser.sigmas" or key in SCHEDULE_BUFFERS


def default_extras(arch: ModelArch, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Values for the extra keys when a model was not loaded from a file (fresh training, tests)."""
    t = arch.num_train_timesteps
    betas = torch.linspace(arch.linear_start**0.5, arch.linear_end**0.5, t, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    schedule = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(), "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(), "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    extras: dict[str, torch.Tensor] = {}
    for name in extra_key_names(arch):
        if name in schedule:
            extras[name] = schedule[name].to(torch.float32)
        elif name.endswith("position_ids"):
            spec = next(s for s in arch.text_encoders if name.startswith(s.prefix))
            extras[name] = torch.arange(spec.max_positions, dtype=torch.int64)[None]
        elif name.endswith("logit_scale"):
            extras[name] = torch.tensor(math.log(1 / 0.07), dtype=dtype)
        elif name.endswith("text_projection"):
            spec = next(s for s in arch.text_encoders if name.startswith(s.prefix))
            extras[name] = torch.eye(spec.hidden_size, dtype=dtype)
        elif name == "denoiser.sigmas":
            extras[name] = ((1 - ac) / ac).sqrt().to(torch.float32)
    return extras


# ------------------------------------------------------------------------------------ both directions

def _to_module(rule: KeyRule, tensor: torch.Tensor) -> list[torch.Tensor]:
    if rule.transform == "conv1x1":
        return [tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.ndim == 4 else tensor]
    if rule.transform == "transpose":
        return [tensor.t().contiguous()]
    if rule.transform == "fused":
        return [c.contiguous() for c in tensor.chunk(3, dim=0)]
    return [tensor]


def _to_ldm(rule: KeyRule, tensors: list[torch.Tensor]) -> torch.Tensor:
    if rule.transform == "conv1x1":
        t = tensors[0]
        return t.reshape(*t.shape, 1, 1) if t.ndim == 2 else t
    if rule.transform == "transpose":
        return tensors[0].t().contiguous()
    if rule.transform == "fused":
        return torch.cat(tensors, dim=0)
    return tensors[0]


def ldm_to_modules(
    state: Mapping[str, torch.Tensor], arch: ModelArch, source: str = "checkpoint"
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Split and rename an LDM-layout state dict into per-module state dicts, strictly.

    Returns (module name → state dict, extras). Raises `CheckpointError` naming the first missing and
    unexpected keys when the file is not in the layout of `arch`.
    """
    rules = key_rules(arch)
    out: dict[str, dict[str, torch.Tensor]] = {}
    missing: list[str] = []
    used: set[str] = set()
    for rule in rules:
        tensor = state.get(rule.ldm_key)
        if tensor is None:
            missing.append(rule.ldm_key)
            continue
        used.add(rule.ldm_key)
        for hf_key, value in zip(rule.hf_keys, _to_module(rule, tensor), strict=True):
            out.setdefault(rule.module, {})[hf_key] = value
    extras: dict[str, torch.Tensor] = {}
    extra_names = set(extra_key_names(arch))
    unexpected = []
    for key, tensor in state.items():
        if key in used:
            continue
        if key in extra_names:
            extras[key] = tensor
        elif not any(p.search(key) for p in DROPPED_PATTERNS):
            unexpected.append(key)
    missing_extras = [k for k in extra_names if k not in state and not _is_optional_extra(k)]
    missing += missing_extras
    if missing or unexpected:
        raise CheckpointError(_layout_message(source, arch, missing, unexpected))
    return out, extras


def _layout_message(source: str, arch: ModelArch, missing: list[str], unexpected: list[str]) -> str:
    parts = [f"{source} is not in the layout of a {arch.family} checkpoint"
             + (f" (config {arch.config_path})" if arch.config_path else "") + "."]
    if missing:
        parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}.")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(sorted(unexpected)[:5])}.")
    parts.append("Check that the .yaml beside it belongs to this file, or remove the .yaml to detect the "
                 "architecture from the weights.")
    return " ".join(parts)


def modules_to_ldm(
    modules: Mapping[str, Mapping[str, torch.Tensor]], arch: ModelArch,
    extras: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The inverse of `ldm_to_modules`: module state dicts (+ extras) → one LDM-layout state dict."""
    out: dict[str, torch.Tensor] = {}
    for rule in key_rules(arch):
        state = modules[rule.module]
        out[rule.ldm_key] = _to_ldm(rule, [state[k] for k in rule.hf_keys])
    defaults = default_extras(arch)
    for name in extra_key_names(arch):
        out[name] = (extras or {}).get(name, defaults[name])
    return out


def vae_from_ldm(state: Mapping[str, torch.Tensor], arch: ModelArch, source: str = "VAE file") -> dict[str, torch.Tensor]:
    """A separate VAE file (bare `encoder.*`/`decoder.*` keys or `first_stage_model.*`) → the VAE module's state."""
    # VAE releases sometimes carry training leftovers (the discriminator under loss.*, EMA shadows).
    bare = {k.removeprefix(VAE_PREFIX): v for k, v in state.items() if not k.startswith(("loss.", "model_ema."))}
    rules = {r.ldm_key.removeprefix(VAE_PREFIX): r for r in key_rules(arch) if r.module == "vae"}
    missing = [k for k in rules if k not in bare]
    unexpected = [k for k in bare if k not in rules]
    if missing or unexpected:
        raise CheckpointError(f"{source} is not a VAE for this model: {len(missing)} missing key(s) "
                              f"(first {missing[:3]}), {len(unexpected)} unexpected (first {unexpected[:3]}).")
    return {rule.hf_keys[0]: _to_module(rule, bare[key])[0] for key, rule in rules.items()}
