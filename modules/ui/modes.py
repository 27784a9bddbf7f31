"""What differs between the four generation tabs: the picture input, the extra controls, the params.

txt2img has neither picture nor extras; img2img takes a picture, resize mode and denoising strength;
inpaint takes a picture with a painted mask (gr.ImageEditor: whatever is painted becomes the mask,
white = repaint) plus the mask options; outpaint takes a picture and the pixels to add per side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.errors import UserError
from modules.options import checked_changes
from modules.processing.params import (
    OUTPAINT_FILLS,
    GenerationParams,
    Img2ImgParams,
    InpaintParams,
    OutpaintParams,
    Txt2ImgParams,
)

MODES = ("txt2img", "img2img", "inpaint", "outpaint")
MODE_LABELS = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "Inpaint", "outpaint": "Outpaint"}

# A1111's wording on the left, the params' values on the right.
RESIZE_CHOICES = [("Just resize", "just resize"), ("Crop and resize", "crop and resize"),
                  ("Resize and fill", "resize and fill")]
MASK_MODE_CHOICES = [("Inpaint masked", False), ("Inpaint not masked", True)]
MASKED_CONTENT_CHOICES = [("fill", "fill"), ("original", "original"), ("latent noise", "latent noise"),
                          ("latent nothing", "latent nothing")]
INPAINT_AREA_CHOICES = [("Whole picture", "whole picture"), ("Only masked", "only masked")]


def build_image_input(mode: str) -> gr.components.Component | None:
    """The picture the mode starts from (None for txt2img)."""
    if mode in ("img2img", "outpaint"):
        return gr.Image(label="Image for " + MODE_LABELS[mode], type="pil", image_mode="RGB",
                        sources=["upload", "clipboard"], elem_id=f"{mode}_image", height=360)
    if mode == "inpaint":
        return gr.ImageEditor(
            label="Image for inpainting with mask (paint the area to repaint)", type="pil", image_mode="RGBA",
            sources=["upload", "clipboard"], elem_id="inpaint_image", height=420,
            # One fixed white brush: the stroke colour does not matter for the mask, white reads as
            # "repaint" as in A1111; no crop/resize, which would shift the mask against the picture.
            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
            transforms=(), layers=False,
        )
    return None


def build_extras(mode: str) -> dict[str, gr.components.Component]:
    """The mode's own controls, by parameter name."""
    extras: dict[str, gr.components.Component] = {}
    if mode == "img2img":
        extras["resize_mode"] = gr.Radio(RESIZE_CHOICES, value="just resize", label="Resize mode",
                                         elem_id="img2img_resize_mode")
    if mode == "inpaint":
        with gr.Row():
            extras["mask_blur"] = gr.Slider(0, 64, value=4, step=1, precision=0, label="Mask blur", elem_id="inpaint_mask_blur")
            extras["invert_mask"] = gr.Radio(MASK_MODE_CHOICES, value=False, label="Mask mode",
                                             elem_id="inpaint_mask_mode")
        extras["masked_content"] = gr.Radio(MASKED_CONTENT_CHOICES, value="original", label="Masked content",
                                            elem_id="inpaint_masked_content")
        with gr.Row():
            extras["inpaint_area"] = gr.Radio(INPAINT_AREA_CHOICES, value="whole picture", label="Inpaint area",
                                              elem_id="inpaint_area")
            extras["only_masked_padding"] = gr.Slider(0, 256, value=32, step=4, precision=0,
                                                      label="Only masked padding, pixels",
                                                      elem_id="inpaint_only_masked_padding")
    if mode == "outpaint":
        with gr.Row():
            for side in ("left", "right", "top", "bottom"):
                extras[side] = gr.Slider(0, 512, value=64, step=8, precision=0, label=f"Pixels to add {side}",
                                         elem_id=f"outpaint_{side}")
        with gr.Row():
            extras["fill"] = gr.Radio(list(OUTPAINT_FILLS), value="edge", label="Fill the new area with",
                                      elem_id="outpaint_fill")
            extras["mask_blur"] = gr.Slider(0, 64, value=4, step=1, precision=0, label="Mask blur", elem_id="outpaint_mask_blur")
    if mode != "txt2img":
        default = 0.9 if mode == "outpaint" else 0.75
        extras["denoising_strength"] = gr.Slider(0.0, 1.0, value=default, step=0.01, label="Denoising strength",
                                                 elem_id=f"{mode}_denoising_strength")
    return extras


def editor_image_and_mask(value: Mapping[str, Any] | None) -> tuple[Image.Image, Image.Image]:
    """(RGB picture, L mask) from an ImageEditor value; painted pixels (any colour) are white."""
    if not value or value.get("background") is None:
        raise UserError("Upload a picture into the inpaint editor first, then paint the area to repaint.")
    background: Image.Image = value["background"]
    mask = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = layer.convert("RGBA")
        if layer.size != background.size:  # the canvas may be larger than a small picture
            layer = layer.crop((0, 0, background.width, background.height))
        mask |= np.asarray(layer)[..., 3] > 0
    return background.convert("RGB"), Image.fromarray((mask * 255).astype(np.uint8), mode="L")


def override_settings(text: str | None) -> dict[str, Any]:
    """The "Override settings" box: empty, or a JSON object of settings (checked)."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"Override settings is not valid JSON ({exc}); write e.g. "
                        '{"eta_noise_seed_delta": 31337}, or clear the box.') from exc
    if not isinstance(value, dict):
        raise UserError('Override settings must be a JSON object, e.g. {"sgm_noise_multiplier": true}.')
    return checked_changes(value)


def make_params(mode: str, common: Mapping[str, Any], image: Any, extras: Mapping[str, Any]) -> GenerationParams:
    """The params for one Generate click; validation happens in `ctx.generate`."""
    extras = {**extras, "override_settings": override_settings(extras.get("override_settings"))}
    if mode == "txt2img":
        return Txt2ImgParams(**common, **extras)  # hires. fix, tiling, styles, refiner
    if mode == "img2img":
        return Img2ImgParams(**common, init_image=image, **extras)
    if mode == "inpaint":
        picture, mask = editor_image_and_mask(image)
        return InpaintParams(**common, init_image=picture, mask=mask, **extras)
    if mode == "outpaint":
        # The output size is the picture plus the added pixels; width/height do not apply.
        common = {k: v for k, v in common.items() if k not in ("width", "height")}
        return OutpaintParams(**common, init_image=image, **extras)
    raise ValueError(f"unknown mode {mode!r}")
