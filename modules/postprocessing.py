"""Extras: upscale a finished picture with one or two upscalers, then restore its faces with GFPGAN
and/or CodeFormer (the Extras tab and POST /sdapi/v1/extra-single-image / extra-batch-images).

As in A1111: "Scale by" multiplies the size; "Scale to" reaches a width and height (keeping the
aspect ratio, then cropping to the exact size when asked); a second upscaler can be mixed in with
a visibility from 0 to 1. Upscaler 1 "None" leaves the picture as it is. Then, in A1111's order
(upscale 1000, GFPGAN 2000, CodeFormer 3000), each face restorer with a visibility above 0 runs and
its result is blended over the picture by that visibility.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules.errors import UserError
from modules.faces.restore import FaceRestorers
from modules.upscalers import UpscalerRegistry

MAX_SIDE = 8192


@dataclass(frozen=True)
class ExtrasParams:
    resize_mode: int = 0  # 0 scale by `scale`, 1 scale to `width` x `height`
    scale: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0  # 0 = CodeFormer's strongest effect (A1111's Extras default)

    def validate(self, upscalers: UpscalerRegistry, faces: FaceRestorers | None = None) -> None:
        if self.resize_mode not in (0, 1):
            raise UserError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode!r}.")
        if self.resize_mode == 0 and not 0 < self.scale <= 8:
            raise UserError(f"upscaling_resize must be more than 0 and at most 8, got {self.scale}.")
        if self.resize_mode == 1:
            for name, value in (("upscaling_resize_w", self.width), ("upscaling_resize_h", self.height)):
                if not 1 <= value <= MAX_SIDE:
                    raise UserError(f"{name} must be from 1 to {MAX_SIDE}, got {value}.")
        if not 0 <= self.upscaler_2_visibility <= 1:
            raise UserError(f"extras_upscaler_2_visibility must be from 0 to 1, got {self.upscaler_2_visibility}.")
        for name in (self.upscaler_1, self.upscaler_2):
            upscalers.find(name)  # unknown names: a UserError listing the known ones
        for key, value in (("gfpgan_visibility", self.gfpgan_visibility),
                           ("codeformer_visibility", self.codeformer_visibility),
                           ("codeformer_weight", self.codeformer_weight)):
            if not 0 <= value <= 1:
                raise UserError(f"{key} must be from 0 to 1, got {value}.")
        for name, visibility in (("GFPGAN", self.gfpgan_visibility), ("CodeFormer", self.codeformer_visibility)):
            if visibility > 0 and faces is not None:
                faces.check_available(name)  # a missing file: which one to put where


def target_size(image: Image.Image, params: ExtrasParams) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(the size to upscale to, the size to crop to afterwards or None)."""
    if params.resize_mode == 1:
        factor = max(params.width / image.width, params.height / image.height)
        size = (round(image.width * factor), round(image.height * factor))
        if params.crop:
            return size, (params.width, params.height)
        return (params.width, params.height), None  # without cropping: stretched to the size, as A1111
    size = (round(image.width * params.scale), round(image.height * params.scale))
    if max(size) > MAX_SIDE:
        raise UserError(f"Upscaling {image.width}x{image.height} by {params.scale} gives {size[0]}x{size[1]}; "
                        f"the largest side allowed is {MAX_SIDE}.")
    return size, None


def postprocess(upscalers: UpscalerRegistry, faces: FaceRestorers | None, image: Image.Image,
                params: ExtrasParams) -> tuple[Image.Image, str]:
    """Upscaling, then GFPGAN, then CodeFormer; the picture and a line describing what was done."""
    params.validate(upscalers, faces)
    image, info = upscale(upscalers, image, params)
    parts = [info] if info else []
    for name, visibility in (("GFPGAN", params.gfpgan_visibility), ("CodeFormer", params.codeformer_visibility)):
        if visibility <= 0 or faces is None:
            continue
        image = image.convert("RGB")
        restored = faces.restore(image, name, params.codeformer_weight)
        image = restored if visibility >= 1 else Image.blend(image, restored, visibility)
        parts.append(f"{name} visibility: {round(visibility, 3)}")
        if name == "CodeFormer":
            parts.append(f"CodeFormer weight: {round(params.codeformer_weight, 3)}")
    return image, ", ".join(parts)


def upscale(upscalers: UpscalerRegistry, image: Image.Image, params: ExtrasParams) -> tuple[Image.Image, str]:
    """The upscaled picture and a line describing what was done (A1111's html_info)."""
    params.validate(upscalers)
    if params.upscaler_1 == "None":
        return image, ""
    image = image.convert("RGB")
    size, crop = target_size(image, params)
    result = upscalers.upscale_image(image, size, params.upscaler_1)
    info = [f"Postprocess upscale {'to' if params.resize_mode == 1 else 'by'}: "
            f"{f'{params.width}x{params.height}' if params.resize_mode == 1 else f'{params.scale:g}'}",
            f"Postprocess upscaler: {params.upscaler_1}"]
    if params.upscaler_2 != "None" and params.upscaler_2_visibility > 0:
        second = upscalers.upscale_image(image, size, params.upscaler_2)
        result = Image.blend(result, second, params.upscaler_2_visibility)
        info.append(f"Postprocess upscaler 2: {params.upscaler_2}")
    if crop is not None and result.size != crop:
        left, top = (result.width - crop[0]) // 2, (result.height - crop[1]) // 2
        result = result.crop((left, top, left + crop[0], top + crop[1]))
    return result, ", ".join(info)
