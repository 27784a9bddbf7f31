"""A1111's "infotext": the generation parameters stored with every image and pasted back.

    a photo of a cat
    on two lines
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512

The prompt comes first (any number of lines), then the negative prompt (left out when empty),
then one line of `Key: value` pairs. Values with a comma, colon, quote or newline are written
as JSON strings, so they survive the comma-separated line. Parsing follows A1111: only the
final line can hold the parameters, and only when it has at least three pairs, so a prompt
that merely contains "Steps: 20" stays a prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from modules.controlnet.infotext import units_from_fields

# A1111's pattern: a key starts with a word character and may hold spaces, '-' and '/';
# a value is a JSON string or anything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"
MIN_PARAMS_ON_LINE = 3


def quote(value: str) -> str:
    """The value as written in the parameters line: JSON-quoted when it could break the line."""
    if any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _format_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        # A1111's UI hands over 7 for a CFG of 7; write "7" not "7.0", and keep "7.5".
        return str(int(value)) if value.is_integer() else repr(value)
    if key == "Size" and isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The infotext for one image; `params` are written in their order, None values left out.

    A value equal to its key is written bare, as A1111 does for flags. `Size` may be given as
    "512x512" or (512, 512).
    """
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        text = _format_value(key, value)
        pairs.append(key if text == key else f"{key}: {quote(text)}")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{_NEGATIVE} {negative_prompt}")
    lines.append(", ".join(pairs))
    return "\n".join(lines).strip()


def parse_params_line(line: str) -> dict[str, str]:
    """The `Key: value` pairs of one parameters line, values unquoted, in order."""
    return {key: unquote(value.strip()) for key, value in _PARAM.findall(line)}


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) of an infotext; values stay strings ("512x512")."""
    *lines, last = text.strip().split("\n")
    params: dict[str, str] = {}
    if len(_PARAM.findall(last)) >= MIN_PARAMS_ON_LINE:
        params = parse_params_line(last)
    else:
        lines.append(last)

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.startswith(_NEGATIVE):
            negative_lines.append(line[len(_NEGATIVE):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), params


def _int(value: str) -> int:
    return int(value.strip())


def _float(value: str) -> float:
    return float(value.strip())


def _str(value: str) -> str:
    return value


def _bool(value: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(value)
    return value.strip().lower() == "true"


# Infotext key -> (parameter name, converter). Names follow A1111's API fields.
_KNOWN: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Steps": ("steps", _int),
    "Sampler": ("sampler_name", _str),
    "Schedule type": ("scheduler", _str),
    "CFG scale": ("cfg_scale", _float),
    "Seed": ("seed", _int),
    "Denoising strength": ("denoising_strength", _float),
    "Clip skip": ("clip_skip", _int),
    "Model": ("model", _str),
    "Model hash": ("model_hash", _str),
    "VAE": ("sd_vae", _str),
    "VAE hash": ("vae_hash", _str),
    "Variation seed": ("subseed", _int),
    "Variation seed strength": ("subseed_strength", _float),
    "Batch size": ("batch_size", _int),
    "Batch pos": ("batch_pos", _int),
    "ENSD": ("eta_noise_seed_delta", _int),
    "SGM noise multiplier": ("sgm_noise_multiplier", _bool),
    "Discard penultimate sigma": ("always_discard_next_to_last_sigma", _bool),
    "Schedule rho": ("rho", _float),
    "Beta schedule alpha": ("beta_dist_alpha", _float),
    "Beta schedule beta": ("beta_dist_beta", _float),
    "Hires upscale": ("hr_scale", _float),
    "Hires steps": ("hr_second_pass_steps", _int),
    "Hires upscaler": ("hr_upscaler", _str),
    "Hires sampler": ("hr_sampler_name", _str),
    "Hires prompt": ("hr_prompt", _str),
    "Hires negative prompt": ("hr_negative_prompt", _str),
    "Tiling": ("tiling", _bool),
    "Face restoration": ("face_restorer", _str),
    "Noise multiplier": ("initial_noise_multiplier", _float),
    "Eta": ("eta_ancestral", _float),
    "Eta DDIM": ("eta_ddim", _float),
    "RNG": ("randn_source", _str),
    "Sigma churn": ("s_churn", _float),
    "Sigma tmin": ("s_tmin", _float),
    "Sigma tmax": ("s_tmax", _float),
    "Sigma noise": ("s_noise", _float),
    "Token merging ratio": ("token_merging_ratio", _float),
    "Token merging ratio hr": ("token_merging_ratio_hr", _float),
    "Refiner": ("refiner_checkpoint", _str),
    "Refiner switch at": ("refiner_switch_at", _float),
    "Mask blur": ("mask_blur", _int),
}
# Fields that record a setting rather than a request field: pasting or sending an infotext applies
# them as that request's override_settings (A1111's infotext_to_setting_name_mapping).
SETTING_FIELDS = ("eta_noise_seed_delta", "sgm_noise_multiplier", "always_discard_next_to_last_sigma", "rho",
                  "beta_dist_alpha", "beta_dist_beta", "initial_noise_multiplier", "sd_vae",
                  "eta_ancestral", "eta_ddim", "randn_source", "s_churn", "s_tmin", "s_tmax", "s_noise",
                  "token_merging_ratio", "token_merging_ratio_hr")
_SIZES = {"Size": ("width", "height"), "Seed resize from": ("seed_resize_from_w", "seed_resize_from_h"),
          "Hires resize": ("hr_resize_x", "hr_resize_y")}


def _split_sampler(params: dict[str, Any]) -> None:
    # Infotexts before A1111 1.9 name the schedule in the sampler ("DPM++ 2M Karras").
    from modules.errors import UserError
    from modules.sampling.samplers import validate_sampler

    try:
        sampler, schedule = validate_sampler(params["sampler_name"], params.get("scheduler", "Automatic"))
    except UserError:
        return  # a sampler this UI lacks: kept as written, refused when used
    params["sampler_name"] = sampler
    params["scheduler"] = schedule


def infotext_to_params(fields: Mapping[str, str]) -> dict[str, Any]:
    """Typed generation parameters from parsed infotext fields.

    Known keys become A1111 API names with typed values (Steps -> steps: int, CFG scale ->
    cfg_scale: float, Size -> width, height ...); unknown keys and values that do not parse
    (another tool's or a newer A1111's fields) are left out, as A1111's paste ignores them.
    `ControlNet N` fields become `controlnet_units`, one settings dict per unit, in N's order.
    """
    params: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _KNOWN:
            name, convert = _KNOWN[key]
            try:
                params[name] = convert(value)
            except ValueError:
                continue
        elif key in _SIZES:
            match = _SIZE.match(value.strip())
            if match:
                params[_SIZES[key][0]], params[_SIZES[key][1]] = int(match[1]), int(match[2])
    if "sampler_name" in params:
        _split_sampler(params)
    if "face_restorer" in params:
        params["restore_faces"] = True
    if "hr_scale" in params or "hr_resize_x" in params:  # A1111 writes these only with hires. fix on
        params["enable_hr"] = True
    units = units_from_fields(fields)  # "ControlNet N" fields, as the ControlNet extension writes them
    if units:
        params["controlnet_units"] = units  # one dict per unit, keyed by ControlUnit's field names
    return params
