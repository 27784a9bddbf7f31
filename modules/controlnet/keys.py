"""The ControlNet key table: lllyasviel's LDM names ↔ diffusers `ControlNetModel` names.

A ControlNet is a copy of the UNet's encoder half (same names as in a checkpoint, so the UNet rules of
`modules.models.convert` map them) plus three parts of its own:
  input_hint_block.0 / .2 / ... / .{2n}   ↔ controlnet_cond_embedding.conv_in / blocks.{k} / conv_out
  zero_convs.{i}.0                        ↔ controlnet_down_blocks.{i}
  middle_block_out.0                      ↔ controlnet_mid_block
The table is derived from the module's own keys (built on the meta device) and drives loading and
exporting alike, so a round trip is exact by construction. LDM names here carry no prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from diffusers import ControlNetModel

from modules.models.arch import ModelArch
from modules.models.convert import KeyRule, _unet_ldm_key  # the checkpoint's UNet rules, shared

MODULE = "controlnet"
_OWN_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
            "controlnet_mid_block": "middle_block_out.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0"}


def build_controlnet(config: Mapping[str, Any], device: str | torch.device = "meta",
                     dtype: torch.dtype | None = None) -> ControlNetModel:
    """An empty `ControlNetModel` for `config` on `device` ("meta" allocates nothing)."""
    with torch.device(device):
        model = ControlNetModel(**config)
    return model.to(dtype=dtype) if dtype is not None else model


def _ldm_key(key: str, unet_view: ModelArch, hint_convs: int) -> str:
    for hf, ldm in _OWN_TOP.items():
        if key.startswith(hf + "."):
            return ldm + key[len(hf):]
    parts = key.split(".")
    if parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{parts[1]}.0." + ".".join(parts[2:])
    if key.startswith("controlnet_cond_embedding.blocks."):
        return f"input_hint_block.{2 * (int(parts[2]) + 1)}." + ".".join(parts[3:])
    if key.startswith("controlnet_cond_embedding.conv_out."):
        return f"input_hint_block.{2 * (hint_convs + 1)}." + parts[-1]
    return _unet_ldm_key(key, unet_view)  # conv_in, down_blocks.*, mid_block.*


@lru_cache(maxsize=16)
def _rules(config_items: tuple[tuple[str, Any], ...]) -> tuple[KeyRule, ...]:
    config = dict(config_items)
    model = build_controlnet(config, "meta")
    # _unet_ldm_key reads only the UNet kwargs that the encoder half shares with a checkpoint's UNet.
    unet_view = ModelArch(family="sd1", unet={"layers_per_block": config.get("layers_per_block", 2),
                                              "down_block_types": config["down_block_types"]},
                          vae={}, text_encoders=())
    hint_convs = len(model.controlnet_cond_embedding.blocks)
    return tuple(KeyRule(MODULE, (key,), _ldm_key(key, unet_view, hint_convs)) for key in model.state_dict())


def controlnet_key_rules(config: Mapping[str, Any]) -> tuple[KeyRule, ...]:
    """One rule per `ControlNetModel(**config)` tensor: its diffusers name and its LDM name (no prefix)."""
    return _rules(tuple(sorted(config.items())))
