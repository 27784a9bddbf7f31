"""LoRA training defaults chosen from the base model, so `train-lora --data DIR --name NAME` works.

Full-size SD 1.x / 2.x / SDXL train well with the usual community values (kohya's: learning rate
1e-4, batch 1, constant). The embedded default model is small (64-channel UNet) and learns a new
shape only with a much higher learning rate and larger batches: measured on it, 2e-3, batch 8,
cosine decay and min-SNR 5 teach it a new shape in 1000 steps (tests/test_lora.py), where 1e-4
at batch 1 does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modules.models.arch import ModelArch
    from modules.training.lora.train import LoraTrainSettings

# Below this UNet width a model counts as small (SD's is 320, the embedded model's 64).
SMALL_UNET_CHANNELS = 128


@dataclass(frozen=True)
class LoraDefaults:
    rank: int = 16
    alpha: float = 8.0
    learning_rate: float = 1e-4
    steps: int = 1000
    batch_size: int = 1
    lr_schedule: str = "constant"
    min_snr_gamma: float = 0.0
    why: str = "full-size model: the usual values"


FULL_SIZE = LoraDefaults()
SMALL = LoraDefaults(alpha=16.0, learning_rate=2e-3, batch_size=8, lr_schedule="cosine", min_snr_gamma=5.0,
                     why="small model (like the embedded one): a higher learning rate, batches of 8, cosine, min-SNR 5")
TUNED = tuple(k for k in asdict(FULL_SIZE) if k != "why")  # the settings these defaults fill


def defaults_for(arch: ModelArch) -> LoraDefaults:
    """The defaults for a base model of this architecture (by its family and its UNet's width)."""
    width = (arch.unet.get("block_out_channels") or (320,))[0]
    return SMALL if width < SMALL_UNET_CHANNELS else FULL_SIZE


def defaults_for_file(path: Path, config: Path | None = None) -> LoraDefaults:
    """`defaults_for` of a checkpoint file, reading only its key names and shapes (no weights)."""
    from modules.models.arch import load_ldm_config
    from modules.models.detect import beside_yaml, detect_config

    config = config or beside_yaml(path)
    if config is None:
        if path.suffix.lower() != ".safetensors":
            return FULL_SIZE  # a .ckpt would have to be unpickled whole just to look
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        config, _ = detect_config(shapes, path.name)
    return defaults_for(load_ldm_config(config))


def with_defaults(settings: LoraTrainSettings, defaults: LoraDefaults, given: set[str]) -> LoraTrainSettings:
    """`settings` with every tuned value the user did not give taken from `defaults`."""
    return replace(settings, **{k: getattr(defaults, k) for k in TUNED if k not in given})
