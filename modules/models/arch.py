"""What a checkpoint *is*: its architecture, read from an original LDM / SGM YAML config.

The YAML format is the one model publishers ship (`model.params.unet_config`, `first_stage_config`,
`cond_stage_config`, SDXL's `network_config` / `conditioner_config`). `parse_ldm_config` turns it into
a `ModelArch`: plain data from which the diffusers / transformers modules are built and from which the
key conversion tables are derived. Nothing here touches weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from modules.errors import UserError

# Text towers of the released models. Facts of the published architectures.
KNOWN_TEXT_TOWERS: dict[str, dict[str, Any]] = {
    "ViT-L-14": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
    "ViT-H-14": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
    "ViT-bigG-14": {"hidden_size": 1280, "num_layers": 32, "num_heads": 20, "intermediate_size": 5120},
}


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a checkpoint and how its output is used.

    `layout` says how the checkpoint stores it: "hf_clip" (OpenAI CLIP as a transformers
    `CLIPTextModel`, keys `...text_model.*`) or "open_clip" (OpenCLIP, keys `...transformer.resblocks.*`).
    """

    layout: Literal["hf_clip", "open_clip"]
    prefix: str  # checkpoint key prefix, ending with "."
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str  # "quick_gelu" for OpenAI CLIP, "gelu" for OpenCLIP
    layer_from_end: int = 1  # 1 = last layer's output, 2 = penultimate
    final_layer_norm: bool = True  # apply the final LayerNorm to the chosen layer's output
    pad_with_eos: bool = True  # OpenAI CLIP's tokenizer pads with EOS; OpenCLIP with 0
    projection: bool = False  # pooled output through text_projection (SDXL's bigG)
    vocab_size: int = 49408
    max_positions: int = 77


@dataclass(frozen=True)
class ModelArch:
    """Everything needed to build the modules of a checkpoint and to map its keys."""

    family: Literal["sd1", "sd2", "sdxl", "sdxl_refiner"]
    unet: dict[str, Any]  # diffusers UNet2DConditionModel kwargs
    vae: dict[str, Any]  # diffusers AutoencoderKL kwargs
    text_encoders: tuple[TextEncoderSpec, ...]
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_train_timesteps: int = 1000
    scale_factor: float = 0.18215
    config_path: str = ""  # the YAML this came from
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __hash__(self) -> int:  # the dicts inside are never mutated; hash what defines the layout
        return hash(self.fingerprint)

    @property
    def fingerprint(self) -> str:
        return repr((self.family, sorted(self.unet.items()), sorted(self.vae.items()), self.text_encoders))

    @property
    def is_inpainting(self) -> bool:
        return self.unet["in_channels"] == 9

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl_refiner")

    @property
    def native_size(self) -> int:
        """Image side in pixels the model was trained for (latent sample size × 8)."""
        return int(self.unet.get("sample_size", 64)) * 8

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The training noise schedule, as diffusers schedulers take it."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.linear_start,
            "beta_end": self.linear_end,
            "beta_schedule": "scaled_linear",
            "prediction_type": self.prediction_type,
        }


