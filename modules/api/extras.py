"""POST /sdapi/v1/extra-single-image and /extra-batch-images: A1111's Extras upscaling over HTTP."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules.api.mapping import decode_image, encode_image
from modules.context import AppContext
from modules.errors import UserError
from modules.postprocessing import ExtrasParams, postprocess


class ExtrasBase(BaseModel):
    """A1111's ExtrasBaseRequest fields."""

    resize_mode: int = Field(default=0, description="0 scale by upscaling_resize, 1 scale to upscaling_resize_w/h.")
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False

    def params(self) -> ExtrasParams:
        return ExtrasParams(resize_mode=self.resize_mode, scale=self.upscaling_resize, width=self.upscaling_resize_w,
                            height=self.upscaling_resize_h, crop=self.upscaling_crop, upscaler_1=self.upscaler_1,
                            upscaler_2=self.upscaler_2, upscaler_2_visibility=self.extras_upscaler_2_visibility,
                            gfpgan_visibility=self.gfpgan_visibility, codeformer_visibility=self.codeformer_visibility,
                            codeformer_weight=self.codeformer_weight)


class ExtrasSingleRequest(ExtrasBase):
    image: str = Field(default="", description="Base64 picture.")


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchRequest(ExtrasBase):
    imageList: list[FileData] = Field(default_factory=list)  # noqa: N815 - A1111's field name


class ExtrasSingleResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchResponse(BaseModel):
    html_info: str
    images: list[str]


def add_extras_routes(router: APIRouter, ctx: AppContext) -> None:
    def one(req: ExtrasBase, data: str, what: str) -> tuple[str, str]:
        params = req.params()
        params.validate(ctx.upscalers, ctx.faces)  # before decoding: a wrong name is the likelier mistake
        image = decode_image(data, what)
        with ctx.registry.lock:  # the device is shared with generation
            result, info = postprocess(ctx.upscalers, ctx.faces, image, params)
        return encode_image(result), info

    @router.post("/extra-single-image", response_model=ExtrasSingleResponse)
    def extra_single_image(req: ExtrasSingleRequest) -> ExtrasSingleResponse:
        image, info = one(req, req.image, "image")
        return ExtrasSingleResponse(html_info=info, image=image)

    @router.post("/extra-batch-images", response_model=ExtrasBatchResponse)
    def extra_batch_images(req: ExtrasBatchRequest) -> ExtrasBatchResponse:
        if not req.imageList:
            raise UserError("imageList is empty; send [{\"data\": \"<base64>\", \"name\": \"a.png\"}, ...].")
        images, info = [], ""
        for i, item in enumerate(req.imageList):
            image, info = one(req, item.data, f"image {i} ({item.name or 'unnamed'})")
            images.append(image)
        return ExtrasBatchResponse(html_info=info, images=images)
