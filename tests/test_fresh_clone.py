"""The README's first command on a fresh clone: `./webui.sh` starts the page, which shows txt2img with
the embedded default model selected.

The repository's HEAD is cloned locally (no network) into a temporary folder; the venv running these
tests is reused through webui.sh's own settings, VENV_DIR=<this venv> SKIP_INSTALL=1, so nothing is
installed (and the shared venv is never re-pointed at the clone). Uncommitted changes are not in
the clone: this checks what a user gets from `git clone`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, browser_only

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # about 20 s on an idle machine; generous for a busy CI box
READY_LINE = "Running on local URL"




def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clone_head(target: Path) -> Path:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(target)], check=True)
    subprocess.run(["git", "-C", str(target), "checkout", "-q", head], check=True)
    return target


def _stop(proc: subprocess.Popen[str]) -> None:
    """End the server's whole process group: SIGTERM (Python ends at once), SIGKILL if that fails."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@browser_only
def test_webui_sh_on_a_fresh_clone_serves_the_txt2img_page(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    clone = _clone_head(tmp_path / "clone")
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COMMANDLINE_ARGS")}
    env.update(VENV_DIR=sys.prefix, SKIP_INSTALL="1", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    # Its own process group (session), so that stopping it also stops anything it started.
    proc = subprocess.Popen(["./webui.sh", "--port", str(port)], cwd=clone, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(f"{time.monotonic() - started:6.1f} {line}")
            if READY_LINE in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        while not ready.wait(0.5):
            assert proc.poll() is None, "webui.sh exited early:\n" + "".join(lines)
            assert time.monotonic() - started < START_TIMEOUT_S, "no start within the limit:\n" + "".join(lines)
        startup_s = time.monotonic() - started
        assert f"http://127.0.0.1:{port}" in "".join(lines)
        assert not any("Installing" in line or "Creating" in line for line in lines), "".join(lines)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                         args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => document.body.dataset.uiReady === '1'")
            assert page.locator("#tab_txt2img-button").get_attribute("aria-selected") == "true"
            assert page.locator("#txt2img_generate").is_visible()
            assert page.input_value("#sd_checkpoint input") == "default-shapes.safetensors"
            browser.close()
        page_s = time.monotonic() - started - startup_s
        print("".join(lines))
        print(f"webui.sh on a fresh clone: serving after {startup_s:.1f} s, page checked in {page_s:.1f} s")
    finally:
        stopping = time.monotonic()
        _stop(proc)
        print(f"stopped in {time.monotonic() - stopping:.1f} s")
    assert proc.returncode is not None
    assert not (clone / "venv").exists()  # the existing venv was used, none was created
