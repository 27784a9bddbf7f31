"""Generation parameters: one frozen dataclass per mode, validated once at the edge.

The UI, the HTTP API and the command line all build one of these and call `processing.run.generate`;
after `validate()` everything downstream trusts the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from PIL import Image

from modules.controlnet.units import UNIT_LIMIT, ControlUnit, validate_units
from modules.errors import UserError
from modules.sampling.samplers import validate_sampler

MAX_STEPS = 150
MAX_SIDE = 4096
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 1000

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("whole picture", "only masked")
OUTPAINT_FILLS = ("edge", "mean", "noise")


@dataclass(frozen=True)
class GenerationParams:
    """What every mode shares. `width`/`height` of 0 mean the model's native size."""

    mode: ClassVar[str] = "txt2img"

    prompt: str = ""
    negative_prompt: str = ""
    # A1111 1.9+'s default; with "Automatic" it runs on Karras sigmas. On the embedded default model
    # it meets every adherence target; Euler a, the earlier default, misses one (README).
    sampler: str = "DPM++ 2M"
    schedule_type: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    width: int = 0
    height: int = 0
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    checkpoint: str | None = None
    save: bool = True
    save_grid: bool = False
    tiling: bool = False  # seamless: circular padding in the UNet and VAE (processing/tiling.py)
    styles: tuple[str, ...] = ()  # names in styles.csv; applied to the prompts by AppContext.generate
    refiner_checkpoint: str | None = None  # a second checkpoint for the last steps (processing/refiner.py)
    refiner_switch_at: float = 0.8  # fraction of the steps after which the refiner takes over
    controlnet_units: tuple[ControlUnit, ...] = ()  # modules/controlnet/units.py; applied by controlnet/apply.py
    # Face restoration of every picture (A1111's `restore_faces`; None: the face_restoration setting),
    # with this restorer ("": the face_restoration_model setting) and CodeFormer weight (None: the setting).
    restore_faces: bool | None = None
    face_restorer: str = ""
    codeformer_weight: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # extension-owned values
    # Settings for this request only (A1111's `override_settings`), applied over the saved options
    # by AppContext.generate; keys are option names (modules/options.py).
    override_settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def validate(self) -> GenerationParams:
        """Raise `UserError` naming the first bad value and what is allowed; return the canonical form."""
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_number("CFG scale", self.cfg_scale, 0.0, 100.0)
        _check_int("batch size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("batch count", self.batch_count, 1, MAX_BATCH_COUNT)
        _check_int("CLIP skip", self.clip_skip, 1, 12)
        _check_number("variation strength", self.subseed_strength, 0.0, 1.0)
        _check_int("seed", self.seed, -1, 2**32 - 1)
        _check_int("variation seed", self.subseed, -1, 2**32 - 1)
        for name, value in (("width", self.width), ("height", self.height)):
            _check_side(name, value, allow_zero=True)
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise UserError("The prompt and the negative prompt must be text.")
        if self.refiner_checkpoint:
            _check_number("refiner switch at", self.refiner_switch_at, 0.0, 1.0)
        if self.codeformer_weight is not None:
            _check_number("CodeFormer weight", self.codeformer_weight, 0.0, 1.0)
        sampler, schedule = validate_sampler(self.sampler, self.schedule_type)
        return replace(self, sampler=sampler, schedule_type=schedule, styles=tuple(self.styles),
                       controlnet_units=validate_units(self.controlnet_units, UNIT_LIMIT))

    def with_size(self, width: int, height: int) -> GenerationParams:
        return replace(self, width=width, height=height)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not isinstance(getattr(self, f.name), Image.Image)}


@dataclass(frozen=True)
class Txt2ImgParams(GenerationParams):
    mode: ClassVar[str] = "txt2img"

    # Hires. fix (processing/hires.py): upscale by hr_scale, or to hr_resize_x/y, then a second pass.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0 = the first pass's steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    denoising_strength: float = 0.7
    hr_sampler: str = ""  # "" = the first pass's sampler
    hr_schedule_type: str = ""
    hr_prompt: str = ""  # "" = the first pass's prompt
    hr_negative_prompt: str = ""

    def validate(self) -> Txt2ImgParams:
        params = super().validate()
        if self.enable_hr:
            _check_number("hires upscale (hr_scale)", self.hr_scale, 1.0, 8.0)
            _check_int("hires steps", self.hr_second_pass_steps, 0, MAX_STEPS)
            _check_number("denoising strength", self.denoising_strength, 0.0, 1.0)
            for name, value in (("hires resize width", self.hr_resize_x), ("hires resize height", self.hr_resize_y)):
                _check_side(name, value, allow_zero=True)
            if not isinstance(self.hr_prompt, str) or not isinstance(self.hr_negative_prompt, str):
                raise UserError("The hires prompt and negative prompt must be text.")
        return params  # type: ignore[return-value]


