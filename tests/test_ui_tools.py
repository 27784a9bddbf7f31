"""The Extras tab and the Script dropdown, built without a browser and driven through their
handlers: the page builds with both, the Extras handler upscales and saves, the selector runs the
chosen script with its controls' values and refuses bad values with the script's message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.processing.params import Txt2ImgParams
from modules.ui.app import build_ui
from modules.ui.extras import run_extras
from modules.ui.scripts_ui import build_script_selector
from tests.test_upscalers import picture, write_esrgan
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    home = tmp_path_factory.mktemp("ui-tools")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny-a")
    write_esrgan(home / "models" / "ESRGAN", "4x-tiny", 4)
    return AppContext.create(Paths.make(data_dir=home), CPU)


def test_page_has_the_extras_tab_and_script_dropdowns(ctx: AppContext) -> None:
    demo = build_ui(ctx)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert "tab_extras" in by_id and "extras_upscaler_1" in by_id
    assert "4x-tiny" in [c[0] for c in by_id["extras_upscaler_1"].choices]
    assert [c[0] for c in by_id["txt2img_script"].choices] == ["None", "X/Y/Z plot", "Prompt matrix"]
    assert "SD upscale" in [c[0] for c in by_id["img2img_script"].choices]


def test_extras_handler_upscales_and_saves(ctx: AppContext) -> None:
    result, info, message = run_extras(ctx, picture(20, 12), "Scale by", 2, 512, 512, True, "4x-tiny", "None", 0)
    assert result is not None and result.size == (40, 24) and "4x-tiny" in info
    assert list((Path(ctx.outdir) / "extras-images").rglob("*.png"))
    result, _, message = run_extras(ctx, picture(20, 12), "Scale to", 2, 30, 30, True, "Lanczos", "None", 0)
    assert result is not None and result.size == (30, 30)
    result, _, message = run_extras(ctx, picture(20, 12), "Scale by", 2, 1, 1, True, "bogus", "None", 0)
    assert result is None and "bogus" in message and "Error" in message


def test_script_selector_runs_the_chosen_script(ctx: AppContext) -> None:
    with gr.Blocks():
        selector = build_script_selector(ctx, "txt2img")
    data = {c: c.value for c in selector.inputs}
    assert selector.runner(ctx, data) == ctx.generate  # "None": plain generation
    controls = selector.controls["X/Y/Z plot"]
    data.update({selector.dropdown: "X/Y/Z plot", controls["x_type"]: "Steps", controls["x_values"]: "1-2"})
    result = selector.runner(ctx, data)(Txt2ImgParams(prompt="a", width=64, height=64, steps=1, seed=1, save=False))
    assert len(result.images) == 3 and result.images[1].size == (64, 64)
    data[controls["x_values"]] = "1, two"
    with pytest.raises(UserError, match="'two' is not a number"):
        selector.runner(ctx, data)(Txt2ImgParams(prompt="a", width=64, height=64, steps=1, save=False))


# ------------------------------------------------------------------------------------------ in the browser
# The page and server fixtures of tests/test_ui.py (a tiny checkpoint, headless Chromium).
from tests.test_ui import (  # noqa: E402, F401 - fixtures are found by name
    _picture,
    _set_number,
    _upload,
    _wait_done,
    browser,
    browser_only,
    data_dir,
    page,
    server,
)


def _choose(page: Any, elem_id: str, option: str) -> None:  # noqa: F811 - the fixture name
    page.click(f"#{elem_id} input")
    page.click(f"[role=option]:has-text('{option}')")


@browser_only
def test_xyz_plot_and_extras_in_the_browser(page: Any, server: Any, tmp_path: Path) -> None:  # noqa: F811
    _choose(page, "txt2img_script", "X/Y/Z plot")
    page.wait_for_selector("#txt2img_script_xyz_plot_x_type", state="visible")
    _choose(page, "txt2img_script_xyz_plot_x_type", "Steps")
    page.locator("#txt2img_script_xyz_plot_x_values textarea, #txt2img_script_xyz_plot_x_values input").first.fill("1,2")
    page.fill("#txt2img_prompt textarea", "a red circle")
    _set_number(page, "txt2img_steps", 2)
    page.click("#txt2img_generate")
    info = _wait_done(page, "txt2img")
    assert "Steps: 1" in info
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery img').length >= 3")
    # Extras: a model file dropped in after start-up appears on refresh and upscales.
    write_esrgan(server.data / "models" / "ESRGAN", "4x-browser", 4)
    page.click("#tab_extras-button")
    page.click("#extras_refresh_upscalers")
    page.wait_for_timeout(1000)
    _upload(page, "extras_image", _picture(tmp_path / "in.png", 32))
    _choose(page, "extras_upscaler_1", "4x-browser")
    page.click("#extras_generate")
    page.wait_for_selector("#extras_message .ok-box")
    assert "64x64" in page.inner_text("#extras_message") and "4x-browser" in page.input_value("#extras_info textarea")
