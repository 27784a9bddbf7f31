"""Build empty diffusers / transformers modules for a `ModelArch` (weights come later, from load.py)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.models.arch import ModelArch, TextEncoderSpec

TextEncoder = CLIPTextModel | CLIPTextModelWithProjection


def build_unet(arch: ModelArch) -> UNet2DConditionModel:
    return UNet2DConditionModel(**arch.unet)


def build_vae(arch: ModelArch) -> AutoencoderKL:
    return AutoencoderKL(**arch.vae)


def build_text_encoder(spec: TextEncoderSpec) -> TextEncoder:
    config = CLIPTextConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        hidden_act=spec.hidden_act,
        projection_dim=spec.hidden_size,
        # The pooled token is the first EOS (49407), as in both original implementations.
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407 if spec.pad_with_eos else 0,
        attn_implementation="sdpa",
    )
    cls = CLIPTextModelWithProjection if spec.projection else CLIPTextModel
    return cls(config)


def build_empty(arch: ModelArch, device: str | torch.device = "meta") -> dict[str, torch.nn.Module]:
    """All modules of `arch` on `device` ("meta" allocates nothing: used to check key layouts)."""
    with torch.device(device):
        modules: dict[str, torch.nn.Module] = {"unet": build_unet(arch), "vae": build_vae(arch)}
        for i, spec in enumerate(arch.text_encoders):
            modules[f"text_encoder_{i}"] = build_text_encoder(spec)
    return modules
