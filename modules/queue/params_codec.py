"""A generation tab's parameters as a queue job's JSON, and back (the UI's Enqueue button).

Pictures become base64 PNGs, ControlNet units dicts; the job kind names the mode ("params:txt2img",
"params:img2img", "params:inpaint", "params:outpaint"). Random seeds are drawn before the job is stored,
so a retried job makes the same pictures.
"""

from __future__ import annotations

import base64
import io
from dataclasses import fields, replace
from typing import Any

from PIL import Image

from modules.controlnet.units import ControlUnit
from modules.processing.params import (
    GenerationParams,
    Img2ImgParams,
    InpaintParams,
    OutpaintParams,
    Txt2ImgParams,
)
from modules.sampling.noise import resolve_seed

PREFIX = "params:"
CLASSES: dict[str, type[GenerationParams]] = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams,
                                              "inpaint": InpaintParams, "outpaint": OutpaintParams}


def _encode(value: Any) -> Any:
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"__png__": base64.b64encode(buffer.getvalue()).decode()}
    if isinstance(value, ControlUnit):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__png__"}:
        image = Image.open(io.BytesIO(base64.b64decode(value["__png__"])))
        image.load()
        return image
    return value


def encode_params(params: GenerationParams) -> tuple[str, dict[str, Any]]:
    """(job kind, JSON) of `params`, with -1 seeds drawn now."""
    if params.seed == -1:
        params = replace(params, seed=resolve_seed(-1))
    if params.subseed == -1 and params.subseed_strength > 0:
        params = replace(params, subseed=resolve_seed(-1))
    data = {f.name: _encode(getattr(params, f.name)) for f in fields(params)}
    return PREFIX + params.mode, data


def decode_params(kind: str, data: dict[str, Any]) -> GenerationParams:
    cls = CLASSES[kind.removeprefix(PREFIX)]
    known = {f.name for f in fields(cls)}
    values = {k: _decode(v) for k, v in data.items() if k in known}
    values["controlnet_units"] = tuple(ControlUnit(**{k: _decode(v) for k, v in unit.items()})
                                       for unit in data.get("controlnet_units") or ())
    for name in ("styles",):
        values[name] = tuple(values.get(name) or ())
    return cls(**values)
