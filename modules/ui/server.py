"""Starting the web server: address, port, login, queue; nothing that reaches the network."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gradio as gr
import httpx
from gradio import networking

from modules.context import AppContext
from modules.credentials import parse_credentials
from modules.errors import UserError
from modules.ui.app import build_ui
from modules.ui.common import selected_checkpoint
from modules.ui.hooks import ExtraTab, ScriptHook
from modules.ui.theme import CSS, JS, make_theme

log = logging.getLogger(__name__)

DEFAULT_PORT = 7860


def parse_auth(value: str | Sequence[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    """A1111's --gradio-auth (text or webui.py's parsed pairs); None when no login is set."""
    return parse_credentials(value, "--gradio-auth") or None


def load_initial_model(ctx: AppContext) -> None:
    """Load the model the page will show before the page is built, as A1111 does at start-up,
    so the size sliders start at its native size. A broken file must not keep the UI from starting."""
    if ctx.registry.current_info is not None:
        return
    name = selected_checkpoint(ctx)
    if name is None:
        print("No checkpoint found: put one into models/Stable-diffusion and press 🔄 in the page.")
        return
    try:
        ctx.registry.load(name)
    except UserError as exc:
        print(f"Could not load checkpoint {name}: {exc}")


def launch(ctx: AppContext, args: argparse.Namespace, extra_tabs: Sequence[ExtraTab] = (),
           scripts: Sequence[ScriptHook] = (), on_app: Callable[[Any], None] | None = None,
           block: bool = True) -> gr.Blocks:
    """Build the page and serve it; blocks until Ctrl+C unless `block` is False.

    args: `listen` (serve on 0.0.0.0), `port` (default 7860), `gradio_auth` ("u:p[,u2:p2]"),
    `autolaunch` (open a browser tab), optionally `server_name` (overrides `listen`),
    `skip_load_model_at_start`, and `api`: serve the HTTP API on the same port by calling
    `modules.api.mount(app, ctx, args.api_auth, vars(args))` with the running FastAPI app. `on_app` receives that app
    too (for other routes), and `extra_tabs` / `scripts` are the extension hooks (see hooks.py).
    """
    auth = parse_auth(getattr(args, "gradio_auth", None))
    listen = bool(getattr(args, "listen", False))
    server_name = getattr(args, "server_name", None) or ("0.0.0.0" if listen else "127.0.0.1")
    if server_name != "127.0.0.1" and not auth:
        print("WARNING: --listen serves this UI to your whole network without a password; "
              "add --gradio-auth user:password to require a login.")
    if not getattr(args, "skip_load_model_at_start", False):
        load_initial_model(ctx)
    demo = build_ui(ctx, extra_tabs, scripts)
    # Generations from several browser tabs wait their turn instead of failing.
    demo.queue(default_concurrency_limit=1)
    with _patient_self_check():
        app, _, _ = demo.launch(
            server_name=server_name,
            server_port=getattr(args, "port", None) or DEFAULT_PORT,
            auth=auth,
            inbrowser=bool(getattr(args, "autolaunch", False)),
            prevent_thread_lock=True,
            share=False,  # a share link would open a tunnel through gradio's servers
            show_error=True,
            theme=make_theme(),
            css=CSS,
            js=JS,
            footer_links=["api", "settings"],
            run_history=False,  # no copies of generated pictures in the browser's storage
            enable_monitoring=False,
            mcp_server=False,
            ssr_mode=False,  # SSR would need Node; the page is rendered in the browser
        )
    if getattr(args, "api", False):
        _mount_api(app, ctx, args)
    if on_app is not None:
        on_app(app)
    if block:
        demo.block_thread()
    return demo


def _mount_api(app: Any, ctx: AppContext, args: argparse.Namespace) -> None:
    """--api: the HTTP API's routes on the web UI's own server, as A1111 serves them."""
    import importlib

    api = importlib.import_module("modules.api")
    mount = getattr(api, "mount", None)
    if mount is None:
        raise UserError("--api: modules.api has no mount(app, ctx, auth, flags) to add its routes to the web UI's server.")
    mount(app, ctx, getattr(args, "api_auth", None), vars(args))


SELF_CHECK_SECONDS = 60.0


@contextlib.contextmanager
def _patient_self_check() -> Iterator[None]:
    """gradio's launch() checks that the new server answers with one HEAD request of 3 s timeout and
    refuses to start ("When localhost is not accessible...") when it times out, which happens on
    a machine whose cores are busy (training, another generation). Keep asking for up to a minute."""

    def url_ok(url: str) -> bool:
        deadline = time.monotonic() + SELF_CHECK_SECONDS
        while time.monotonic() < deadline:
            try:
                response = httpx.head(url, timeout=10, verify=False)
                if response.status_code in (200, 401, 301, 302, 303, 307, 308):
                    return True
            except httpx.HTTPError:
                pass  # not up yet, or too busy to answer in time
            time.sleep(0.5)
        return False

    original = networking.url_ok
    networking.url_ok = url_ok
    try:
        yield
    finally:
        networking.url_ok = original
