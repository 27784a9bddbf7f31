"""`alwayson_scripts: {"ControlNet": {"args": [unit, ...]}}` of txt2img / img2img → `ControlUnit`s.

The unit objects are those A1111's ControlNet extension (and Forge, and webuiapi) send: its field
names and defaults, its old aliases (`input_image`, `guidance`, `lowvram`, Forge's `mask_image`),
modes by name or number, and the image in any of its shapes (a base64 string or data URL,
`{"image", "mask"}`, `[image, mask]`). As there, a unit without `enabled: true` does nothing, and
its other fields are not read. Everything is checked before anything runs: a bad unit is a 400
naming the unit and the field, an unknown model or preprocessor included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from modules.controlnet.preprocessors import list_modules, resolve_module
from modules.controlnet.registry import ControlNetRegistry
from modules.controlnet.units import MAX_UNITS, ControlUnit, validate_units
from modules.errors import UserError

log = logging.getLogger(__name__)

SCRIPT_TITLE = "controlnet"  # A1111 matches always-on script names lowercased

# Old field names the extension still reads, and the names they stand for.
_ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}
_BOOLS = ("pixel_perfect", "low_vram", "save_detected_map")
_FLOATS = ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end")
_MODES = ("resize_mode", "control_mode", "hr_option")
# Extension fields that change the picture but are not implemented here: refused when set (a picture
# made without them would look like success); clients that send them as null are fine.
_UNSUPPORTED = ("advanced_weighting", "effective_region_mask", "ipadapter_input")


def split_scripts(scripts: Mapping[str, Any] | None) -> tuple[Any, list[str]]:
    """(the ControlNet entry or None, the names of the other always-on scripts)."""
    entry = None
    others = []
    for name, value in (scripts or {}).items():
        if str(name).strip().lower() == SCRIPT_TITLE:
            entry = value
        else:
            others.append(name)
    return entry, others


def units_from_request(entry: Any, registry: ControlNetRegistry, decode: Any,
                       max_units: int = MAX_UNITS) -> tuple[ControlUnit, ...]:
    """The checked units of a ControlNet entry (`{"args": [...]}`; a bare list is taken too).

    `decode(data, what)`: base64 / data URL → PIL image, raising `UserError` naming `what`.
    Disabled units stay in the tuple as `ControlUnit()` so that error messages count units as the
    client does.
    """
    args = entry.get("args", []) if isinstance(entry, dict) else entry
    if args is None:
        return ()
    if not isinstance(args, list):
        raise UserError('alwayson_scripts.ControlNet must be {"args": [unit, ...]}, each unit an object with '
                        "the ControlNet extension's fields (enabled, module, model, weight, image, ...).")
    units = tuple(unit_from_json(index, data, decode) for index, data in enumerate(args))
    checked = validate_units(units, max_units)
    for index, unit in enumerate(checked):
        if unit.enabled:
            check_available(index, unit, registry)
    return checked


def unit_from_json(index: int, data: Any, decode: Any) -> ControlUnit:
    """One unit object → `ControlUnit` (values typed; ranges are checked by `ControlUnit.validate`)."""
    where = f"ControlNet unit {index}"
    if not isinstance(data, dict):
        raise UserError(f"{where} is a {type(data).__name__}, not an object with the ControlNet extension's "
                        "fields (enabled, module, model, weight, image, ...).")
    values = _resolve_aliases(where, data)
    if not _bool(where, "enabled", values.get("enabled"), False):
        if values.get("image") and "enabled" not in values:
            # The extension's units are off unless asked; say so, since the client clearly meant one.
            log.warning("%s has an image but no 'enabled': true, so it is off (as in the ControlNet extension).",
                        where)
        return ControlUnit()
    for name in _UNSUPPORTED:
        if values.get(name) is not None:
            raise UserError(f"{where}: {name} is not supported by this server; leave it out (or null).")
    fields: dict[str, Any] = {"enabled": True}
    for name in ("module", "model"):
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}: {name} must be a name (text), got {value!r}.")
        if value is not None:
            fields[name] = value
    for name in _BOOLS:
        if values.get(name) is not None:
            fields[name] = _bool(where, name, values[name], False)
    for name in _FLOATS:
        if values.get(name) is not None:
            fields[name] = _float(where, name, values[name])
    if values.get("processor_res") is not None:
        # pydantic's int field, as the extension declares it, truncates 512.0 and reads "512".
        fields["processor_res"] = int(_float(where, "processor_res", values["processor_res"]))
    for name in _MODES:
        if values.get(name) is not None:
            fields[name] = values[name]
    image, mask = _images(where, values.get("image"), values.get("mask"), decode)
    return ControlUnit(**fields, image=image, mask=mask)


def check_available(index: int, unit: ControlUnit, registry: ControlNetRegistry) -> None:
    """The model file exists and the preprocessor can run here (its weights are present)."""
    where = f"ControlNet unit {index}"
    registry.find(unit.model, f"{where}: model")
    info = next((m for m in list_modules(registry.annotator_dir) if m.name == resolve_module(unit.module).name), None)
    if info is not None and not info.available:
        raise UserError(f"{where}: module {unit.module!r} cannot run here: {info.unavailable_reason}")


def _resolve_aliases(where: str, data: dict[str, Any]) -> dict[str, Any]:
    values = dict(data)
    for alias, name in _ALIASES.items():
        if alias in values:
            given = values.pop(alias)
            if values.get(name) is not None and given is not None:
                raise UserError(f"{where}: both {alias!r} and {name!r} are given; {alias!r} is the old name of "
                                f"{name!r}, send only one.")
            if given is not None:
                values[name] = given
    return values


def _bool(where: str, name: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise UserError(f"{where}: {name} must be true or false, got {value!r}.")


def _float(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise UserError(f"{where}: {name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {name} must be a number, got {value!r}.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UserError(f"{where}: {name} must be a finite number, got {value!r}.")
    return number


def _images(where: str, image: Any, mask: Any, decode: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, mask) from every image shape the extension reads; '' and null mean "no picture"
    (webuiapi sends '' for a unit that uses img2img's input picture)."""
    if isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask")
    elif isinstance(image, (list, tuple)):
        if len(image) == 1 and isinstance(image[0], dict):
            image, mask = image[0].get("image"), image[0].get("mask")
        elif len(image) == 2 and not any(isinstance(i, dict) for i in image):
            image, mask = image
        else:
            raise UserError(f"{where}: image must be a base64 picture, {{\"image\": ..., \"mask\": ...}} or "
                            f"[image, mask]; a list of {len(image)} items is not one of those (one picture per unit).")
    picture = _picture(where, "image", image, decode)
    hole = _picture(where, "mask", mask, decode)
    if hole is not None and picture is None:
        raise UserError(f"{where}: a mask was given without an image; send the image with it.")
    if picture is not None:
        picture = _rgb(picture)
    if hole is not None:
        # The extension reads the mask's first channel after the same conversion.
        hole = Image.fromarray(np.asarray(_rgb(hole))[:, :, 0].copy(), "L")
    return picture, hole


def _picture(where: str, name: str, value: Any, decode: Any) -> Image.Image | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: {name} must be a base64-encoded picture (or a data URL), "
                        f"got {type(value).__name__}.")
    return decode(value, f"{where} {name}")


def _rgb(image: Image.Image) -> Image.Image:
    """RGB as the extension's HWC3 makes it: transparency blended onto white, grey repeated."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA")).astype(np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        blended = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return Image.fromarray(blended.clip(0, 255).astype(np.uint8), "RGB")
    return image.convert("RGB")
