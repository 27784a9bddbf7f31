"""Which config a checkpoint needs: a same-named .yaml beside it, else detection from its keys.

Detection reads only key names and shapes, so it works on any file whatever its dtype.

SD 2.x v-prediction (768-v) and epsilon (512-base) files have identical keys; without a .yaml the
choice is made by this documented heuristic, in order:
1. safetensors metadata `modelspec.prediction_type` ("v" / "v_prediction" / "epsilon"), if present;
2. the file name: "768", "-v", "_v", "v-pred" or "vpred" as a word part → v-prediction
   (v2-1_768-ema-pruned, 768-v-ema), otherwise epsilon (v2-1_512-ema-pruned, 512-base-ema).
Put the publisher's .yaml beside the file (e.g. 768-v-ema.yaml) to make the choice explicit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from modules.errors import CheckpointError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

_V_NAME = re.compile(r"(768|v[-_ ]?pred|(^|[-_ .])v($|[-_ .]))", re.IGNORECASE)


def beside_yaml(checkpoint: Path) -> Path | None:
    """The user's config: same stem, .yaml or .yml, in the checkpoint's folder."""
    for suffix in (".yaml", ".yml"):
        candidate = checkpoint.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def detect_config(
    shapes: Mapping[str, tuple[int, ...]], name: str = "", metadata: Mapping[str, str] | None = None
) -> tuple[Path, str]:
    """The shipped config for a state dict (key → shape), and why it was chosen."""
    unet_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if unet_in is None:
        raise CheckpointError(
            f"{name or 'This file'} holds no Stable Diffusion UNet (no key "
            "model.diffusion_model.input_blocks.0.0.weight); it is not a full checkpoint. "
            "VAE files belong in models/VAE, LoRA files in models/Lora."
        )
    inpaint = unet_in[1] == 9
    if "conditioner.embedders.1.model.ln_final.weight" in shapes:
        return CONFIG_DIR / "sd_xl_base.yaml", "SDXL base: CLIP-L + OpenCLIP bigG text encoders"
    if "conditioner.embedders.0.model.ln_final.weight" in shapes:
        return CONFIG_DIR / "sd_xl_refiner.yaml", "SDXL refiner: OpenCLIP bigG text encoder only"
    if "cond_stage_model.model.ln_final.weight" in shapes:
        if inpaint:
            return CONFIG_DIR / "v2-inpainting-inference.yaml", "SD 2.x inpainting: OpenCLIP + 9-channel UNet"
        if is_v_prediction(name, metadata):
            return CONFIG_DIR / "v2-inference-v.yaml", "SD 2.x, v-prediction by name/metadata heuristic"
        return CONFIG_DIR / "v2-inference.yaml", "SD 2.x, epsilon prediction by name/metadata heuristic"
    if "cond_stage_model.transformer.text_model.final_layer_norm.weight" in shapes:
        if inpaint:
            return CONFIG_DIR / "v1-inpainting-inference.yaml", "SD 1.x inpainting: 9-channel UNet"
        return CONFIG_DIR / "v1-inference.yaml", "SD 1.x: CLIP ViT-L text encoder"
    raise CheckpointError(
        f"Cannot tell the architecture of {name or 'this file'}: it has a UNet but no known text encoder. "
        "Put the model's .yaml config beside it with the same name."
    )


def is_v_prediction(name: str, metadata: Mapping[str, str] | None = None) -> bool:
    prediction = (metadata or {}).get("modelspec.prediction_type", "").lower()
    if prediction:
        return prediction.startswith("v")
    return bool(_V_NAME.search(Path(name).stem))
