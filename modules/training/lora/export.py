"""Trained adapters → a LoRA file in kohya's naming, with the training parameters in its metadata.

The layers are named as kohya's sd-scripts names them (the diffusers module path with underscores:
`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`, `.lora_up.weight`,
`.alpha`; `lora_te_` / `lora_te1_` / `lora_te2_` for text encoders), which A1111, ComfyUI, Forge and
diffusers all load. The file is written to a temporary name and moved into place, so a crash or a
stop never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from modules.models.load import SDModel
from modules.networks.lora import kohya_name, text_encoder_prefixes

ADAPTER = "default"


def _adapter_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def kohya_state_dict(model: SDModel, alpha: float, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The adapters injected into `model` (peft LoRA layers) as a kohya-named state dict."""
    components: list[tuple[str, torch.nn.Module, bool]] = [("lora_unet_", model.unet, False)]
    for index, encoder in enumerate(model.text_encoders):
        components.append((text_encoder_prefixes(len(model.text_encoders), index)[0], encoder, True))
    state: dict[str, torch.Tensor] = {}
    for prefix, module, is_text in components:
        for path, layer in _adapter_layers(module):
            if is_text:  # files say text_model.… whatever the transformers version calls it
                path = "text_model." + path.removeprefix("text_model.")
            name = kohya_name(prefix, path)
            down = layer.lora_A[ADAPTER].weight.detach()
            up = layer.lora_B[ADAPTER].weight.detach()
            state[f"{name}.lora_down.weight"] = down.to("cpu", dtype).contiguous()
            state[f"{name}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
            state[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return state


def addnet_hashes(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya precomputes them: sha256 of the tensor data as
    safetensors lays it out (what A1111 hashes for a LoRA), and the old 8-digit hash."""
    blob = save(state)
    header = struct.unpack("<Q", blob[:8])[0]
    model_hash = hashlib.sha256(blob[8 + header:]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def save_lora_file(state: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> Path:
    """Write atomically: a temporary file in the same folder, then os.replace onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
