"""The Extras tab and the Script dropdown, built without a browser and driven through their
handlers: the page builds with both, the Extras handler upscales and saves, the selector runs the
chosen script with its controls' values and refuses bad values with the script's message."""

from __future__ import annotations

from pathlib import Path

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
