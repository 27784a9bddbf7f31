"""From an A1111 API request to a params dataclass, and from a GenerationResult back to A1111's answer.

Everything a client can get wrong is checked here or in `params.validate()` and raised as a
`UserError` (an `ApiError` when the status should be other than 400), so the route turns it into a
4xx with a message; nothing malformed reaches the generation loop.

Outpainting rides on img2img's `script_name`, as it does in A1111 (see modules/api/__init__.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from modules.api.controlnet import split_scripts, units_from_request
from modules.api.models import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from modules.context import AppContext
from modules.controlnet.units import unit_count
from modules.errors import UserError
from modules.images import INFOTEXT_KEY, make_grid
from modules.models.discovery import CheckpointInfo, HashCache
from modules.options import checked_changes
from modules.processing.infotext import SETTING_FIELDS, infotext_to_params, parse_infotext
from modules.processing.params import (
    INPAINT_AREAS,
    MASKED_CONTENT,
    RESIZE_MODES,
    GenerationParams,
    Img2ImgParams,
    InpaintParams,
    OutpaintParams,
    Txt2ImgParams,
)
from modules.processing.refiner import NO_REFINER
from modules.processing.run import GenerationResult
from modules.sampling.samplers import validate_sampler

log = logging.getLogger(__name__)

try:
    VERSION = metadata.version("sd-webui-local")
except metadata.PackageNotFoundError:  # running from a checkout that was never pip-installed
    VERSION = "0.1.0"


class ApiError(UserError):
    """A UserError with its HTTP status (A1111 answers 404 for an unknown sampler, 422 for an unknown script)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


# ------------------------------------------------------------------------------------------ images