@dataclass(frozen=True)
class Img2ImgParams(GenerationParams):
    mode: ClassVar[str] = "img2img"

    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: str = "just resize"

    def validate(self) -> Img2ImgParams:
        params = super().validate()
        _check_image("init image", self.init_image)
        _check_number("denoising strength", self.denoising_strength, 0.0, 1.0)
        _check_choice("resize mode", self.resize_mode, RESIZE_MODES)
        return params  # type: ignore[return-value]


@dataclass(frozen=True)
class InpaintParams(Img2ImgParams):
    mode: ClassVar[str] = "inpaint"

    mask: Image.Image | None = None  # white = repaint
    mask_blur: int = 4
    masked_content: str = "original"
    inpaint_area: str = "whole picture"
    only_masked_padding: int = 32
    invert_mask: bool = False

    def validate(self) -> InpaintParams:
        params = super().validate()
        _check_image("mask", self.mask)
        assert self.mask is not None and self.init_image is not None
        if self.mask.size != self.init_image.size:
            raise UserError(f"The mask is {self.mask.size[0]}x{self.mask.size[1]} but the image is "
                            f"{self.init_image.size[0]}x{self.init_image.size[1]}; they must be the same size.")
        _check_int("mask blur", self.mask_blur, 0, 64)
        _check_choice("masked content", self.masked_content, MASKED_CONTENT)
        _check_choice("inpaint area", self.inpaint_area, INPAINT_AREAS)
        _check_int("only-masked padding", self.only_masked_padding, 0, 256)
        return params  # type: ignore[return-value]


@dataclass(frozen=True)
class OutpaintParams(GenerationParams):
    """Extend `init_image` by the given pixels on each side; the new area is generated."""

    mode: ClassVar[str] = "outpaint"

    init_image: Image.Image | None = None
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    fill: str = "edge"  # how the new area is filled before denoising
    denoising_strength: float = 0.9
    mask_blur: int = 4

    def validate(self) -> OutpaintParams:
        params = super().validate()
        _check_image("init image", self.init_image)
        for side in ("left", "right", "top", "bottom"):
            _check_int(f"outpaint {side}", getattr(self, side), 0, 2048)
        if self.left + self.right + self.top + self.bottom == 0:
            raise UserError("Outpainting needs pixels to add on at least one side (left, right, top or bottom).")
        _check_choice("outpaint fill", self.fill, OUTPAINT_FILLS)
        _check_number("denoising strength", self.denoising_strength, 0.0, 1.0)
        _check_int("mask blur", self.mask_blur, 0, 64)
        return params  # type: ignore[return-value]


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    if not low <= value <= high:
        raise UserError(f"{name} must be from {low} to {high}, got {value}.")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UserError(f"{name} must be a number from {low} to {high}, got {value!r}.")
    if not low <= value <= high:
        raise UserError(f"{name} must be from {low} to {high}, got {value}.")


def _check_side(name: str, value: Any, allow_zero: bool = False) -> None:
    if allow_zero and value == 0:
        return
    _check_int(name, value, 64, MAX_SIDE)
    if value % 8:
        lower, upper = value - value % 8, value - value % 8 + 8
        raise UserError(f"{name} must be a multiple of 8 (the latent space is 8x smaller), got {value}; "
                        f"use {max(lower, 64)} or {upper}.")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"Unknown {name} {value!r}; use one of: {', '.join(allowed)}.")


def _check_image(name: str, image: Any) -> None:
    if not isinstance(image, Image.Image):
        raise UserError(f"The {name} is missing or is not an image (PNG, JPEG or WebP).")
    if image.width < 8 or image.height < 8:
        raise UserError(f"The {name} is {image.width}x{image.height}; it must be at least 8x8 pixels.")
