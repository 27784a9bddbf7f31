"""Load a ControlNet file into diffusers' `ControlNetModel` strictly, and write one back in LDM layout.

Files are read by the checkpoint loader's reader (`modules.models.load.read_state_dict`): safetensors,
or `torch.load(weights_only=True)`, so a pickle that would run code is refused before it can. The
module is built on the meta device and its parameters are assigned from the file's tensors (cast to
the wanted dtype), so the weights are never held twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel

from modules.controlnet.keys import build_controlnet, controlnet_key_rules
from modules.controlnet.spec import LDM_PREFIX, ControlNetInfo, describe_controlnet
from modules.errors import CheckpointError
from modules.models.convert import DROPPED_PATTERNS, SCHEDULE_BUFFERS
from modules.models.load import _materialise, read_state_dict, write_safetensors

# lllyasviel's v1.0 releases (control_sd15_canny.pth, ...) hold the whole SD 1.5 model beside the
# ControlNet; those parts are not the ControlNet's and are skipped, as A1111's extension does.
_BASE_MODEL_KEY = re.compile(r"^(model\.diffusion_model\.|first_stage_model\.|cond_stage_model\.)")


@dataclass
class LoadedControlNet:
    """A ControlNet ready to run: the module, what it is, and the file it came from."""

    info: ControlNetInfo
    model: ControlNetModel
    path: Path | None = None


def _is_base_model_key(key: str) -> bool:
    return bool(_BASE_MODEL_KEY.match(key)) or key in SCHEDULE_BUFFERS or any(p.search(key) for p in DROPPED_PATTERNS)


def controlnet_state_from_file(state: Mapping[str, torch.Tensor], info: ControlNetInfo,
                               source: str = "ControlNet file") -> dict[str, torch.Tensor]:
    """A state dict in the file's layout → the `ControlNetModel` state dict, strictly.

    Every parameter must be present with its shape; anything else in the file is an error naming
    the keys (except the base SD model a v1.0 `control_model.` file carries).
    """
    rules = controlnet_key_rules(info.config)
    if info.layout == "diffusers":
        source_key = {r.hf_keys[0]: r.hf_keys[0] for r in rules}
    else:
        prefix = LDM_PREFIX if info.layout == "ldm_prefixed" else ""
        source_key = {prefix + r.ldm_key: r.hf_keys[0] for r in rules}
    expected = build_controlnet(info.config, "meta").state_dict()
    missing = [k for k in source_key if k not in state]
    ignore = info.layout == "ldm_prefixed"
    unexpected = [k for k in state if k not in source_key and not (ignore and _is_base_model_key(k))]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(expected[hf].shape)}"
                   for k, hf in source_key.items() if k in state and state[k].shape != expected[hf].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_layout_message(source, info, missing, unexpected, wrong_shape))
    return {hf: state[k] for k, hf in source_key.items()}


def _layout_message(source: str, info: ControlNetInfo, missing: list[str], unexpected: list[str],
                    wrong_shape: list[str]) -> str:
    parts = [f"{source} is not in the layout of an {info.family_name} ControlNet "
             f"({info.layout} layout, {info.config_source})."]
    if missing:
        parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}.")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(sorted(unexpected)[:5])}.")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} key(s) of another shape, first: {'; '.join(wrong_shape[:3])}.")
    if info.heads_guessed:
        parts.append("The file may be damaged (download it again) or not a ControlNet.")
    else:
        parts.append("Check that the .yaml beside it belongs to this file, or remove it to detect the "
                     "architecture from the weights.")
    return " ".join(parts)


def load_controlnet(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    config: Path | None = None) -> LoadedControlNet:
    """Read, describe and strictly load a ControlNet file (any supported layout) onto `device`."""
    path = Path(path)
    state, _ = read_state_dict(path)
    info = describe_controlnet({k: tuple(v.shape) for k, v in state.items()}, path, config)
    return LoadedControlNet(info, controlnet_from_state(state, info, device, dtype, source=path.name), path)


def controlnet_from_state(state: Mapping[str, torch.Tensor], info: ControlNetInfo,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          source: str = "ControlNet file") -> ControlNetModel:
    """A filled, eval-mode `ControlNetModel` from a state dict in any supported layout."""
    converted = controlnet_state_from_file(state, info, source)
    with init_empty_weights(include_buffers=False):
        model = ControlNetModel(**info.config)
    return _materialise(model, converted, dtype, torch.device(device), "ControlNet", source)


def controlnet_to_ldm(state: Mapping[str, torch.Tensor], info: ControlNetInfo,
                      prefix: str = LDM_PREFIX) -> dict[str, torch.Tensor]:
    """The inverse of loading: a `ControlNetModel` state dict → lllyasviel's names (with `prefix`)."""
    return {prefix + r.ldm_key: state[r.hf_keys[0]] for r in controlnet_key_rules(info.config)}


def save_controlnet(model: ControlNetModel, info: ControlNetInfo, path: str | Path,
                    dtype: torch.dtype | None = None, prefix: str = LDM_PREFIX) -> Path:
    """Write `model` as one LDM-layout .safetensors, atomically (never a half-written file at `path`)."""
    return write_safetensors(controlnet_to_ldm(model.state_dict(), info, prefix), path, dtype)
