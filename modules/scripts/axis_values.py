"""X/Y/Z plot axis values as A1111 writes them: "1,2,3", ranges "1-5", "1-10 (+2)", "10-20 [3]".

Values are comma separated (quotes allow commas inside a value, as in a CSV line). Number axes
expand ranges: "a-b" every whole number from a to b, "a-b (+s)" in steps of s, "a-b [n]" n values
evenly spaced from a to b.
"""

from __future__ import annotations

import csv
import re

import numpy as np

from modules.errors import UserError

_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\)|\[\s*(\d+)\s*\])?\s*$")


def split_values(text: str) -> list[str]:
    """The comma-separated items of `text`, stripped, empty ones dropped."""
    try:
        rows = list(csv.reader([text], skipinitialspace=True))
    except csv.Error as exc:
        raise UserError(f"Axis values {text!r} cannot be read as a comma-separated list ({exc}).") from exc
    return [item.strip() for row in rows for item in row if item.strip()]


def _number(text: str, kind: type, axis: str) -> float:
    try:
        value = float(text.replace(" ", ""))
    except ValueError as exc:
        raise UserError(f"{axis}: {text!r} is not a number; write values like 1,2,3 or ranges like 1-5, "
                        "1-10 (+2), 10-20 [3].") from exc
    if kind is int and value != int(value):
        raise UserError(f"{axis}: {text!r} is not a whole number.")
    return value


def parse_numbers(text: str, kind: type, axis: str) -> list[int] | list[float]:
    """Number axis values, ranges expanded; `kind` is int or float."""
    values: list[float] = []
    for item in split_values(text):
        match = _RANGE.match(item)
        if not match:
            values.append(_number(item, kind, axis))
            continue
        start, end = _number(match[1], kind, axis), _number(match[2], kind, axis)
        if match[4] is not None:  # [count]: evenly spaced, both ends included
            count = int(match[4])
            if count < 1:
                raise UserError(f"{axis}: {item!r} asks for {count} values; use 1 or more.")
            spaced = np.linspace(start, end, count)
            values.extend(int(v) for v in spaced) if kind is int else values.extend(float(v) for v in spaced)
            continue
        step = _number(match[3], kind, axis) if match[3] is not None else (1.0 if end >= start else -1.0)
        if step == 0 or (end - start) * step < 0:
            raise UserError(f"{axis}: the range {item!r} never reaches its end with step {step:g}.")
        count = int(np.floor((end - start) / step + 1e-9)) + 1
        values.extend(start + i * step for i in range(count))
    if len(values) > 1000:
        raise UserError(f"{axis}: {len(values)} values; at most 1000 per axis.")
    return [int(v) for v in values] if kind is int else [round(float(v), 10) for v in values]
