"""Request and response bodies of /sdapi/v1, field for field as AUTOMATIC1111's API names them.

Defaults are A1111's API defaults (steps 50, 512x512, sampler_index "Euler", save_images false),
so a client that leaves a field out gets what it got from A1111. Unknown fields are ignored, as
A1111's pydantic models ignore them: clients written for newer A1111 versions or for extensions
keep working. Fields that exist in A1111 but have no effect here (face restoration, hr_checkpoint_name,
eta and the s_* sampler knobs) are accepted and listed in docs/api.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    # extra="ignore": unknown fields are dropped, not refused (A1111 behaves the same).
    model_config = ConfigDict(extra="ignore")


class GenerationRequest(_Body):
    """The fields txt2img and img2img share (A1111's StableDiffusionProcessing)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(default=None, description="Sampler name; wins over sampler_index.")
    sampler_index: str = Field(default="Euler", description="Sampler name (A1111's older field).")
    scheduler: str | None = Field(default=None, description="Schedule type: Automatic, Uniform, Karras, Exponential.")
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = Field(default=None, description="Restore faces (null: the face_restoration setting).")
    face_restorer: str | None = Field(default=None, description="GFPGAN or CodeFormer (null: face_restoration_model).")
    codeformer_weight: float | None = Field(default=None, description="0 strongest, 1 weakest (null: code_former_weight).")
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        default=None, description="Settings for this request only, e.g. sd_model_checkpoint, CLIP_stop_at_last_layers.")
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    script_name: str | None = Field(
        default=None, description='"X/Y/Z plot", "Prompt matrix"; img2img also "SD upscale", "Outpainting mk2", "Poor man\'s outpainting", "outpainting".')
    script_args: list[Any] | dict[str, Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = Field(default=None, description="Fill fields not given from this infotext.")


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] | None = Field(default=None, description="Base64 images (a data: URL prefix is allowed).")
    resize_mode: int = Field(default=0, description="0 just resize, 1 crop and resize, 2 resize and fill.")
    image_cfg_scale: float | None = None
    mask: str | None = Field(default=None, description="Base64 mask; white = repaint.")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = Field(default=0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing.")
    inpaint_full_res: bool = Field(default=True, description="True: inpaint only the masked area.")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = Field(default=False, description="Echo init_images and mask in `parameters`.")
    denoising_strength: float | None = 0.75


class ImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="Base64 PNGs, the infotext in each one's text chunk.")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, size, sampler, model, infotexts, ...")


class ProgressResponse(BaseModel):
    progress: float = Field(description="0 to 1, over the whole job.")
    eta_relative: float = Field(description="Seconds left, estimated.")
    state: dict[str, Any] = Field(description="job_count, job_no, sampling_step, sampling_steps, interrupted, skipped, ...")
    current_image: str | None = Field(default=None, description="Base64 PNG of the live preview.")
    textinfo: str | None = None
    current_task: str | None = None


class PNGInfoRequest(_Body):
    image: str


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The infotext, or empty.")
    items: dict[str, Any] = Field(default_factory=dict, description="Other text chunks of the PNG.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="The infotext parsed into its fields.")


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]
