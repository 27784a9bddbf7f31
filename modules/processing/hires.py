"""Hires. fix: generate at the base size, upscale, then an img2img pass at the larger size.

The upscale goes through `UpscalerRegistry`: a latent upscaler ("Latent", "Latent (bicubic)", ...)
scales the first pass's latents directly; any other upscaler decodes them, scales the pictures and
encodes them again. The second pass then denoises from those latents with its own steps, sampler
and prompts, the way A1111's hires. fix does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from modules.errors import UserError
from modules.processing.params import MAX_SIDE, GenerationParams, Txt2ImgParams
from modules.sampling.samplers import validate_sampler
from modules.upscalers import UpscalerRegistry, upscale_latent

DEFAULT_UPSCALER = "Latent"


@dataclass(frozen=True)
class HiresPlan:
    """What the second pass does, resolved against the first pass's size."""

    upscaler: str
    latent: bool  # True: scale latents; False: decode → upscale pictures → encode
    width: int  # final size (multiples of 8)
    height: int
    cover: tuple[int, int]  # size the first pass is scaled to before the centre crop to width x height
    steps: int
    sampler: str
    schedule_type: str
    denoising_strength: float
    prompt: str
    negative_prompt: str


def _round8(value: float) -> int:
    return max(64, int(value) // 8 * 8)


def check(params: GenerationParams, upscalers: UpscalerRegistry) -> None:
    """Refuse an unknown upscaler or hires sampler before any work starts."""
    if not isinstance(params, Txt2ImgParams) or not params.enable_hr:
        return
    name = params.hr_upscaler or DEFAULT_UPSCALER
    if name not in upscalers.names():
        raise UserError(f"Unknown hires upscaler {name!r}; choose one of {', '.join(upscalers.names())}.")
    if params.hr_sampler:
        validate_sampler(params.hr_sampler, params.hr_schedule_type or "Automatic")


def plan(params: GenerationParams, upscalers: UpscalerRegistry) -> HiresPlan | None:
    """The second pass for `params` (after the size is known), or None when hires. fix is off."""
    if not isinstance(params, Txt2ImgParams) or not params.enable_hr:
        return None
    check(params, upscalers)
    width, height = params.width, params.height
    rx, ry = params.hr_resize_x, params.hr_resize_y
    if rx or ry:
        # One side given: the other keeps the aspect ratio. Both: scale to cover, then crop the middle.
        target_w = rx or width * ry / height
        target_h = ry or height * rx / width
        scale = max(target_w / width, target_h / height)
        final = (_round8(target_w), _round8(target_h))
        cover = (max(final[0], _round8(width * scale + 7)), max(final[1], _round8(height * scale + 7)))
    else:
        final = cover = (_round8(width * params.hr_scale), _round8(height * params.hr_scale))
    if max(cover) > MAX_SIDE:
        raise UserError(f"Hires. fix would make a {cover[0]}x{cover[1]} picture; the limit is {MAX_SIDE} "
                        "pixels a side: lower the upscale factor or the resize size.")
    sampler, schedule = params.sampler, params.schedule_type
    if params.hr_sampler:
        sampler, schedule = validate_sampler(params.hr_sampler, params.hr_schedule_type or "Automatic")
    name = params.hr_upscaler or DEFAULT_UPSCALER
    return HiresPlan(upscaler=name, latent=upscalers.is_latent(name), width=final[0], height=final[1],
                     cover=cover, steps=params.hr_second_pass_steps or params.steps, sampler=sampler,
                     schedule_type=schedule, denoising_strength=params.denoising_strength,
                     prompt=params.hr_prompt or params.prompt,
                     negative_prompt=params.hr_negative_prompt or params.negative_prompt)


def _crop_box(cover: tuple[int, int], final: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top = (cover[0] - final[0]) // 2, (cover[1] - final[1]) // 2
    return left, top, left + final[0], top + final[1]


def upscale(hr: HiresPlan, latents: torch.Tensor, upscalers: UpscalerRegistry,
            decode: Callable[[torch.Tensor], list[Image.Image]],
            encode: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """The first pass's latents [B, 4, h, w] → the second pass's starting latents at the final size."""
    if hr.latent:
        big = upscale_latent(latents, (hr.cover[1] // 8, hr.cover[0] // 8), hr.upscaler)
        x1, y1, x2, y2 = (v // 8 for v in _crop_box(hr.cover, (hr.width, hr.height)))
        return big[:, :, y1:y2, x1:x2]
    images = [upscalers.upscale_image(image, hr.cover, hr.upscaler).crop(_crop_box(hr.cover, (hr.width, hr.height)))
              for image in decode(latents)]
    return torch.cat([encode(image) for image in images]).to(latents.device)


def second_pass_params(params: GenerationParams, hr: HiresPlan) -> GenerationParams:
    """The first pass's params as the second pass sees them (size, steps, sampler, prompts)."""
    return replace(params, width=hr.width, height=hr.height, steps=hr.steps, sampler=hr.sampler,
                   schedule_type=hr.schedule_type, prompt=hr.prompt, negative_prompt=hr.negative_prompt)


def infotext_fields(params: GenerationParams, hr: HiresPlan | None) -> dict[str, object]:
    """A1111's hires keys, in its order; the size stays the first pass's ("Size")."""
    if hr is None or not isinstance(params, Txt2ImgParams):
        return {}
    fields: dict[str, object] = {"Denoising strength": params.denoising_strength}
    if params.hr_resize_x or params.hr_resize_y:
        fields["Hires resize"] = f"{hr.width}x{hr.height}"
    else:
        fields["Hires upscale"] = params.hr_scale
    if params.hr_second_pass_steps:
        fields["Hires steps"] = params.hr_second_pass_steps
    fields["Hires upscaler"] = hr.upscaler
    if params.hr_sampler and hr.sampler != params.sampler:
        fields["Hires sampler"] = hr.sampler
    if params.hr_prompt and params.hr_prompt != params.prompt:
        fields["Hires prompt"] = params.hr_prompt
    if params.hr_negative_prompt and params.hr_negative_prompt != params.negative_prompt:
        fields["Hires negative prompt"] = params.hr_negative_prompt
    return fields
