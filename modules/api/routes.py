"""The /sdapi/v1 handlers: each maps its body onto the app context and answers in A1111's shape.

Generation handlers are plain `def`s: FastAPI runs them in its threadpool, where they wait for the
device on the registry's lock, so concurrent requests queue and all complete while the event loop
stays free for /progress, /interrupt and /skip (those are `async def` and never block).

Errors are turned into answers by `ApiRoute` itself rather than by app-wide exception handlers:
the routes are also mounted onto the web UI's already running FastAPI app, whose handlers and
middleware can no longer be changed at that point.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.api import mapping
from modules.api.auth import Credentials, auth_dependency
from modules.api.extras import add_extras_routes
from modules.api.jobs import run_and_wait
from modules.api.listings import add_listing_routes
from modules.api.models import (
    ImageResponse,
    Img2ImgRequest,
    MemoryResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    Txt2ImgRequest,
)
from modules.context import AppContext
from modules.errors import UserError
from modules.images import read_infotext
from modules.models.discovery import CheckpointInfo
from modules.options import checked_changes
from modules.processing.infotext import parse_infotext
from modules.sampling.samplers import list_samplers, validate_sampler
from modules.sampling.schedule_types import SCHEDULES

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
READ_ONLY_OPTIONS = ("sd_checkpoint_hash",)  # in GET /options, ignored when a client posts it back


def error_response(status_code: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A1111's error body: {"error": type, "detail": message, "body": "", "errors": message}."""
    return JSONResponse(status_code=status_code, headers=dict(headers or {}),
                        content={"error": error, "detail": detail, "body": "", "errors": detail})