def load_ldm_config(path: str | Path) -> ModelArch:
    """Read an LDM / SGM YAML file into a `ModelArch`; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"Cannot read the model config {path}: {exc}") from exc
    try:
        return parse_ldm_config(data, config_path=str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"The model config {path} is not an LDM/SGM Stable Diffusion config ({exc!r}). "
            "Use the YAML published with the checkpoint, or remove it to let the architecture be detected."
        ) from exc


def parse_ldm_config(data: dict[str, Any], config_path: str = "") -> ModelArch:
    params = data["model"]["params"]
    if "network_config" in params:
        return _parse_sgm(params, data, config_path)
    unet_params = params["unet_config"]["params"]
    unet = _unet_kwargs(unet_params)
    vae = _vae_kwargs(params["first_stage_config"]["params"], params.get("scale_factor", 0.18215))
    cond = params["cond_stage_config"]
    target = cond["target"]
    cond_params = cond.get("params") or {}
    if target.endswith("FrozenOpenCLIPEmbedder"):
        layer = cond_params.get("layer", "last")
        spec = _text_spec(
            "open_clip", "cond_stage_model.model.", cond_params.get("arch", "ViT-H-14"), cond_params,
            layer_from_end=2 if layer == "penultimate" else 1, final_layer_norm=True, pad_with_eos=False,
        )
        family = "sd2"
    elif target.endswith("FrozenCLIPEmbedder"):
        spec = _text_spec(
            "hf_clip", "cond_stage_model.transformer.", "ViT-L-14", cond_params,
            layer_from_end=1, final_layer_norm=True, pad_with_eos=True,
        )
        family = "sd1"
    else:
        raise ValueError(f"unsupported cond_stage_config target {target}")
    return ModelArch(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=(spec,),
        prediction_type="v_prediction" if params.get("parameterization", "eps") == "v" else "epsilon",
        linear_start=float(params.get("linear_start", 0.00085)),
        linear_end=float(params.get("linear_end", 0.012)),
        num_train_timesteps=int(params.get("timesteps", 1000)),
        scale_factor=float(params.get("scale_factor", 0.18215)),
        config_path=config_path,
        raw=data,
    )


def _parse_sgm(params: dict[str, Any], data: dict[str, Any], config_path: str) -> ModelArch:
    unet_params = params["network_config"]["params"]
    unet = _unet_kwargs(unet_params)
    scale_factor = float(params.get("scale_factor", 0.13025))
    vae = _vae_kwargs(params["first_stage_config"]["params"], scale_factor)
    specs: list[TextEncoderSpec] = []
    for index, emb in enumerate(params["conditioner_config"]["params"]["emb_models"]):
        target = emb["target"]
        emb_params = emb.get("params") or {}
        prefix = f"conditioner.embedders.{index}."
        if target.endswith("FrozenOpenCLIPEmbedder2"):
            layer = emb_params.get("layer", "penultimate")
            specs.append(_text_spec(
                "open_clip", prefix + "model.", emb_params.get("arch", "ViT-bigG-14"), emb_params,
                layer_from_end=2 if layer == "penultimate" else 1, final_layer_norm=False,
                pad_with_eos=False, projection=True,
            ))
        elif target.endswith("FrozenCLIPEmbedder"):
            spec = _text_spec("hf_clip", prefix + "transformer.", "ViT-L-14", emb_params,
                              layer_from_end=1, final_layer_norm=False, pad_with_eos=True)
            # layer: hidden, layer_idx: 11 -> hidden_states[11] of 13 = the penultimate layer
            if emb_params.get("layer") == "hidden":
                idx = int(emb_params.get("layer_idx", spec.num_layers - 1))
                spec = _replace(spec, layer_from_end=spec.num_layers + 1 - idx)
            specs.append(spec)
        # ConcatTimestepEmbedderND (size / crop / aesthetic conditioning) has no weights.
    family = "sdxl" if len(specs) == 2 else "sdxl_refiner"
    denoiser = params.get("denoiser_config", {}).get("params", {})
    scaling = denoiser.get("scaling_config", {}).get("target", "")
    disc = denoiser.get("discretization_config", {}).get("params", {}) or {}
    return ModelArch(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=tuple(specs),
        prediction_type="v_prediction" if scaling.endswith("VScaling") else "epsilon",
        linear_start=float(disc.get("linear_start", 0.00085)),
        linear_end=float(disc.get("linear_end", 0.012)),
        num_train_timesteps=int(denoiser.get("num_idx", 1000)),
        scale_factor=scale_factor,
        config_path=config_path,
        raw=data,
    )


def _replace(spec: TextEncoderSpec, **changes: Any) -> TextEncoderSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def _text_spec(layout: str, prefix: str, arch: str, params: dict[str, Any], **kw: Any) -> TextEncoderSpec:
    if arch not in KNOWN_TEXT_TOWERS and "text_config" not in params:
        raise ValueError(f"unknown text tower {arch}")
    dims = dict(KNOWN_TEXT_TOWERS.get(arch, {}))
    # Small models (the embedded default model, test checkpoints) state their own sizes.
    dims.update(params.get("text_config") or {})
    return TextEncoderSpec(
        layout=layout,  # type: ignore[arg-type]
        prefix=prefix,
        hidden_size=int(dims["hidden_size"]),
        num_layers=int(dims["num_layers"]),
        num_heads=int(dims["num_heads"]),
        intermediate_size=int(dims["intermediate_size"]),
        hidden_act="quick_gelu" if layout == "hf_clip" else "gelu",
        **kw,
    )


def _unet_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    mc = int(p["model_channels"])
    mult = list(p["channel_mult"])
    levels = len(mult)
    attn_res = set(p.get("attention_resolutions", []))
    depth = p.get("transformer_depth", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [int(depth)] * levels
    channels = [mc * m for m in mult]
    head_channels = int(p.get("num_head_channels", -1))
    heads = [c // head_channels if head_channels > 0 else int(p["num_heads"]) for c in channels]
    has_attn = [(2**i) in attn_res for i in range(levels)]
    kwargs: dict[str, Any] = {
        "sample_size": int(p.get("image_size", 64)),
        "in_channels": int(p["in_channels"]),
        "out_channels": int(p["out_channels"]),
        "block_out_channels": tuple(channels),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
        "layers_per_block": int(p["num_res_blocks"]),
        "transformer_layers_per_block": tuple(int(d) for d in depth),
        "attention_head_dim": tuple(heads),  # diffusers' name; it means heads per level here
        "cross_attention_dim": int(p["context_dim"]),
        "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
    }
    if p.get("adm_in_channels"):
        kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=int(p["adm_in_channels"]),
        )
    return kwargs


def _vae_kwargs(p: dict[str, Any], scale_factor: float) -> dict[str, Any]:
    dd = p["ddconfig"]
    n = len(dd["ch_mult"])
    if dd.get("attn_resolutions"):
        raise ValueError("VAE attention outside the middle block is not supported")
    if int(p.get("embed_dim", dd["z_channels"])) != int(dd["z_channels"]):
        raise ValueError("VAE embed_dim must equal z_channels")
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": tuple(int(dd["ch"]) * m for m in dd["ch_mult"]),
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": int(dd["z_channels"]),
        "sample_size": int(dd.get("resolution", 256)),
        "scaling_factor": float(scale_factor),
    }
