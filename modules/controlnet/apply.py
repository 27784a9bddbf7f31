"""ControlNet units in a generation: prepare each unit's hint once, then give the UNet its residuals.

The rules are those of A1111's ControlNet extension (`scripts/hook.py`, `scripts/controlnet.py`):

* Step window. A1111 hands the extension `sampling_step / sampling_steps`, and the unit sits out a
  step when that fraction is below `guidance_start` or above `guidance_end` (both ends inclusive).
  A1111 sets `sampling_step` from the sampler's callback *after* each step, so while step i
  (0-based) is being computed it still reads i - 1 (0 for the first two steps). That lag is part of
  the numbers users get, so it is kept (`step_fraction`).
* Weight. The 13 control outputs (12 skip connections + the middle block; 10 for SDXL) are each
  multiplied by the weight. "My prompt is more important" and "ControlNet is more important" both
  use soft injection: output i (0 = first skip, 12 = middle) gets weight * 0.825 ** (12 - i), and
  SDXL takes the first 10 of those 13 factors. "ControlNet is more important" also zeroes the
  control on the unconditional half of the CFG batch. In the hires. fix pass, canny and mlsd units
  always use soft injection; `hr_option` decides which passes a unit acts in.
* Several units: their outputs are summed, output by output, in unit order.
* Shuffle ControlNets (an SD 1.x/2.x file with "shuffle" in its name, how the extension recognises
  them) are global-average-pooled: control on the conditional half only, each output averaged over
  the picture after scaling.

inpaint_only on a unit's own mask also restores the picture outside the mask (controlnet/restore.py).
A unit with weight 0 or outside its window is not run at all: adding its zero residual would change
nothing, so the image is exactly the one without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import ControlNetModel
from PIL import Image

from modules.controlnet.hint import fit_map, hint_tensor
from modules.controlnet.infotext import unit_infotext
from modules.controlnet.preprocessors import (
    DEFAULT_ANNOTATOR_DIR,
    effective_settings,
    parse_resize_mode,
    pixel_perfect_resolution,
    resolve_module,
    run_module,
)
from modules.controlnet.registry import ControlNetRegistry
from modules.controlnet.restore import InpaintRestore, inpaint_restore
from modules.controlnet.units import HR_OPTIONS, ControlUnit, enabled_units
from modules.devices import execution_device
from modules.errors import UserError
from modules.models.load import SDModel

log = logging.getLogger(__name__)

SOFT_BASE = 0.825  # per level of depth, the extension's soft-injection factor
CONTROL_OUTPUTS = 13  # SD 1.x/2.x: 12 skip connections + the middle block
# Modules whose maps the extension always injects softly in the hires. fix pass (thin lines
# enlarged twice over give artifacts at full strength).
_SOFT_IN_HIRES = ("canny", "mlsd")
_INPAINT_MODULES = ("inpaint", "inpaint_only")


def step_fraction(step_index: int, total_steps: int) -> float:
    """The fraction of the run the extension sees while step `step_index` (0-based) is computed."""
    return max(step_index - 1, 0) / total_steps


def unit_acts_at(step_index: int, total_steps: int, start: float, end: float) -> bool:
    """Whether a unit with guidance window [start, end] acts in this step (the extension's test)."""
    fraction = step_fraction(step_index, total_steps)
    return not (fraction < start or fraction > end)


def control_scales(weight: float, count: int, soft: bool) -> list[float]:
    """The factor of each control output, first skip connection first, middle block last."""
    if soft:
        scales = [weight * (SOFT_BASE ** float(CONTROL_OUTPUTS - 1 - i)) for i in range(CONTROL_OUTPUTS)]
    else:
        scales = [weight] * CONTROL_OUTPUTS
    return scales[:count]  # SDXL: the first 10, as the extension takes them


def acts_in_pass(hr_option: str, hires: bool, second_pass: bool) -> bool:
    """`hr_option` only matters when hires. fix is on: Both, Low res only, High res only."""
    if not hires or hr_option == HR_OPTIONS[0]:
        return True
    return second_pass if hr_option == HR_OPTIONS[2] else not second_pass


@dataclass
class PreparedUnit:
    """One enabled unit, ready: its model, hints for each pass and the maps it detected."""

    number: int  # position among the enabled units (the infotext's "ControlNet N")
    unit: ControlUnit
    model: ControlNetModel
    title: str  # "name [hash]"
    hint: torch.Tensor  # 1xCxHxW at the first pass's size, on the model's device and dtype
    hr_hint: torch.Tensor | None = None  # the same at the hires. fix size
    maps: list[Image.Image] = field(default_factory=list)  # fitted maps, when the unit saves them
    infotext: str = ""
    pooled: bool = False  # global average pooling (shuffle ControlNets)
    restore: InpaintRestore | None = None  # inpaint_only on the unit's own mask (controlnet/restore.py)
    hr_restore: InpaintRestore | None = None


@dataclass
class ControlNets:
    """The units of one request; `unet_kwargs` is called for every UNet evaluation of the main model."""

    units: list[PreparedUnit]
    hires: bool = False

    def infotext_fields(self) -> dict[str, str]:
        return {f"ControlNet {p.number}": p.infotext for p in self.units if p.infotext}

    def detected_maps(self) -> list[tuple[Image.Image, str]]:
        """(map, module) of the units that save theirs, as the extension lists them."""
        return [(image, p.unit.module) for p in self.units for image in p.maps]

    def unet_kwargs(self, x_in: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                    added: dict[str, torch.Tensor] | None, step_index: int, total_steps: int,
                    second_pass: bool = False) -> dict[str, Any]:
        """The residual arguments of the diffusers UNet call for this step ({} when no unit acts).

        `x_in`, `context`, `added`: exactly what the UNet gets, the batch being [uncond, cond].
        """
        total: list[torch.Tensor] | None = None
        for prepared in self.units:
            unit = prepared.unit
            if unit.weight == 0 or not acts_in_pass(unit.hr_option, self.hires, second_pass):
                continue
            if not unit_acts_at(step_index, total_steps, unit.guidance_start, unit.guidance_end):
                continue
            outputs = self._run(prepared, x_in, t, context, added, second_pass)
            # Summed as the extension does: new unit's output + the running total.
            total = outputs if total is None else [o + s for o, s in zip(outputs, total, strict=True)]
        if total is None:
            return {}
        return {"down_block_additional_residuals": tuple(total[:-1]), "mid_block_additional_residual": total[-1]}

    def after_unet(self, out: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor | float,
                   second_pass: bool = False) -> torch.Tensor:
        """The UNet output with inpaint_only's restore applied (every call, whatever the window)."""
        for prepared in self.units:
            restore = prepared.hr_restore if second_pass and prepared.hr_restore else prepared.restore
            if restore is not None:
                out = restore.noise(out, x_in, t)
        return out

    def finish(self, image: Image.Image) -> Image.Image:
        """A decoded picture with inpaint_only's picture pasted back outside its mask."""
        for prepared in self.units:
            restore = prepared.hr_restore or prepared.restore
            if restore is not None:
                image = restore.paste(image)
        return image

    def _run(self, prepared: PreparedUnit, x_in: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
             added: dict[str, torch.Tensor] | None, second_pass: bool) -> list[torch.Tensor]:
        unit, model = prepared.unit, prepared.model
        dtype = model.dtype
        hint = prepared.hr_hint if second_pass and prepared.hr_hint is not None else prepared.hint
        # An inpainting checkpoint's UNet takes 9 channels; its ControlNet sees the 4 latent ones.
        x = x_in[:, :model.config.in_channels]
        down, mid = model(x.to(dtype), t, encoder_hidden_states=context.to(dtype), controlnet_cond=hint,
                          conditioning_scale=1.0, added_cond_kwargs=added, return_dict=False)
        outputs = [*down, mid]
        if unit.cond_only or prepared.pooled:
            half = x.shape[0] // 2
            mark = torch.cat([torch.zeros(half), torch.ones(x.shape[0] - half)]).to(outputs[0])
            outputs = [o * mark[:, None, None, None] for o in outputs]
        soft = unit.soft_injection or (second_pass and any(m in unit.module for m in _SOFT_IN_HIRES))
        scales = control_scales(unit.weight, len(outputs), soft)
        outputs = [o * s for o, s in zip(outputs, scales, strict=True)]
        if prepared.pooled:
            outputs = [torch.mean(o, dim=(2, 3), keepdim=True) for o in outputs]
        return outputs


@dataclass(frozen=True)
class UnitInputs:
    """What the request offers units without their own image (img2img / inpaint)."""

    image: Image.Image | None = None  # the input picture
    resize_mode: str = "Just Resize"  # the request's resize mode
    mask: Image.Image | None = None  # the inpaint mask, white = repaint (already inverted if asked)
    mask_blur: int = 0


def blur_mask(mask: Image.Image, blur: int) -> np.ndarray:
    """A1111's inpaint mask as the extension takes it: grey, Gaussian-blurred along x then y."""
    arr = np.asarray(mask.convert("L")).copy()
    if blur > 0:
        size = 2 * int(2.5 * blur + 0.5) + 1
        arr = cv2.GaussianBlur(arr, (size, 1), blur)
        arr = cv2.GaussianBlur(arr, (1, size), blur)
    return arr


def _uses_mask_as_input(mask: np.ndarray) -> bool:
    # The extension reads a non-inpaint unit's mask as a drawing (its "canvas scribble" mode) unless
    # the mask is empty or full.
    return not ((mask <= 5).all() or (mask >= 250).all())


def _unit_source(unit: ControlUnit, number: int, inputs: UnitInputs) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(image, mask or None, resize mode) a unit is preprocessed from."""
    inpaint = unit.module in _INPAINT_MODULES
    if unit.image is not None:
        image = np.asarray(unit.image.convert("RGB"))
        mask = np.asarray(unit.mask.convert("RGB"))[:, :, 0] if unit.mask is not None else None
        if not inpaint and mask is not None and _uses_mask_as_input(mask):
            return np.stack([mask] * 3, axis=2), None, unit.resize_mode
        return image, mask if inpaint else None, unit.resize_mode
    if inputs.image is None:
        raise UserError(f"ControlNet unit {number} has no image: give it a control image (in img2img and "
                        "inpaint it can use the input picture instead).")
    image = np.asarray(inputs.image.convert("RGB"))
    mask = None
    if inpaint:
        mask = blur_mask(inputs.mask, inputs.mask_blur) if inputs.mask is not None else np.zeros(image.shape[:2], np.uint8)
    return image, mask, parse_resize_mode(inputs.resize_mode)


def _map_image(fitted: np.ndarray) -> Image.Image:
    arr = np.clip(fitted, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGBA" if arr.shape[2] == 4 else "RGB")


def prepare_controlnets(units: tuple[ControlUnit, ...], registry: ControlNetRegistry, model: SDModel,
                        checkpoint_name: str, size: tuple[int, int], hr_size: tuple[int, int] | None = None,
                        seed: int = 0, subseed: int = -1, inputs: UnitInputs | None = None,
                        annotator_dir: Path | str = DEFAULT_ANNOTATOR_DIR) -> ControlNets | None:
    """Load, check and preprocess every enabled unit; None when no unit is enabled.

    `size`/`hr_size`: (width, height) of the first pass and of hires. fix's pass (None without it).
    `seed`/`subseed`: the request's first seed and its variation seed (-1: none); shuffle draws
    from (seed + subseed) & 0xFFFFFFFF, the subseed being the seed when there is none, as the
    extension seeds numpy. Units are checked against the checkpoint before anything is computed.
    """
    active = enabled_units(units)
    if not active:
        return None
    inputs = inputs or UnitInputs()
    unet = model.unet
    # Where the UNet computes (with --medvram/--lowvram its weights wait elsewhere): the ControlNet
    # and its hints live there, next to the UNet's inputs.
    device, dtype = execution_device(unet), next(unet.parameters()).dtype
    numpy_seed = (max(seed, 0) + (max(seed, 0) if subseed == -1 else max(subseed, 0))) & 0xFFFFFFFF
    width, height = size
    # Every model first: a wrong or missing file fails before any preprocessing is spent.
    loaded = []
    for number, unit in enumerate(active):
        where = f"ControlNet unit {number}"
        file = registry.find(unit.model, where)
        try:
            loaded.append((file, registry.load(file, model.arch, checkpoint_name, device, dtype)))
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
    prepared = []
    for number, (unit, (file, net)) in enumerate(zip(active, loaded, strict=True)):
        if inputs.mask is not None and unit.module == "inpaint_only":
            # As the extension: with the inpaint tab's own mask, inpaint_only falls back to the
            # global-harmonious module (the tab already keeps the unmasked area).
            unit = replace(unit, module="inpaint")
        image, mask, resize_mode = _unit_source(unit, number, inputs)
        info = resolve_module(unit.module)
        resolution, threshold_a, threshold_b = effective_settings(info, unit.processor_res, unit.threshold_a,
                                                                  unit.threshold_b)
        text = unit_infotext(unit, file.title(), resolution, threshold_a, threshold_b)
        if unit.pixel_perfect:
            resolution = pixel_perfect_resolution(image.shape[:2], (height, width), resize_mode)
        detected = run_module(unit.module, image, resolution, threshold_a, threshold_b, mask=mask,
                              seed=numpy_seed, annotator_dir=annotator_dir)
        inpaint = unit.module in _INPAINT_MODULES
        fitted = fit_map(detected, resize_mode, width, height, inpaint=inpaint)
        hint = hint_tensor(fitted).to(device, dtype)
        hr_hint = None
        maps = []
        if hr_size is not None:
            hr_fitted = fit_map(detected, resize_mode, hr_size[0], hr_size[1], inpaint=inpaint)
            hr_hint = hint_tensor(hr_fitted).to(device, dtype)
            if unit.save_detected_map:
                maps.append(_map_image(hr_fitted))
        if unit.save_detected_map:
            maps.append(_map_image(fitted))
        if hint.shape[1] != net.info.hint_channels:
            raise UserError(f"ControlNet unit {number}: model {file.model_name} takes a {net.info.hint_channels}-channel "
                            f"hint but module {unit.module} makes {hint.shape[1]} channels; choose a matching module.")
        pooled = not net.info.family.startswith("sdxl") and "shuffle" in file.path.stem.lower()
        ready = PreparedUnit(number, unit, net.model, file.title(), hint, hr_hint, maps, text, pooled)
        if unit.module == "inpaint_only":
            ready.restore = inpaint_restore(model, fitted, unit.weight, device)
            if hr_size is not None:
                ready.hr_restore = inpaint_restore(model, hr_fitted, unit.weight, device)
        prepared.append(ready)
        log.info("ControlNet unit %d: %s with %s, weight %s, steps %s-%s, %s", number, unit.module,
                 file.model_name, unit.weight, unit.guidance_start, unit.guidance_end, unit.control_mode)
    return ControlNets(prepared, hires=hr_size is not None)


def unit_inputs(params: Any, canvas: Image.Image | None = None, canvas_mask: Image.Image | None = None) -> UnitInputs:
    """What units without an image use: img2img's input picture with the request's resize mode,
    inpaint's also with its mask (inverted when asked) and mask blur; outpainting passes its
    extended `canvas` and `canvas_mask`. txt2img offers nothing."""
    blur = int(getattr(params, "mask_blur", 0) or 0)
    if canvas is not None:
        return UnitInputs(canvas, "Just Resize", canvas_mask, blur)
    image = getattr(params, "init_image", None)
    if image is None:
        return UnitInputs()
    mask = getattr(params, "mask", None)
    if mask is not None and getattr(params, "invert_mask", False):
        mask = Image.eval(mask.convert("L"), lambda v: 255 - v)
    return UnitInputs(image, getattr(params, "resize_mode", "Just Resize"), mask, blur)


def request_controlnets(params: Any, registry: ControlNetRegistry | None, model: SDModel, checkpoint_name: str,
                        hr_size: tuple[int, int] | None, seed: int, inputs: UnitInputs | None = None
                        ) -> ControlNets | None:
    """`prepare_controlnets` for a validated request (None when it enables no unit).

    `seed`: the request's first seed, resolved; the variation seed is taken as the request gives it
    (-1 or a number, whatever its strength), as the extension reads `p.subseed`.
    """
    if not enabled_units(params.controlnet_units):
        return None
    if registry is None:
        raise UserError("ControlNet units were given, but this generation has no ControlNet model folder "
                        "(models/ControlNet) to load them from.")
    return prepare_controlnets(params.controlnet_units, registry, model, checkpoint_name,
                               (params.width, params.height), hr_size, seed, params.subseed,
                               inputs or unit_inputs(params), annotator_dir=registry.annotator_dir)
