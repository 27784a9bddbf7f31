"""ControlNet units in the infotext, written and read as A1111's ControlNet extension does.

Each enabled unit adds one field, numbered from 0 among the enabled units:

    ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, ..."

The value lists eleven settings in a fixed order, each key being the field name with its words
capitalised (`processor_res` -> `Processor Res`) and each value Python's `str` of the setting
(modes by name). The whole value holds commas and colons, so the parameters line quotes it. A
value that itself holds a comma or colon would make the list unreadable; the extension then writes
nothing for the unit, and so does this.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

# The unit fields the extension records, in its order.
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
_KEY = re.compile(r"^ControlNet (\d+)$")


def display_name(field: str) -> str:
    """`guidance_start` -> `Guidance Start`."""
    return " ".join(word.capitalize() for word in field.split("_"))


def field_name(text: str) -> str:
    """`Guidance Start` -> `guidance_start`."""
    return "_".join(word.lower() for word in text.split(" "))


def unit_infotext(unit: Any, model_title: str, processor_res: int, threshold_a: float, threshold_b: float) -> str:
    """The value of a unit's `ControlNet N` field ("" when a value would break the list).

    `processor_res` and the thresholds are the values in force after the module's defaults were
    filled in (-1 becomes the default), before pixel perfect: that is what the extension records.
    """
    values = {
        "module": unit.module,
        "model": model_title,
        "weight": str(float(unit.weight)),
        "resize_mode": unit.resize_mode,
        "processor_res": str(int(processor_res)),
        "threshold_a": str(float(threshold_a)),
        "threshold_b": str(float(threshold_b)),
        "guidance_start": str(float(unit.guidance_start)),
        "guidance_end": str(float(unit.guidance_end)),
        "pixel_perfect": str(bool(unit.pixel_perfect)),
        "control_mode": unit.control_mode,
    }
    if any("," in v or ":" in v for v in values.values()):
        log.warning("ControlNet infotext left out: a value holds ',' or ':' (%s)", values)
        return ""
    return ", ".join(f"{display_name(k)}: {values[k]}" for k in INFOTEXT_FIELDS)


def _value(text: str) -> bool | int | float | str:
    # The extension's reading: True/False, then int, then float, else the text itself.
    if text in ("True", "False"):
        return text == "True"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_unit_infotext(text: str) -> dict[str, Any]:
    """A `ControlNet N` value -> unit settings under the API's field names (plus `enabled: True`).

    `ValueError` when an item is not `Key: value`.
    """
    settings: dict[str, Any] = {"enabled": True}
    for item in text.split(","):
        parts = item.strip().split(": ")
        if len(parts) != 2:
            raise ValueError(f"not a 'Key: value' item: {item.strip()!r}")
        settings[field_name(parts[0])] = _value(parts[1])
    return settings


def units_from_fields(fields: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every readable `ControlNet N` field of a parsed infotext, by N; unreadable ones are skipped
    (as the extension skips them when pasting)."""
    found = []
    for key, value in fields.items():
        match = _KEY.match(key.strip())
        if not match:
            continue
        try:
            found.append((int(match[1]), parse_unit_infotext(value)))
        except ValueError as error:
            log.warning("ControlNet infotext %r not understood: %s", key, error)
    return [settings for _, settings in sorted(found, key=lambda pair: pair[0])]
