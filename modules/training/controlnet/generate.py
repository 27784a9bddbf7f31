"""Generate with the default ControlNet through the product's own txt2img path and ControlNet units.

A unit as a user sets it: module `canny` on the source picture with pixel perfect on (so the map is
detected at the generation size, 128 px, thresholds 100/200: the training maps exactly), the
ControlNet by its file name, Balanced control mode, guidance 0 to 1.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PIL import Image

from modules.controlnet.registry import ControlNetRegistry
from modules.controlnet.units import ControlUnit
from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import GenerationResult, generate
from modules.training.controlnet.dataset import CANNY_HIGH, CANNY_LOW


def canny_unit(model: str, picture: Image.Image | None, weight: float = 1.0) -> ControlUnit:
    """An enabled canny unit for the ControlNet named `model` on `picture` (None: no unit)."""
    return ControlUnit(enabled=True, module="canny", model=model, weight=weight, image=picture,
                       threshold_a=CANNY_LOW, threshold_b=CANNY_HIGH, pixel_perfect=True,
                       control_mode="Balanced", resize_mode="Just Resize")


def txt2img(registry: ModelRegistry, controlnets: ControlNetRegistry, params: Txt2ImgParams,
            unit: ControlUnit | None = None) -> GenerationResult:
    """One txt2img request with the loaded checkpoint and, if given, the ControlNet unit."""
    if unit is not None:
        params = replace(params, controlnet_units=(unit,))
    return generate(params, registry, controlnets=controlnets)


def controlnet_registry(path: Path) -> ControlNetRegistry:
    """A registry holding the folder of the ControlNet file `path`."""
    return ControlNetRegistry([path.parent])
