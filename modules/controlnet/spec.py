"""What a ControlNet file *is*: its key layout, base architecture and diffusers `ControlNetModel` config.

Order of authority: an explicit config, a same-named `.yaml` beside the file (lllyasviel's
`cldm_v15.yaml` / `cldm_v21.yaml` format: `model.params.control_stage_config.params`), else detection
from key names and shapes alone (so it works whatever the file's dtype).

Detection rules (facts of the released models):
- `label_emb` (LDM) / `add_embedding` (diffusers) exists only in SDXL's UNet → SDXL;
- otherwise a cross-attention context of 1024 (OpenCLIP ViT-H) → SD 2.x, 768 (CLIP ViT-L) → SD 1.x;
  other widths (small home-made models) → SD 2.x when the transformers' proj_in is linear (SD 2.x
  style), SD 1.x when it is a 1×1 conv;
- the number of attention heads is not in the weights: SD 1.x uses 8 heads, SD 2.x and SDXL 64
  channels per head. `heads_guessed` records that the guess was made, so the caller can take the
  loaded checkpoint's heads instead (`compat.fit_to_checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from modules.errors import CheckpointError, UserError
from modules.models.arch import _unet_kwargs  # the checkpoint side's reading of LDM UNet params
from modules.models.detect import beside_yaml

LDM_PREFIX = "control_model."
Family = Literal["sd1", "sd2", "sdxl"]
Layout = Literal["ldm_prefixed", "ldm", "diffusers"]
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
# lllyasviel's hint encoder: 16, 16, 32, 32, 96, 96, 256 channels; diffusers writes the distinct widths.
DEFAULT_HINT_CHANNELS = (16, 32, 96, 256)

# The diffusers ControlNetModel arguments a ControlNet file can differ in; the rest keep their defaults.
_UNET_FIELDS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block",
                "transformer_layers_per_block", "attention_head_dim", "cross_attention_dim",
                "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
                "projection_class_embeddings_input_dim")


@dataclass(frozen=True)
class ControlNetInfo:
    """One ControlNet file described: enough to build its module and map its keys."""

    name: str  # the file's name (stem), as lists and error messages show it
    family: Family
    layout: Layout
    model_channels: int
    hint_channels: int
    context_dim: int
    config_items: tuple[tuple[str, Any], ...]  # diffusers ControlNetModel kwargs, frozen
    config_source: str  # why this config: "config x.yaml beside the file" / "detected from the keys"
    heads_guessed: bool = False

    @property
    def config(self) -> dict[str, Any]:
        """The diffusers `ControlNetModel(**config)` arguments."""
        return dict(self.config_items)

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.config["block_out_channels"])


def detect_layout(keys: Mapping[str, Any] | set[str], name: str = "") -> Layout:
    """Which of the three layouts users download a state dict is in."""
    if LDM_PREFIX + "input_hint_block.0.weight" in keys:
        return "ldm_prefixed"
    if "input_hint_block.0.weight" in keys:
        return "ldm"
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "diffusers"
    hint = ""
    if any("lora_controlnet" in k for k in keys):
        hint = " It looks like a Control-LoRA, which is not supported."
    elif any(k.startswith("adapter.") or k.startswith("body.") for k in keys):
        hint = " It looks like a T2I-Adapter, which is not supported."
    raise CheckpointError(
        f"{name or 'This file'} is not a ControlNet in a known layout: it has none of the keys "
        "control_model.input_hint_block.0.weight, input_hint_block.0.weight (lllyasviel's layout) or "
        f"controlnet_cond_embedding.conv_in.weight (diffusers' layout).{hint} "
        "Put only ControlNet model files in models/ControlNet."
    )


def describe_controlnet(shapes: Mapping[str, tuple[int, ...]], path: Path | str | None = None,
                        config: Path | None = None) -> ControlNetInfo:
    """Layout, family and module config of a ControlNet state dict (key → shape).

    `config` (or, when None, a `.yaml` beside `path`) takes precedence over detection from the keys.
    """
    path = Path(path) if path is not None else None
    name = path.stem if path is not None else "ControlNet"
    filename = path.name if path is not None else name
    layout = detect_layout(shapes, filename)
    if config is None and path is not None:
        config = beside_yaml(path)
        source = f"config {config.name} beside the file" if config else ""
    else:
        source = f"config {config}" if config else ""
    if config is not None:
        family, kwargs = load_controlnet_yaml(config)
        guessed = False
    else:
        family, kwargs = _detect(shapes, layout, filename)
        source, guessed = "detected from the keys", True
    return ControlNetInfo(
        name=name, family=family, layout=layout,
        model_channels=int(kwargs["block_out_channels"][0]),
        hint_channels=int(kwargs["conditioning_channels"]),
        context_dim=int(kwargs["cross_attention_dim"]),
        config_items=tuple(sorted(kwargs.items())), config_source=source, heads_guessed=guessed,
    )


# ---------------------------------------------------------------------------------------- .yaml

def load_controlnet_yaml(path: Path) -> tuple[Family, dict[str, Any]]:
    """Family and ControlNetModel kwargs from a cldm-style `.yaml`; errors name the file and the fix."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"Cannot read the ControlNet config {path}: {exc}") from exc
    try:
        return controlnet_config_from_params(_control_params(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"The ControlNet config {path} is not in lllyasviel's cldm format ({exc!r}): expected "
            "model.params.control_stage_config.params with model_channels, channel_mult, num_res_blocks, "
            "attention_resolutions, context_dim, hint_channels. Use the .yaml published with the model, "
            "or remove it to detect the architecture from the weights."
        ) from exc


def _control_params(data: Any) -> dict[str, Any]:
    # The published files nest it under model.params; accept the bare control_stage_config too.
    if isinstance(data, dict) and "model" in data:
        data = data["model"]["params"]
    if isinstance(data, dict) and "control_stage_config" in data:
        data = data["control_stage_config"]
    if isinstance(data, dict) and "params" in data:
        data = data["params"]
    if not isinstance(data, dict) or "model_channels" not in data:
        raise KeyError("control_stage_config")
    return data


def controlnet_config_from_params(p: Mapping[str, Any]) -> tuple[Family, dict[str, Any]]:
    """lllyasviel's `ControlNet(...)` constructor arguments → (family, ControlNetModel kwargs)."""
    unet = _unet_kwargs({**p, "out_channels": p.get("in_channels", 4)})
    kwargs = {k: unet[k] for k in _UNET_FIELDS if k in unet}
    kwargs["conditioning_channels"] = int(p["hint_channels"])
    kwargs["conditioning_embedding_out_channels"] = DEFAULT_HINT_CHANNELS
    depths = kwargs["transformer_layers_per_block"]
    middle = int(p.get("transformer_depth_middle", depths[-1]))
    attn = [t.startswith("CrossAttn") for t in kwargs["down_block_types"]]
    if attn[-1] and depths[-1] != middle:
        raise ValueError("transformer_depth_middle must equal the last level's transformer_depth")
    # diffusers' middle block reads the last entry; levels without attention ignore theirs. Writing
    # the middle depth there too makes a config read from a .yaml equal the one detected from keys.
    kwargs["transformer_layers_per_block"] = tuple(d if a else middle for d, a in zip(depths, attn, strict=True))
    family = _family("addition_embed_type" in kwargs, kwargs["cross_attention_dim"],
                     kwargs["use_linear_projection"])
    return family, kwargs


def _family(sdxl: bool, context_dim: int, linear: bool) -> Family:
    if sdxl:
        return "sdxl"
    if context_dim in (768, 1024):
        return "sd1" if context_dim == 768 else "sd2"
    return "sd2" if linear else "sd1"


# ------------------------------------------------------------------------------------ from keys

@dataclass
class _Level:
    channels: int
    res_blocks: int
    depth: int  # transformer blocks per attention; 0 = no attention at this level


def _count(keys: list[str], pattern: str) -> int:
    found = {m.group(1) for k in keys if (m := re.match(pattern, k))}
    return len(found)


def _detect(shapes: Mapping[str, tuple[int, ...]], layout: Layout, filename: str) -> tuple[Family, dict[str, Any]]:
    bare = {k.removeprefix(LDM_PREFIX): tuple(v) for k, v in shapes.items()} if layout == "ldm_prefixed" else shapes
    keys = list(bare)
    try:
        if layout == "diffusers":
            in_key, adm_key, mid = "conv_in.weight", "add_embedding.linear_1.weight", r"mid_block\.attentions\.0\."
            levels = _diffusers_levels(bare, keys)
            hint = [bare["controlnet_cond_embedding.conv_in.weight"]]
            hint += [bare[f"controlnet_cond_embedding.blocks.{i}.weight"]
                     for i in range(_count(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight"))]
        else:
            in_key, adm_key, mid = "input_blocks.0.0.weight", "label_emb.0.0.weight", r"middle_block\.1\."
            levels = _ldm_levels(bare, keys)
            indices = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_hint_block\.(\d+)\.weight$", k)))
            hint = [bare[f"input_hint_block.{i}.weight"] for i in indices[:-1]]  # the last one is conv_out
        in_channels = bare[in_key][1]
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{filename}: the ControlNet's keys are incomplete (no {exc}); "
                              "the file may be damaged: download it again.") from exc
    mid_depth = _count(keys, mid + r"transformer_blocks\.(\d+)\.")
    if mid_depth == 0:
        raise CheckpointError(f"{filename}: a ControlNet without attention in its middle block is not supported.")
    if len({lv.res_blocks for lv in levels}) != 1:
        raise CheckpointError(f"{filename}: levels with different numbers of res blocks are not supported.")
    context = next((s[1] for k, s in bare.items() if k.endswith("attn2.to_k.weight")), None)
    linear = next((len(s) == 2 for k, s in bare.items() if k.endswith(".proj_in.weight")), False)
    if context is None:
        raise CheckpointError(f"{filename}: no cross-attention found (attn2.to_k); not a Stable Diffusion ControlNet.")
    sdxl = adm_key in bare
    family = _family(sdxl, context, linear)
    channels = [lv.channels for lv in levels]
    if family == "sd1":
        heads = [8 if c % 8 == 0 else 1 for c in channels]
    else:
        heads = [max(1, c // 64) for c in channels]
    kwargs: dict[str, Any] = {
        "in_channels": int(in_channels),
        "conditioning_channels": int(hint[0][1]),
        # conv_in, then every second block (the stride-2 convs) sets a new width
        "conditioning_embedding_out_channels": tuple(int(s[0]) for s in [hint[0], *hint[2::2]]),
        "down_block_types": tuple("CrossAttnDownBlock2D" if lv.depth else "DownBlock2D" for lv in levels),
        "block_out_channels": tuple(int(c) for c in channels),
        "layers_per_block": levels[0].res_blocks,
        # A level without attention ignores its entry; the middle block reads the last one.
        "transformer_layers_per_block": tuple(lv.depth or mid_depth for lv in levels),
        "attention_head_dim": tuple(heads),
        "cross_attention_dim": int(context),
        "use_linear_projection": bool(linear),
    }
    if levels[-1].depth and levels[-1].depth != mid_depth:
        raise CheckpointError(f"{filename}: the middle block's transformer depth ({mid_depth}) differs from the "
                              f"last level's ({levels[-1].depth}); diffusers' ControlNetModel cannot hold it.")
    if sdxl:
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=int(bare[adm_key][1]))
    return family, kwargs


def _ldm_levels(shapes: Mapping[str, tuple[int, ...]], keys: list[str]) -> list[_Level]:
    # input_blocks.1.. hold res blocks (optionally + a SpatialTransformer); a Downsample ends a level.
    levels: list[list[int]] = [[]]
    j = 1
    while True:
        if f"input_blocks.{j}.0.op.weight" in shapes:
            levels.append([])
        elif f"input_blocks.{j}.0.in_layers.2.weight" in shapes:
            levels[-1].append(j)
        else:
            break
        j += 1
    out = []
    for blocks in levels:
        first = blocks[0]
        depth = _count(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        out.append(_Level(shapes[f"input_blocks.{first}.0.in_layers.2.weight"][0], len(blocks), depth))
    return out


def _diffusers_levels(shapes: Mapping[str, tuple[int, ...]], keys: list[str]) -> list[_Level]:
    out = []
    for b in range(_count(keys, r"down_blocks\.(\d+)\.resnets\.")):
        res = _count(keys, rf"down_blocks\.{b}\.resnets\.(\d+)\.")
        depth = _count(keys, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.")
        out.append(_Level(shapes[f"down_blocks.{b}.resnets.0.conv1.weight"][0], res, depth))
    return out
