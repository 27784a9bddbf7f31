"""Tiny checkpoints in the real single-file layout, for tests.

Each keeps the real structure of its architecture (levels, res blocks per level, where attention
sits, text tower kind and layer choice) at small widths, and is written with a same-named .yaml in
the original config format, so it loads through exactly the code a user's file takes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import yaml

from modules.devices import DevicePolicy
from modules.models.arch import parse_ldm_config
from modules.models.build import build_text_encoder, build_unet, build_vae
from modules.models.load import SDModel, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
KINDS = ("sd1", "sd1-inpainting", "sd2-v", "sdxl")

_TEXT = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64}
_VAE = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3,
                                    "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1,
                                    "attn_resolutions": [], "dropout": 0.0}}


def tiny_config(kind: str) -> dict[str, Any]:
    """An LDM/SGM YAML document (as a dict) for a tiny model of `kind`."""
    name = {"sd1": "v1-inference", "sd1-inpainting": "v1-inpainting-inference",
            "sd2-v": "v2-inference-v", "sdxl": "sd_xl_base"}[kind]
    data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    params = data["model"]["params"]
    first = params["first_stage_config"]["params"]
    first.update(copy.deepcopy(_VAE))
    if kind == "sdxl":
        unet = params["network_config"]["params"]
        unet.update(model_channels=32, channel_mult=[1, 2, 2], transformer_depth=[0, 1, 2],
                    num_head_channels=16, context_dim=64, adm_in_channels=32 + 6 * 256)
        for emb in params["conditioner_config"]["params"]["emb_models"][:2]:
            emb["params"]["text_config"] = dict(_TEXT)
        params["conditioner_config"]["params"]["emb_models"][0]["params"]["layer_idx"] = 2
    else:
        unet = params["unet_config"]["params"]
        unet.update(model_channels=32, channel_mult=[1, 2, 2, 2], context_dim=32, image_size=8)
        if "num_heads" in unet:
            unet["num_heads"] = 2
        else:
            unet["num_head_channels"] = 16
        cond = params["cond_stage_config"]
        cond.setdefault("params", {})["text_config"] = dict(_TEXT)
    return data


def build_random_model(kind: str, seed: int = 0) -> SDModel:
    data = tiny_config(kind)
    arch = parse_ldm_config(data)
    torch.manual_seed(seed)
    unet, vae = build_unet(arch), build_vae(arch)
    encoders = [build_text_encoder(s) for s in arch.text_encoders]
    # Random init leaves zero-initialised output layers; perturb every tensor so a wrong key map
    # cannot hide behind zeros.
    for module in (unet, vae, *encoders):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    model = SDModel(arch=arch, unet=unet.eval(), vae=vae.eval(), text_encoders=[e.eval() for e in encoders])
    model.arch.raw.update(data)
    return model


def write_tiny_checkpoint(folder: Path, kind: str, stem: str | None = None, seed: int = 0,
                          with_yaml: bool = True, dtype: torch.dtype | None = None) -> Path:
    """Write `<stem>.safetensors` (+ `<stem>.yaml`) for a tiny random model of `kind`."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or f"tiny-{kind}"
    model = build_random_model(kind, seed)
    path = save_checkpoint(model, folder / f"{stem}.safetensors", dtype=dtype)
    if with_yaml:
        (folder / f"{stem}.yaml").write_text(yaml.safe_dump(tiny_config(kind), sort_keys=False))
    return path


CPU = DevicePolicy.cpu()


def write_tiny_vae(path: Path, seed: int, kind: str = "sd1") -> Path:
    """A separate VAE file (the first_stage_model weights without their prefix, as released VAEs)."""
    from safetensors.torch import save_file

    from modules.models.convert import modules_to_ldm

    model = build_random_model(kind, seed=seed)
    state = modules_to_ldm(model.module_states(), model.arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in state.items()
               if k.startswith("first_stage_model.")}, str(path))
    return path
