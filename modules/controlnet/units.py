"""A ControlNet unit: one control image, its preprocessor, its model and how strongly it steers.

Field names, defaults, ranges and the spellings of the modes are those of A1111's ControlNet
extension (its `ControlNetUnit`), so an API unit maps onto this class field by field. `validate`
turns what a client may send (mode numbers, old resize-mode names, a module's UI label) into one
canonical form and refuses bad values with a `UserError` naming the unit and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from modules.controlnet.preprocessors import parse_resize_mode, resolve_module
from modules.errors import UserError

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
MAX_UNITS = 3  # the extension's default "Multi-ControlNet: max models amount"
UNIT_LIMIT = 10  # the most the setting control_net_unit_count can allow
MAX_WEIGHT = 2.0


@dataclass(frozen=True)
class ControlUnit:
    """One unit's settings, as the extension names them (`enabled` is off by default, as there).

    `image`: the control picture (or, with a `none` module, the map itself); None in img2img and
    inpaint means "use the input picture". `mask`: white = the area an inpaint module repaints.
    `processor_res`, `threshold_a`, `threshold_b`: -1 (or anything outside the module's slider)
    means the module's default. `guidance_start`/`guidance_end`: the fractions of the steps the
    unit acts between. `low_vram` is accepted for the API's sake; offloading follows the device
    policy instead.
    """

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Image.Image | None = None
    mask: Image.Image | None = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"
    save_detected_map: bool = True

    def validate(self, index: int = 0) -> ControlUnit:
        """The canonical unit, or `UserError` naming `ControlNet unit <index>` and the bad field."""
        where = f"ControlNet unit {index}"
        if not self.enabled:
            return self
        try:
            module = resolve_module(self.module).name
            resize_mode = parse_resize_mode(self.resize_mode)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        model = self.model if isinstance(self.model, str) else ""
        if not model.strip() or model.strip().lower() == "none":
            raise UserError(f"{where}: no ControlNet model chosen (model is {self.model!r}); choose one of the "
                            "files in models/ControlNet, as /controlnet/model_list lists them.")
        weight = _number(where, "weight", self.weight, 0.0, MAX_WEIGHT)
        start = _number(where, "guidance_start", self.guidance_start, 0.0, 1.0)
        end = _number(where, "guidance_end", self.guidance_end, 0.0, 1.0)
        if start > end:
            raise UserError(f"{where}: guidance_start ({start}) is after guidance_end ({end}); the unit acts "
                            "from guidance_start to guidance_end (fractions of the steps), so start <= end.")
        for name in ("processor_res", "threshold_a", "threshold_b"):
            _number(where, name, getattr(self, name), float("-inf"), float("inf"))
        for name in ("image", "mask"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Image.Image):
                raise UserError(f"{where}: {name} is not a picture ({type(value).__name__}); give a PNG, "
                                "JPEG or WebP image.")
        if self.mask is not None and self.image is not None and self.mask.size != self.image.size:
            raise UserError(f"{where}: the mask is {self.mask.width}x{self.mask.height} but the image is "
                            f"{self.image.width}x{self.image.height}; give a mask of the image's size.")
        return replace(self, module=module, model=model.strip(), weight=weight, resize_mode=resize_mode,
                       processor_res=int(self.processor_res), threshold_a=float(self.threshold_a),
                       threshold_b=float(self.threshold_b), guidance_start=start, guidance_end=end,
                       control_mode=parse_choice(where, "control_mode", self.control_mode, CONTROL_MODES),
                       hr_option=parse_choice(where, "hr_option", self.hr_option, HR_OPTIONS))

    @property
    def soft_injection(self) -> bool:
        """Both non-balanced modes scale the control outputs down level by level (the extension's rule)."""
        return self.control_mode != CONTROL_MODES[0]

    @property
    def cond_only(self) -> bool:
        """"ControlNet is more important": control only on the conditional half of the CFG batch."""
        return self.control_mode == CONTROL_MODES[2]


def parse_choice(where: str, field: str, value: Any, choices: tuple[str, ...]) -> str:
    """A mode given by name (any case) or by its number in `choices` (as API clients send it)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) and 0 <= value < len(choices):
        return choices[value]
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) < len(choices):
            return choices[int(text)]
        for choice in choices:
            if text.lower() == choice.lower():
                return choice
    numbered = ", ".join(f"{i} = {c}" for i, c in enumerate(choices))
    raise UserError(f"{where}: unknown {field} {value!r}; use one of {numbered}.")


def _number(where: str, field: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UserError(f"{where}: {field} must be a number, got {value!r}.")
    if not low <= value <= high:
        raise UserError(f"{where}: {field} must be from {low:g} to {high:g}, got {value}.")
    return float(value)


def unit_count(options: Any) -> int:
    """How many units the settings allow (`control_net_unit_count`, kept within 1..UNIT_LIMIT)."""
    return max(1, min(UNIT_LIMIT, int(getattr(options, "control_net_unit_count", MAX_UNITS))))


def validate_units(units: Any, max_units: int = MAX_UNITS) -> tuple[ControlUnit, ...]:
    """Every unit checked (disabled ones kept as they are, so indices stay the client's)."""
    if units is None:
        return ()
    if isinstance(units, ControlUnit) or not isinstance(units, (list, tuple)):
        raise UserError("controlnet_units must be a list of ControlNet units.")
    if len(units) > max_units:
        raise UserError(f"{len(units)} ControlNet units given; at most {max_units} are allowed "
                        "(raise the 'ControlNet units' setting for more).")
    checked = []
    for index, unit in enumerate(units):
        if not isinstance(unit, ControlUnit):
            raise UserError(f"ControlNet unit {index} is a {type(unit).__name__}, not a ControlNet unit.")
        checked.append(unit.validate(index))
    return tuple(checked)


def enabled_units(units: tuple[ControlUnit, ...]) -> list[ControlUnit]:
    """The units that act, in order; their position in this list is their infotext number."""
    return [u for u in units if u.enabled]
