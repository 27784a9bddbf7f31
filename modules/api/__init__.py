"""The HTTP API: AUTOMATIC1111's /sdapi/v1 routes, so its plug-ins, bots and scripts work unchanged.

    python webui.py --api         # the web UI with the API on the same port (7860)
    python webui.py --nowebui     # the API alone, on port 7861 as in A1111
    --api-auth user:pass[,u2:p2]  # HTTP basic auth on every /sdapi/v1 route

webui.py calls `launch(ctx, args)` for --nowebui, and `mount(app, ctx, args.api_auth, vars(args))`
on the web UI's FastAPI app for --api. Tests and tools use `create_api(ctx, auth)`.

Request and response bodies follow A1111 field for field (modules/api/models.py); unknown fields
are ignored. Images travel as base64 PNGs with their infotext in the PNG; `info` is the JSON
string A1111 clients parse. User mistakes answer 4xx with {"error", "detail", "body", "errors"};
wrong types answer FastAPI's 422.

Outpainting goes through /sdapi/v1/img2img with a `script_name`, as in A1111, so clients that
outpaint against A1111 work unchanged:

    {"init_images": [<b64>], "script_name": "Outpainting mk2",
     "script_args": ["", 128, 8, ["left", "right", "up", "down"], 1.0, 0.05], "denoising_strength": 0.8}

A1111's positional arguments are [label (ignored), pixels, mask_blur, directions, noise_q,
color_variation]; "Poor man's outpainting" takes [pixels, mask_blur, masked_content 0-3, directions].
This program's own `script_name: "outpainting"` takes named arguments instead:
{"left": 64, "right": 0, "top": 32, "bottom": 0, "fill": "edge"|"mean"|"noise", "mask_blur": 4}.
The new picture is the old one plus the added pixels (rounded up to multiples of 8); width and
height of the request do not apply. See docs/api.md.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from modules.api.auth import parse_credentials
from modules.api.controlnet_routes import build_controlnet_router
from modules.api.mapping import VERSION
from modules.api.merge_routes import build_merge_router
from modules.api.queue_routes import build_queue_router
from modules.api.routes import PREFIX, build_router
from modules.context import AppContext

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 7861  # A1111's port with --nowebui
Auth = str | Sequence[tuple[str, str]] | None

__all__ = ["DEFAULT_API_PORT", "PREFIX", "create_api", "launch", "mount"]


def create_api(ctx: AppContext, auth: Auth = None, flags: Mapping[str, Any] | None = None) -> FastAPI:
    """A FastAPI app serving only the API, with OpenAPI docs at /docs.

    auth: "user:pass[,user2:pass2]" or [(user, password), ...]; None for no login.
    flags: the parsed command line, answered (passwords hidden) by /sdapi/v1/cmd-flags.
    """
    app = FastAPI(title="Stable Diffusion API", version=VERSION, docs_url="/docs", redoc_url=None,
                  description="AUTOMATIC1111-compatible /sdapi/v1 API of a local, offline Stable Diffusion web UI.")
    app.include_router(build_router(ctx, parse_credentials(auth), flags))
    app.include_router(build_controlnet_router(ctx, parse_credentials(auth)))  # the extension's own prefix
    app.include_router(build_merge_router(ctx, parse_credentials(auth)))
    app.include_router(build_queue_router(ctx, parse_credentials(auth)))  # agent-scheduler's routes
    return app


def mount(app: FastAPI, ctx: AppContext, auth: Auth = None, flags: Mapping[str, Any] | None = None) -> None:
    """Add the API routes to an existing FastAPI app (the web UI's, which may already be serving).

    Routes are looked up per request, so adding them to a running app works; exception handlers
    and middleware could not be added any more, which is why the routes handle their own errors.
    """
    app.include_router(build_router(ctx, parse_credentials(auth), flags))
    app.include_router(build_controlnet_router(ctx, parse_credentials(auth)))
    app.include_router(build_merge_router(ctx, parse_credentials(auth)))
    app.include_router(build_queue_router(ctx, parse_credentials(auth)))
    app.openapi_schema = None  # regenerate the schema with the new routes
    if getattr(app, "docs_url", None) is None and app.openapi_url:
        # Gradio switches FastAPI's docs off; A1111 users expect them at /docs.
        openapi_url = app.openapi_url

        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=openapi_url, title="Stable Diffusion API - docs")

        app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)


def launch(ctx: AppContext, args: argparse.Namespace) -> None:
    """--nowebui: serve the API alone until Ctrl+C, on 127.0.0.1 (0.0.0.0 with --listen), port 7861."""
    import uvicorn

    # webui.py resolves the address into args.server_name; the flag itself is the fallback.
    host = getattr(args, "server_name", None) or ("0.0.0.0" if getattr(args, "listen", False) else "127.0.0.1")
    port = getattr(args, "port", None) or DEFAULT_API_PORT
    auth = getattr(args, "api_auth", None)
    if host == "0.0.0.0" and not auth:
        print("WARNING: --listen serves the API to your whole network without a password; "
              "add --api-auth user:password to require a login.")
    app = create_api(ctx, auth, vars(args))
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    print(f"API: http://{shown}:{port}{PREFIX}/ (docs: http://{shown}:{port}/docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
