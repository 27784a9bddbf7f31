"""The ControlNet's architecture for a base checkpoint, its start from the base UNet, and its files.

The architecture is written as a cldm `.yaml` (lllyasviel's `cldm_v15.yaml` format) derived from the
base model's own `.yaml`, and the module is built from that file's reading, so the shipped `.yaml`
and the trained weights can never disagree about heads or widths.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import ControlNetModel

from modules.controlnet.keys import build_controlnet
from modules.controlnet.load import save_controlnet
from modules.controlnet.spec import controlnet_config_from_params, describe_controlnet

# The base UNet's parameters a ControlNet copies (its encoder half); the rest of a ControlNet is its own.
_SHARED_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
_UNET_PARAMS_KEPT = ("image_size", "in_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                     "channel_mult", "num_heads", "num_head_channels", "use_spatial_transformer",
                     "transformer_depth", "context_dim", "use_linear_in_transformer", "legacy")


def cldm_config(base_config: dict[str, Any], hint_channels: int = 3) -> dict[str, Any]:
    """The cldm `.yaml` content of a ControlNet for the LDM checkpoint config `base_config`."""
    params = base_config["model"]["params"]
    unet = params["unet_config"]["params"]
    control = {k: unet[k] for k in _UNET_PARAMS_KEPT if k in unet}
    control["hint_channels"] = hint_channels
    base_params = {k: params[k] for k in ("linear_start", "linear_end", "timesteps", "image_size", "channels",
                                          "scale_factor") if k in params}
    return {"model": {
        "target": "cldm.cldm.ControlLDM",
        "params": {**base_params, "control_key": "hint", "only_mid_control": False,
                   "control_stage_config": {"target": "cldm.cldm.ControlNet", "params": control}},
    }}


def controlnet_kwargs(cldm: dict[str, Any]) -> dict[str, Any]:
    """diffusers `ControlNetModel` arguments of a cldm config, read as the loader reads the `.yaml`."""
    _, kwargs = controlnet_config_from_params(cldm["model"]["params"]["control_stage_config"]["params"])
    return kwargs


def controlnet_from_unet(unet: torch.nn.Module, cldm: dict[str, Any]) -> ControlNetModel:
    """A ControlNet whose encoder starts as a copy of `unet`'s; its hint encoder is drawn from torch's
    random state and its zero convolutions are zero (diffusers' ControlNetModel makes them so)."""
    model = build_controlnet(controlnet_kwargs(cldm), "cpu", torch.float32)
    shared = {k: v for k, v in unet.state_dict().items() if k.startswith(_SHARED_PREFIXES)}
    missing, unexpected = model.load_state_dict(shared, strict=False)
    if unexpected:
        raise ValueError(f"the UNet has encoder weights the ControlNet lacks: {unexpected[:5]}")
    own = [k for k in missing if not k.startswith(("controlnet_cond_embedding.", "controlnet_down_blocks.",
                                                   "controlnet_mid_block."))]
    if own:
        raise ValueError(f"encoder weights missing from the UNet: {own[:5]}")
    return model


def write_controlnet(model: ControlNetModel, cldm: dict[str, Any], path: Path, header: str) -> Path:
    """`path` (.safetensors, fp16, `control_model.` LDM names) and the cldm `.yaml` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path = path.with_suffix(".yaml")
    yaml_path.write_text(header + yaml.safe_dump(cldm, sort_keys=False), encoding="utf-8")
    info = describe_controlnet({k: tuple(v.shape) for k, v in model.state_dict().items()}, None, yaml_path)
    info = replace(info, name=path.stem, layout="ldm_prefixed")
    return save_controlnet(model, info, path, dtype=torch.float16)