class ApiRoute(APIRoute):
    """A route whose errors always come back as JSON: UserError → 400 (or its ApiError status),
    bad bodies → 422, anything else → 500 with the message; the server itself never goes down."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:  # FastAPI's own 422 body, as A1111 answers
                return JSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})
            except StarletteHTTPException as exc:
                return error_response(exc.status_code, "HTTPException", str(exc.detail), exc.headers)
            except UserError as exc:
                return error_response(getattr(exc, "status_code", 400), type(exc).__name__, str(exc))
            except Exception as exc:  # a bug: keep the traceback in the log, answer without dying
                log.exception("API %s %s failed", request.method, request.url.path)
                return error_response(500, type(exc).__name__, str(exc))

        return guarded


def public_flags(flags: Mapping[str, Any] | None) -> dict[str, Any]:
    """The command-line flags as JSON; passwords (--api-auth, --gradio-auth) are never sent back."""
    out: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if "auth" in key and value:
            out[key] = "<hidden>"
        elif value is None or isinstance(value, str | int | float | bool):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = [v if isinstance(v, str | int | float | bool) else str(v) for v in value]
        else:
            out[key] = str(value)  # Paths, and the sub-command's function
    return out


def build_router(ctx: AppContext, credentials: Credentials, flags: Mapping[str, Any] | None = None) -> APIRouter:
    """Every /sdapi/v1 route, bound to `ctx`; behind basic auth when `credentials` are given."""
    dependencies = [Depends(auth_dependency(credentials))] if credentials else []
    router = APIRouter(prefix=PREFIX, route_class=ApiRoute, dependencies=dependencies, tags=["sdapi"])
    cmd_flags = public_flags(flags)

    # ------------------------------------------------------------------ generation
    # Both go through the durable queue (modules/api/jobs.py): checked, queued behind the jobs before
    # them, answered when done; `force_task_id` names the job for /internal/progress, as A1111 1.6+.
    @router.post("/txt2img", response_model=ImageResponse)
    def txt2img(req: Txt2ImgRequest) -> ImageResponse:
        return run_and_wait(ctx, "txt2img", req)

    @router.post("/img2img", response_model=ImageResponse)
    def img2img(req: Img2ImgRequest) -> ImageResponse:
        """img2img; inpainting with `mask`; outpainting with `script_name` "Outpainting mk2" (see docs/api.md)."""
        return run_and_wait(ctx, "img2img", req)

    @router.get("/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = False) -> ProgressResponse:
        control, state = ctx.control, ctx.control.state
        active = state.active
        interrupted = control.interrupted
        started = datetime.now() - timedelta(seconds=time.monotonic() - state.started) if active else None
        info = {
            "skipped": control.should_stop_batch() and not interrupted,
            "interrupted": interrupted,
            "stopping_generation": False,
            "job": "",
            "job_count": state.job_count if active else 0,
            "job_timestamp": started.strftime("%Y%m%d%H%M%S") if started else "0",
            "job_no": state.job if active else 0,
            "sampling_step": state.step if active else 0,
            "sampling_steps": state.steps if active else 0,
        }
        if not active:
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=info)
        preview = state.preview
        image = mapping.encode_image(preview) if preview is not None and not skip_current_image else None
        return ProgressResponse(progress=state.fraction, eta_relative=state.eta_seconds, state=info,
                                current_image=image)

    @router.post("/interrupt")
    async def interrupt() -> dict[str, Any]:
        ctx.control.interrupt()
        if ctx.queue is not None:  # jobs running on Ray Serve replicas too
            ctx.queue.interrupt_running()
        return {}

    @router.post("/skip")
    async def skip() -> None:
        ctx.control.skip()
        if ctx.queue is not None:  # jobs running on Ray Serve replicas too
            ctx.queue.skip_running()

    # ------------------------------------------------------------------ settings and models
    @router.get("/options")
    def get_options() -> dict[str, Any]:
        options = ctx.options.options.to_dict()
        selected = mapping.selected_checkpoint(ctx)
        if selected is not None:
            options["sd_model_checkpoint"] = mapping.checkpoint_title(ctx, selected)
        loaded = ctx.registry.current_info
        options["sd_checkpoint_hash"] = mapping.cached_sha256(ctx.registry.hashes, loaded.path) if loaded else None
        return options

    @router.post("/options")
    def set_options(req: Annotated[dict[str, Any], Body()]) -> None:
        """Change settings; `sd_model_checkpoint` loads that model before answering (as A1111)."""
        # Unknown keys and values of the wrong type are refused, naming them, before anything changes;
        # the read-only keys of GET /options may come back with the rest.
        if "upscaler_for_img2img" in req and req["upscaler_for_img2img"] is None:
            req = {**req, "upscaler_for_img2img": ""}  # A1111's default is null: Lanczos
        changes = checked_changes({k: v for k, v in req.items() if k not in READ_ONLY_OPTIONS})
        if "default_sampler" in changes or "default_scheduler" in changes:
            opts = ctx.options.options
            sampler, schedule = validate_sampler(changes.get("default_sampler", opts.default_sampler),
                                                 changes.get("default_scheduler", opts.default_scheduler))
            changes.update(default_sampler=sampler, default_scheduler=schedule)
        clip = changes.get("CLIP_stop_at_last_layers", 1)
        if isinstance(clip, bool) or not isinstance(clip, int) or not 1 <= clip <= 12:
            # Checked here: a bad value saved would make every later request fail.
            raise UserError(f"CLIP_stop_at_last_layers must be a whole number from 1 to 12, got {clip!r}.")
        info = None
        if changes.get("sd_model_checkpoint"):
            info = mapping.find_checkpoint(ctx, changes["sd_model_checkpoint"])
            changes["sd_model_checkpoint"] = info.name
        if changes.get("upscaler_for_img2img") not in (None, "", "None"):
            ctx.upscalers.find(changes["upscaler_for_img2img"])
        if "sd_vae" in changes:
            vae = changes["sd_vae"] or "Automatic"
            if not isinstance(vae, str):
                raise UserError(f"sd_vae must be a VAE name, Automatic or None; got {vae!r}.")
            if vae not in ("Automatic", "None"):
                ctx.registry.find_vae(vae)
            changes["sd_vae"] = vae
        _switch_model(ctx, info, changes)
        ctx.options.update(changes)

    @router.get("/cmd-flags")
    async def get_cmd_flags() -> dict[str, Any]:
        return cmd_flags

    @router.get("/sd-models", response_model=list[SDModelItem])
    def get_sd_models() -> list[SDModelItem]:
        items = []
        for info in ctx.registry.checkpoints:
            sha = mapping.cached_sha256(ctx.registry.hashes, info.path)
            config = info.config
            items.append(SDModelItem(
                title=mapping.checkpoint_title(ctx, info),
                # A1111: the name without extension, sub-folders joined with "_".
                model_name=os.path.splitext(info.name.replace("/", "_"))[0],
                hash=sha[:10] if sha else None, sha256=sha, filename=str(info.path),
                config=str(config) if config else None))
        return items

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        ctx.registry.refresh()

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        ctx.registry.refresh()

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def get_sd_vae() -> list[SDVaeItem]:
        return [SDVaeItem(model_name=info.name, filename=str(info.path)) for info in ctx.registry.vaes]

    @router.get("/samplers", response_model=list[SamplerItem])
    async def get_samplers() -> list[SamplerItem]:
        # options.scheduler: what "Automatic" means for the sampler, as A1111 1.9+ lists it.
        return [SamplerItem(name=s.name, aliases=list(s.aliases),
                            options={} if s.automatic_schedule == "Uniform" else {"scheduler": s.automatic_schedule.lower()})
                for s in list_samplers()]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    async def get_schedulers() -> list[SchedulerItem]:
        return [SchedulerItem(name=s.name, label=s.label, aliases=list(s.aliases) or None, default_rho=s.default_rho,
                              need_inner_model=s.need_inner_model) for s in SCHEDULES]

    @router.get("/prompt-styles")
    def get_prompt_styles() -> list[dict[str, str]]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in ctx.styles.styles()]

    add_listing_routes(router, ctx)  # upscalers, LoRAs, embeddings, scripts, ...
    add_extras_routes(router, ctx)

    # ------------------------------------------------------------------ utilities
    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(req: PNGInfoRequest) -> PNGInfoResponse:
        image = mapping.decode_image(req.image)
        text = read_infotext(image) or ""
        items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
        if not text:
            return PNGInfoResponse(info="", items=items, parameters={})
        prompt, negative, values = parse_infotext(text)
        parameters: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative}
        for key, value in values.items():
            if key == "Size" and "x" in value:  # A1111 splits the size into Size-1 / Size-2
                parameters["Size-1"], parameters["Size-2"] = value.split("x", 1)
            else:
                parameters[key] = value
        return PNGInfoResponse(info=text, items=items, parameters=parameters)

    @router.get("/memory", response_model=MemoryResponse)
    def get_memory() -> MemoryResponse:
        return MemoryResponse(ram=_ram(), cuda=_cuda(ctx))

    return router


def _ram() -> dict[str, Any]:
    # A1111's numbers: used = this process's resident memory, total = the machine's.
    try:
        import psutil

        used = psutil.Process(os.getpid()).memory_info().rss
        total = psutil.virtual_memory().total
        return {"free": total - used, "used": used, "total": total}
    except Exception as exc:  # psutil missing or the platform refuses: say so instead of failing
        return {"error": str(exc)}


def _cuda(ctx: AppContext) -> dict[str, Any]:
    import torch

    device = ctx.policy.device
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"error": "unavailable"}
    try:
        free, total = torch.cuda.mem_get_info(device)
        s = torch.cuda.memory_stats(device)
        pair = lambda key: {"current": s.get(f"{key}.all.current", 0), "peak": s.get(f"{key}.all.peak", 0)}  # noqa: E731
        return {"system": {"free": free, "used": total - free, "total": total},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
    except Exception as exc:
        return {"error": str(exc)}


def _switch_model(ctx: AppContext, info: CheckpointInfo | None, changes: dict[str, Any]) -> None:
    """Load the chosen checkpoint and/or VAE now, as A1111 does before answering POST /options."""
    vae_keys = ("sd_vae", "sd_vae_overrides_per_model_preferences")
    if info is None and not any(key in changes for key in vae_keys):
        return
    if info is not None:
        ctx.registry.load(info)
    if ctx.registry.current_info is not None:
        wanted = replace(ctx.options.options, **{k: v for k, v in changes.items() if k in vae_keys})
        ctx.registry.use_vae(ctx.vae_choice(wanted))
