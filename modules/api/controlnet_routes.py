"""The /controlnet routes of A1111's ControlNet extension: version, lists, settings and detect.

Answers have the extension's shapes, so its clients (webuiapi, Krita/Photoshop plug-ins, bots)
find what they expect. They sit behind the same login as /sdapi/v1 and answer errors the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from modules.api.auth import Credentials, auth_dependency
from modules.api.mapping import ApiError, decode_image, encode_image
from modules.api.routes import ApiRoute
from modules.context import AppContext
from modules.controlnet.display import visible_map
from modules.controlnet.preprocessors import (
    DEFAULT_ANNOTATOR_DIR,
    control_types,
    list_modules,
    module_detail,
    module_names,
    resolve_module,
    run_module,
)
from modules.controlnet.units import unit_count
from modules.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "/controlnet"
API_VERSION = 3  # the extension's `get_api_version()` for the unit format served here


class DetectRequest(BaseModel):
    """The extension's /controlnet/detect body; unknown fields are ignored, as there."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False  # accepted; offloading follows the device policy
    controlnet_images: list[str] = Field(default_factory=list)  # webuiapi's name for the input images


def encode_map(image: Image.Image) -> str:
    """A map as base64 PNG without infotext (the extension appends bare pictures)."""
    return encode_image(image)


def detect(module: str, images: list[str], masks: list[str], resolution: float, threshold_a: float,
           threshold_b: float, decoder: Callable[[str, str], Image.Image] = decode_image,
           annotator_dir: Path = DEFAULT_ANNOTATOR_DIR) -> list[str]:
    """Every image through `module`, as base64 PNGs; refused with 422 as the extension refuses."""
    try:
        info = resolve_module(module)
    except UserError as exc:
        raise ApiError(422, f"controlnet_module: module not available: {exc}") from None
    if not images:
        raise ApiError(422, "controlnet_input_images: no image selected; send at least one base64 picture.")
    if info.accepts_mask and len(masks) != len(images):
        raise ApiError(422, f"controlnet_masks: preprocessor {info.name} requires one mask per image "
                            f"({len(images)} images, {len(masks)} masks).")
    available = next(m for m in list_modules(annotator_dir) if m.name == info.name)
    if not available.available:
        raise ApiError(422, f"controlnet_module: {available.unavailable_reason}")
    pictures = [decoder(data, f"controlnet_input_images[{i}]").convert("RGB") for i, data in enumerate(images)]
    holes: list[Image.Image | None] = [None] * len(pictures)
    if info.accepts_mask:
        holes = [decoder(data, f"controlnet_masks[{i}]").convert("RGB").getchannel(0) for i, data in enumerate(masks)]
    elif masks:
        log.warning("Preprocessor %s does not take a mask; controlnet_masks ignored.", info.name)
    answers = []
    for picture, hole in zip(pictures, holes, strict=True):
        detected = run_module(info.name, picture, resolution, threshold_a, threshold_b, mask=hole,
                              annotator_dir=annotator_dir)
        answers.append(encode_map(visible_map(detected)))
    return answers


def build_controlnet_router(ctx: AppContext, credentials: Credentials) -> APIRouter:
    """The /controlnet routes bound to `ctx`, behind basic auth when `credentials` are given."""
    dependencies = [Depends(auth_dependency(credentials))] if credentials else []
    router = APIRouter(prefix=PREFIX, route_class=ApiRoute, dependencies=dependencies, tags=["controlnet"])

    @router.get("/version")
    async def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        """`name [hash]` of every ControlNet file; `update` (default true, as the extension) rescans."""
        if update:
            ctx.controlnets.refresh()
        return {"model_list": ctx.controlnets.titles()}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        return {"module_list": module_names(alias_names),
                "module_detail": module_detail(alias_names, ctx.controlnets.annotator_dir)}

    @router.get("/control_types")
    def get_control_types() -> dict[str, Any]:
        return {"control_types": control_types(ctx.controlnets.titles())}

    @router.get("/settings")
    async def settings() -> dict[str, int]:
        # control_net_max_models_num is the name older versions of the extension answered with.
        count = unit_count(ctx.options.options)
        return {"control_net_unit_count": count, "control_net_max_models_num": count}

    @router.post("/detect")
    def post_detect(req: DetectRequest) -> dict[str, Any]:
        """The detected maps of the images, one per image."""
        maps = detect(req.controlnet_module, req.controlnet_input_images or req.controlnet_images,
                      req.controlnet_masks, req.controlnet_processor_res, req.controlnet_threshold_a,
                      req.controlnet_threshold_b, annotator_dir=ctx.controlnets.annotator_dir)
        return {"images": maps, "info": "Success"}

    return router