def decode_image(data: str, what: str = "image") -> Image.Image:
    """A base64 image (plain, or a `data:image/...;base64,` URL) → PIL image, fully read."""
    if not isinstance(data, str) or not data.strip():
        raise UserError(f"The {what} is empty; send a base64-encoded PNG, JPEG or WebP.")
    data = data.strip()
    if data.startswith(("http://", "https://")):
        # A1111 can fetch URLs when allowed; this program never goes online.
        raise UserError(f"The {what} is a URL; this server is offline: send the picture itself, base64-encoded.")
    if data.startswith("data:"):
        data = data.split(",", 1)[1] if "," in data else ""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"The {what} is not valid base64 ({exc}).") from exc
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()  # decode now: a truncated file must fail here, not in the generation loop
    except Image.DecompressionBombError as exc:
        raise UserError(f"The {what} is too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"The {what} is not a picture PIL can read (PNG, JPEG or WebP): {exc}") from exc
    return image


def encode_image(image: Image.Image, infotext: str | None = None) -> str:
    """PIL image → base64 PNG with the infotext in its `parameters` text chunk, as A1111 sends them."""
    info = None
    if infotext:
        info = PngImagePlugin.PngInfo()
        info.add_text(INFOTEXT_KEY, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------ models

def cached_sha256(cache: HashCache, path: Path) -> str | None:
    """The sha256 if it was computed before, else None (hashing a large file takes tens of seconds,
    so listings show only known hashes, as A1111's do)."""
    entries = getattr(cache, "_entries", {})  # HashCache has no public look-up without hashing
    entry = entries.get(str(path.resolve())) if isinstance(entries, dict) else None
    try:
        stat = path.stat()
    except OSError:
        return None
    if entry and entry.get("mtime") == stat.st_mtime and entry.get("size") == stat.st_size:
        return str(entry["sha256"])
    return None


def checkpoint_title(ctx: AppContext, info: CheckpointInfo) -> str:
    """A1111's `name [shorthash]`; just the name while the file has not been hashed."""
    sha = cached_sha256(ctx.registry.hashes, info.path)
    return f"{info.name} [{sha[:10]}]" if sha else info.name


def find_checkpoint(ctx: AppContext, name: Any) -> CheckpointInfo:
    """A checkpoint by title/name/hash: 400 for a path (`../../etc/passwd`), 404 when unknown."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"sd_model_checkpoint must be a checkpoint name from /sdapi/v1/sd-models, got {name!r}.")
    bare = name.strip()
    bare = bare.split(" [")[0] if bare.endswith("]") else bare
    if ".." in Path(bare).parts or Path(bare).is_absolute() or "\\" in bare:
        raise UserError(f"Checkpoint names are names from /sdapi/v1/sd-models, not paths: {name!r} was refused.")
    try:
        return ctx.registry.find(name)
    except UserError as exc:
        raise ApiError(404, str(exc)) from exc


def selected_checkpoint(ctx: AppContext) -> CheckpointInfo | None:
    """The model requests use unless they override it: the saved choice (as A1111's
    opts.sd_model_checkpoint), else the registry's default. A per-request override loads another
    model, and the next request without one goes back to this: "restore afterwards" for free."""
    saved = ctx.options.options.sd_model_checkpoint
    if saved:
        try:
            return ctx.registry.find(saved)
        except UserError:
            log.warning("The saved checkpoint %r is gone; using the default one.", saved)
    return ctx.registry.default_checkpoint()


# ------------------------------------------------------------------------------------------ requests

# Fields an infotext may fill (A1111 1.9's `infotext` request field): request name → params name.
_INFOTEXT_FIELDS = ("steps", "sampler_name", "scheduler", "cfg_scale", "seed", "width", "height",
                    "denoising_strength", "subseed", "subseed_strength")



def apply_infotext(req: GenerationRequest) -> GenerationRequest:
    """Fill the fields the client did not send from `req.infotext`, as A1111 does."""
    if not req.infotext:
        return req
    prompt, negative, fields = parse_infotext(req.infotext)
    values = infotext_to_params(fields)
    update: dict[str, Any] = {}
    sent = req.model_fields_set
    if "prompt" not in sent:
        update["prompt"] = prompt
    if "negative_prompt" not in sent:
        update["negative_prompt"] = negative
    for name in _INFOTEXT_FIELDS:
        if name in values and name not in sent:
            update[name] = values[name]
    overrides = dict(req.override_settings or {})
    from_infotext = {name: values[name] for name in SETTING_FIELDS if name in values}
    if "clip_skip" in values:
        from_infotext["CLIP_stop_at_last_layers"] = values["clip_skip"]
    if any(key not in overrides for key in from_infotext):
        update["override_settings"] = {**from_infotext, **overrides}
    return req.model_copy(update=update)


def _sampler(req: GenerationRequest) -> tuple[str, str]:
    name = req.sampler_name or req.sampler_index
    try:
        validate_sampler(name)
    except UserError as exc:
        raise ApiError(404, str(exc)) from exc  # A1111: 404 "Sampler not found"
    return validate_sampler(name, req.scheduler or "Automatic")


def _common(ctx: AppContext, req: GenerationRequest) -> dict[str, Any]:
    """Params fields shared by every mode, overrides applied."""
    controlnet, unknown = split_scripts(req.alwayson_scripts)
    if unknown:
        # A1111 refuses always-on scripts it does not have (ADetailer, ...) the same way: answering
        # with a picture made without them would look like success.
        names = ", ".join(map(repr, unknown))
        raise ApiError(422, f"always on script {names} not found: the only always-on script here is ControlNet.")
    units = (units_from_request(controlnet, ctx.controlnets, decode_image, unit_count(ctx.options.options))
             if controlnet is not None else ())
    sampler, schedule = _sampler(req)
    overrides = req.override_settings or {}
    if "sd_model_checkpoint" in overrides and overrides["sd_model_checkpoint"]:
        info: CheckpointInfo | None = find_checkpoint(ctx, overrides["sd_model_checkpoint"])
    else:
        info = selected_checkpoint(ctx)
    clip_skip = overrides.get("CLIP_stop_at_last_layers", ctx.options.options.CLIP_stop_at_last_layers)
    # Every override is checked here (unknown key or bad value: a 400 naming it, nothing runs); clients
    # send null for "leave as it is".
    settings = checked_changes({k: v for k, v in overrides.items() if v is not None})
    if req.eta is not None:
        # A1111's p.eta: the eta of whichever sampler runs (Euler a's ancestral or DDIM's), over the settings.
        settings.update(checked_changes({"eta_ancestral": req.eta, "eta_ddim": req.eta}))
    settings.update(checked_changes({key: getattr(req, key) for key in ("s_churn", "s_tmin", "s_tmax", "s_noise")
                                     if getattr(req, key) is not None}))
    save = req.save_images and not req.do_not_save_samples
    return {
        "prompt": req.prompt, "negative_prompt": req.negative_prompt, "sampler": sampler,
        "schedule_type": schedule, "steps": req.steps, "cfg_scale": req.cfg_scale, "seed": req.seed,
        "subseed": req.subseed, "subseed_strength": req.subseed_strength, "width": req.width,
        "height": req.height, "batch_size": req.batch_size, "batch_count": req.n_iter, "clip_skip": clip_skip,
        "checkpoint": info.name if info else None, "save": save, "override_settings": settings,
        "save_grid": save and not req.do_not_save_grid and ctx.options.options.grid_save,
        "controlnet_units": units, **everyday_fields(req),
    }


def everyday_fields(req: GenerationRequest) -> dict[str, Any]:
    """Tiling, styles and the refiner: params fields every mode has."""
    refiner = req.refiner_checkpoint if req.refiner_checkpoint not in NO_REFINER else None
    return {"tiling": bool(req.tiling), "styles": tuple(req.styles or ()), "refiner_checkpoint": refiner,
            "refiner_switch_at": 0.8 if req.refiner_switch_at is None else req.refiner_switch_at,
            "restore_faces": req.restore_faces, "face_restorer": req.face_restorer or "",
            "codeformer_weight": req.codeformer_weight}


def hires_fields(req: Txt2ImgRequest) -> dict[str, Any]:
    """txt2img's hires. fix fields; A1111's UI sends "Use same sampler" for "the first pass's"."""
    same = (None, "", "Use same sampler")
    return {"enable_hr": req.enable_hr, "hr_scale": req.hr_scale, "hr_upscaler": req.hr_upscaler or "Latent",
            "hr_second_pass_steps": req.hr_second_pass_steps, "hr_resize_x": req.hr_resize_x,
            "hr_resize_y": req.hr_resize_y,
            "denoising_strength": 0.7 if req.denoising_strength is None else req.denoising_strength,
            "hr_sampler": "" if req.hr_sampler_name in same else req.hr_sampler_name,
            "hr_schedule_type": "" if req.hr_scheduler in (None, "", "Use same scheduler") else req.hr_scheduler,
            "hr_prompt": req.hr_prompt or "", "hr_negative_prompt": req.hr_negative_prompt or ""}


def txt2img_params(ctx: AppContext, req: Txt2ImgRequest) -> Txt2ImgParams:
    if _script_key(req.script_name):
        raise ApiError(422, f"Script not found: {req.script_name!r}; txt2img has no scripts here "
                            f"(img2img has: {', '.join(IMG2IMG_SCRIPTS)}).")
    return Txt2ImgParams(**_common(ctx, req), **hires_fields(req))


def img2img_params(ctx: AppContext, req: Img2ImgRequest) -> GenerationParams:
    """img2img, inpainting when `mask` is given, outpainting when `script_name` names it."""
    if not req.init_images:
        raise ApiError(404, "Init image not found: send at least one base64 picture in init_images.")
    if len(req.init_images) > 1:
        raise UserError(f"{len(req.init_images)} init images were sent; this server takes one per request. "
                        "Send one request per picture.")
    image = decode_image(req.init_images[0], "init image")
    common = _common(ctx, req)
    denoise = 0.75 if req.denoising_strength is None else req.denoising_strength
    script = _script_key(req.script_name)
    if script:
        if script not in IMG2IMG_SCRIPTS:
            raise ApiError(422, f"Script not found: {req.script_name!r}; img2img scripts: {', '.join(IMG2IMG_SCRIPTS)}.")
        return IMG2IMG_SCRIPTS[script](common, image, denoise, req.script_args)
    if not 0 <= req.resize_mode <= 3:
        raise UserError(f"resize_mode must be 0 (just resize), 1 (crop and resize), 2 (resize and fill) "
                        f"or 3 (just resize, latent upscale), got {req.resize_mode}.")
    # 3 is A1111's "just resize (latent upscale)"; here every resize happens on pixels.
    resize = RESIZE_MODES[min(req.resize_mode, 2)]
    if req.mask is None:
        return Img2ImgParams(**common, init_image=image, denoising_strength=denoise, resize_mode=resize)
    mask = decode_image(req.mask, "mask")
    if mask.size != image.size:  # A1111 resizes both to width x height; the same as resizing the mask first
        mask = mask.resize(image.size, Image.NEAREST)
    if not 0 <= req.inpainting_fill < len(MASKED_CONTENT):
        raise UserError(f"inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), "
                        f"got {req.inpainting_fill}.")
    blur = req.mask_blur if req.mask_blur is not None else max(req.mask_blur_x, req.mask_blur_y)
    return InpaintParams(**common, init_image=image, denoising_strength=denoise, resize_mode=resize, mask=mask,
                         mask_blur=blur, masked_content=MASKED_CONTENT[req.inpainting_fill],
                         inpaint_area=INPAINT_AREAS[1 if req.inpaint_full_res else 0],
                         only_masked_padding=req.inpaint_full_res_padding,
                         invert_mask=bool(req.inpainting_mask_invert))


# ------------------------------------------------------------------------------------------ outpainting

_DIRECTIONS = {"left": "left", "right": "right", "up": "top", "top": "top", "down": "bottom", "bottom": "bottom"}
_POOR_MANS_FILL = ("mean", "edge", "noise", "mean")  # A1111's inpainting_fill index → our canvas fill


def _script_key(name: str | None) -> str:
    # A1111 matches script titles lowercased; clients send None, "" or "None" for "no script".
    key = (name or "").strip().lower()
    return "" if key == "none" else key


def _sides(pixels: Any, directions: Any) -> dict[str, Any]:
    if isinstance(directions, str):
        directions = [directions]
    if not isinstance(directions, list) or not directions:
        raise UserError(f"Outpainting direction must be a list of left, right, up, down; got {directions!r}.")
    sides = {"left": 0, "right": 0, "top": 0, "bottom": 0}
    for direction in directions:
        side = _DIRECTIONS.get(str(direction).strip().lower())
        if side is None:
            raise UserError(f"Unknown outpainting direction {direction!r}; use left, right, up, down.")
        sides[side] = pixels
    return sides


def _positional(args: list[Any] | dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(args, dict):
        return dict(args)
    return {name: value for name, value in zip(names, args, strict=False)}


def _outpaint(common: dict[str, Any], image: Image.Image, denoise: float, values: dict[str, Any],
              fill: str) -> OutpaintParams:
    if any(k in values for k in ("left", "right", "top", "bottom")):
        sides = {side: values.get(side, 0) for side in ("left", "right", "top", "bottom")}
    else:
        sides = _sides(values.get("pixels", 128), values.get("direction", ["left", "right", "up", "down"]))
    # The canvas size follows the picture plus the new pixels (A1111's scripts ignore width/height too).
    common = {**common, "width": 0, "height": 0}
    return OutpaintParams(**common, init_image=image, denoising_strength=denoise,
                          mask_blur=values.get("mask_blur", 8), fill=values.get("fill", fill), **sides)


def _outpainting_mk2(common: dict[str, Any], image: Image.Image, denoise: float,
                     args: list[Any] | dict[str, Any]) -> OutpaintParams:
    # A1111: [info (an HTML label, ignored), pixels, mask_blur, direction, noise_q, color_variation].
    # Lists that leave the label out (a common mistake) start with the pixel count.
    if isinstance(args, list) and args and isinstance(args[0], int | float) and not isinstance(args[0], bool):
        args = [None, *args]
    values = _positional(args, ("info", "pixels", "mask_blur", "direction", "noise_q", "color_variation"))
    # mk2 starts the new area from noise matched to the picture; "noise" is the closest fill here.
    return _outpaint(common, image, denoise, values, "noise")


def _poor_mans(common: dict[str, Any], image: Image.Image, denoise: float,
               args: list[Any] | dict[str, Any]) -> OutpaintParams:
    # A1111: [pixels, mask_blur, inpainting_fill (0 fill, 1 original, 2 latent noise, 3 latent nothing), direction].
    values = _positional(args, ("pixels", "mask_blur", "inpainting_fill", "direction"))
    fill_index = values.pop("inpainting_fill", 1)
    if isinstance(fill_index, bool) or not isinstance(fill_index, int) or not 0 <= fill_index <= 3:
        raise UserError(f"Poor man's outpainting: masked content must be 0 to 3, got {fill_index!r}.")
    values.setdefault("mask_blur", 4)
    return _outpaint(common, image, denoise, values, _POOR_MANS_FILL[fill_index])


def _outpainting(common: dict[str, Any], image: Image.Image, denoise: float,
                 args: list[Any] | dict[str, Any]) -> OutpaintParams:
    # This program's own form: named arguments {left, right, top, bottom | pixels, direction; fill; mask_blur}.
    if not isinstance(args, dict):
        raise UserError('script "outpainting" takes named script_args, e.g. {"left": 64, "right": 64, '
                        '"fill": "edge"}; or use script_name "Outpainting mk2" with A1111\'s list.')
    return _outpaint(common, image, denoise, args, "edge")


ScriptBuilder = Callable[[dict[str, Any], Image.Image, float, Any], GenerationParams]
IMG2IMG_SCRIPTS: dict[str, ScriptBuilder] = {
    "outpainting mk2": _outpainting_mk2,
    "poor man's outpainting": _poor_mans,
    "outpainting": _outpainting,
}


# ------------------------------------------------------------------------------------------ responses

# Infotext keys reported in their own `info` fields; the others go to extra_generation_params.
_CORE_KEYS = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "Batch size",
              "Denoising strength", "Clip skip", "Variation seed", "Variation seed strength"}


@dataclass
class Answer:
    images: list[str]
    info: str


def build_answer(req: GenerationRequest, result: GenerationResult, return_grid: bool = True) -> Answer:
    """Base64 images and A1111's `info` JSON; with save_images and several pictures the grid comes
    first (A1111's setting "return_grid", on by default), and index_of_first_image says so (also for
    the grids a script puts first)."""
    params = result.params
    images, infotexts = list(result.images), list(result.infotexts)
    first = result.grids
    if return_grid and req.save_images and not req.do_not_save_grid and len(images) > 1:
        images.insert(0, make_grid(images))
        infotexts.insert(0, infotexts[0])
        first += 1
    fields = parse_infotext(result.infotexts[0])[2] if result.infotexts else {}
    values = infotext_to_params(fields)
    subseeds = [infotext_to_params(parse_infotext(t)[2]).get("subseed", params.subseed) for t in result.infotexts]
    count = len(result.images)
    info = {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * count,
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * count,
        "seed": result.seeds[0] if result.seeds else params.seed,
        "all_seeds": list(result.seeds),
        "subseed": subseeds[0] if subseeds else params.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": params.subseed_strength,
        "width": params.width,
        "height": params.height,
        "sampler_name": params.sampler,
        "scheduler": params.schedule_type,
        "cfg_scale": params.cfg_scale,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "restore_faces": "Face restoration" in fields,
        "face_restoration_model": fields.get("Face restoration"),
        "sd_model_name": values.get("model"),
        "sd_model_hash": values.get("model_hash"),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": getattr(params, "denoising_strength", req.denoising_strength),
        "extra_generation_params": {k: v for k, v in fields.items() if k not in _CORE_KEYS},
        "index_of_first_image": first,
        "infotexts": infotexts,
        "styles": list(req.styles or []),
        "job_timestamp": datetime.now().strftime("%Y%m%d%H%M%S"),
        "clip_skip": params.clip_skip,
        "interrupted": result.interrupted,
        "version": VERSION,
    }
    encoded = [encode_image(image, text) for image, text in zip(images, infotexts, strict=True)]
    # ControlNet's detected maps after the pictures, without infotext, as the extension appends them.
    encoded += [encode_image(image) for image in result.detected_maps]
    return Answer(images=encoded if req.send_images else [], info=json.dumps(info))


def echo_parameters(req: GenerationRequest) -> dict[str, Any]:
    """The request as received (`parameters` in the answer); A1111 leaves the pictures out of img2img's
    echo unless include_init_images is set."""
    data = req.model_dump()
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        data["init_images"] = None
        data["mask"] = None
    return data


def after_generation(ctx: AppContext, req: GenerationRequest, params: GenerationParams) -> None:
    """override_settings_restore_afterwards=false keeps the overridden model and CLIP skip selected
    (in memory, as A1111 does: config.json is not rewritten)."""
    overrides = req.override_settings or {}
    if req.override_settings_restore_afterwards or not overrides:
        return
    keep: dict[str, Any] = {}
    if overrides.get("sd_model_checkpoint") and params.checkpoint:
        keep["sd_model_checkpoint"] = params.checkpoint
    if "CLIP_stop_at_last_layers" in overrides:
        keep["CLIP_stop_at_last_layers"] = params.clip_skip
    if keep:
        ctx.options.update(keep, save=False)
