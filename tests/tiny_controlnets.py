"""Tiny ControlNets in the layouts users download, for tests.

Each has the structure of its family's published ControlNet (levels, res blocks, where attention
sits, linear or conv proj_in, SDXL's label embedding) at the widths of the tiny checkpoints of
`tests/tiny_models.py`, so the two fit together. Parameters are perturbed away from their init (the
zero convs start at zero) so that a wrong key map cannot hide behind equal values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import ControlNetModel
from safetensors.torch import save_file

from modules.controlnet.keys import build_controlnet
from modules.controlnet.load import controlnet_to_ldm
from modules.controlnet.spec import ControlNetInfo, controlnet_config_from_params

KINDS = ("sd1", "sd2", "sdxl")
LAYOUTS = ("ldm_prefixed", "ldm", "diffusers")

# lllyasviel's ControlNet(...) arguments (cldm yaml `control_stage_config.params`) at tiny widths.
_COMMON = {"image_size": 8, "in_channels": 4, "hint_channels": 3, "model_channels": 32, "num_res_blocks": 2,
           "use_spatial_transformer": True, "legacy": False}
TINY_PARAMS: dict[str, dict[str, Any]] = {
    # as tests/tiny_models.py's sd1: v1 structure, 2 heads, context 32, conv proj_in
    "sd1": {**_COMMON, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 2, 2], "num_heads": 2,
            "transformer_depth": 1, "context_dim": 32},
    # as its sd2-v: 16 channels per head, linear proj_in
    "sd2": {**_COMMON, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 2, 2], "num_head_channels": 16,
            "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 32},
    # as its sdxl: three levels, no attention at the first, depths 1 and 2, label embedding
    "sdxl": {**_COMMON, "attention_resolutions": [4, 2], "channel_mult": [1, 2, 2], "num_head_channels": 16,
             "use_linear_in_transformer": True, "transformer_depth": [0, 1, 2], "context_dim": 64,
             "adm_in_channels": 32 + 6 * 256},
}


def cldm_yaml(params: dict[str, Any]) -> str:
    """A `.yaml` in lllyasviel's cldm format around ControlNet constructor arguments."""
    doc = {"model": {"target": "cldm.cldm.ControlLDM",
                     "params": {"control_stage_config": {"target": "cldm.cldm.ControlNet", "params": params}}}}
    return yaml.safe_dump(doc, sort_keys=False)


def build_random_controlnet(kind: str, seed: int = 0) -> tuple[dict[str, Any], ControlNetModel]:
    """(ControlNetModel config, module with random, non-zero weights) for a tiny ControlNet of `kind`."""
    _, config = controlnet_config_from_params(TINY_PARAMS[kind])
    torch.manual_seed(seed)
    model = build_controlnet(config, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return config, model.eval()


def file_state(model: ControlNetModel, info: ControlNetInfo, layout: str) -> dict[str, torch.Tensor]:
    """The module's weights as a file of `layout` holds them."""
    state = model.state_dict()
    if layout == "diffusers":
        return {k: v.contiguous() for k, v in state.items()}
    prefix = "control_model." if layout == "ldm_prefixed" else ""
    return {k: v.contiguous() for k, v in controlnet_to_ldm(state, info, prefix).items()}


def write_tiny_controlnet(folder: Path, kind: str, layout: str = "ldm_prefixed", stem: str | None = None,
                          seed: int = 0, suffix: str = ".safetensors", with_yaml: bool = False,
                          dtype: torch.dtype | None = None, gain: float = 1.0,
                          hint_gain: float = 1.0) -> tuple[Path, ControlNetModel]:
    """Write a tiny ControlNet file (+ a cldm `.yaml` beside it if asked); returns (path, the module).

    Random weights steer the UNet only a little, and hardly by the hint (the hint encoder's default
    init shrinks its input layer by layer to nothing but biases), while a test of how control is
    applied wants an effect of the map well above rounding: `gain` multiplies the output
    convolutions, `hint_gain` every weight of the hint encoder (3 makes its output depend on the
    map about as much as on the latents).
    """
    folder.mkdir(parents=True, exist_ok=True)
    config, model = build_random_controlnet(kind, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")):
                p.mul_(gain)
            elif name.startswith("controlnet_cond_embedding.") and name.endswith(".weight"):
                p.mul_(hint_gain)
    path = folder / f"{stem or f'tiny-cn-{kind}-{layout}'}{suffix}"
    state = file_state(model, _info_for(config), layout)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 1}, path)
    else:
        torch.save(state, path)
    if with_yaml:
        path.with_suffix(".yaml").write_text(cldm_yaml(TINY_PARAMS[kind]))
    return path, model


def _info_for(config: dict[str, Any]) -> ControlNetInfo:
    # Only the key table matters for writing; it depends on the config alone.
    return ControlNetInfo(name="tiny", family="sd1", layout="ldm", model_channels=0, hint_channels=0,
                          context_dim=0, config_items=tuple(sorted(config.items())), config_source="test")
