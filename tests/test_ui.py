"""The Gradio UI: a few plain unit tests, then the real server driven through headless Chromium.

The browser tests start the server in-process on a free 127.0.0.1 port with a tiny checkpoint in a
temporary data folder, and drive Debian's Chromium with Playwright. They are skipped (with the
reason) when either is missing; to run them:

    apt-get install -y chromium            # /usr/bin/chromium
    ./venv/bin/pip install playwright      # the Python package only; never `playwright install`

Set UI_SCREENSHOT=docs/screenshot-txt2img.png to write the txt2img screenshot after a generation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.images import read_infotext, save_image
from modules.processing.infotext import parse_infotext
from modules.ui import ExtraTab, ScriptControls, ScriptHook, build_ui, launch, parse_auth
from modules.ui.modes import editor_image_and_mask
from modules.ui.paste import infotext_values
from tests.browser import CHROMIUM, CHROMIUM_ARGS, browser_missing, browser_only
from tests.tiny_models import CPU, write_tiny_checkpoint

TIMEOUT_MS = 180_000  # generous: the CI machine may be busy training while the tests run
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "default-shapes.safetensors"


# ------------------------------------------------------------------------------------------ unit tests

def test_parse_auth() -> None:
    assert parse_auth(None) is None and parse_auth("  ") is None
    assert parse_auth("u:p") == [("u", "p")]
    assert parse_auth("u:p, u2:pa:ss") == [("u", "p"), ("u2", "pa:ss")]
    with pytest.raises(UserError, match="user:password"):
        parse_auth("nopassword")


def test_parse_auth_takes_pairs_from_webui() -> None:
    assert parse_auth([("a", "b")]) == [("a", "b")] and parse_auth([]) is None


def test_login_required_with_gradio_auth(data_dir: Path) -> None:
    import httpx

    ctx = AppContext.create(Paths.make(data_dir=data_dir), CPU)
    args = argparse.Namespace(listen=False, port=_free_port(), gradio_auth="me:secret", autolaunch=False,
                              skip_load_model_at_start=True)
    demo = launch(ctx, args, block=False)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}") as client:
            assert client.get("/config").status_code == 401
            assert client.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
            assert client.post("/login", data={"username": "me", "password": "secret"}).status_code == 200
            assert client.get("/config").status_code == 200
    finally:
        demo.close()
    assert ctx.registry.current_info is None  # skip_load_model_at_start is honoured


def test_editor_mask_is_painted_pixels() -> None:
    background = Image.new("RGBA", (16, 8), (10, 20, 30, 255))
    layer = Image.new("RGBA", (16, 8), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((2, 2, 5, 5), fill=(255, 0, 0, 255))  # any colour counts
    picture, mask = editor_image_and_mask({"background": background, "layers": [layer], "composite": None})
    assert picture.mode == "RGB" and picture.size == (16, 8)
    arr = np.asarray(mask)
    assert arr[3, 3] == 255 and arr[0, 0] == 0 and (arr > 0).sum() == 16
    with pytest.raises(UserError, match="Upload a picture"):
        editor_image_and_mask({"background": None, "layers": [], "composite": None})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("webui-data")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    return data


def test_build_ui_loads_nothing_and_wires_every_mode(data_dir: Path, tmp_path: Path) -> None:
    ctx = AppContext.create(Paths.make(data_dir=data_dir, outdir=tmp_path), CPU)
    demo = build_ui(ctx)
    assert ctx.registry.current_info is None  # building the page loads no model
    assert {"txt2img", "img2img", "inpaint", "outpaint"} <= {fn.api_name for fn in demo.fns.values()}
    (dropdown,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sd_checkpoint"]
    # The embedded default model (in the code folder) is always listed beside the data dir's models.
    assert [c[0] for c in dropdown.choices] == ["default-shapes.safetensors", "tiny.safetensors"]
    assert dropdown.value == "tiny.safetensors"
    # The Train tab, and a LoRA / embeddings panel in every generation tab (driven in test_lora.py).
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"tab_train", "train_start", "train_stop"} <= ids
    assert {f"{mode}_networks_{part}" for mode in ("txt2img", "img2img", "inpaint", "outpaint")
            for part in ("lora", "embeddings", "refresh")} <= ids


def test_extension_hooks_reach_the_page_and_the_params(data_dir: Path, tmp_path: Path) -> None:
    """A script's control value lands in params.extra; an extra tab is built. Runs the Generate
    handler directly (no server): the same function the button calls."""
    import gradio as gr

    ctx = AppContext.create(Paths.make(data_dir=data_dir, outdir=tmp_path), CPU)
    seen: list[dict[str, Any]] = []
    ctx.image_hooks.append(lambda image, text, params: seen.append(dict(params.extra)) or None)
    note: list[gr.Textbox] = []

    def build_script(mode: str) -> ScriptControls | None:
        if mode != "txt2img":
            return None
        note.append(gr.Textbox(label="Note"))
        return ScriptControls(inputs=note, apply=lambda params, values: replace(params, extra={"note": values[0]}))

    demo = build_ui(ctx, extra_tabs=[ExtraTab("Extra", lambda _: gr.Markdown("from an extension"), "tab_extra")],
                    scripts=[ScriptHook("Test script", build_script)])
    assert any(getattr(b, "value", None) == "from an extension" for b in demo.blocks.values())
    (fn,) = [f for f in demo.fns.values() if f.api_name == "txt2img"]
    data = {c: (c.value() if callable(c.value) else c.value) for c in fn.inputs}
    by_label = {getattr(c, "label", None): c for c in fn.inputs}
    data.update({by_label["Prompt"]: "a dot", by_label["Sampling steps"]: 2, note[0]: "hello"})
    updates = list(fn.fn(data))
    final = updates[-1]
    assert any(isinstance(v, dict) and v.get("seeds") for v in final.values()), final  # the result state
    assert seen == [{"note": "hello"}]


def test_infotext_values_for_paste() -> None:
    values = infotext_values("a cat\nNegative prompt: dog\nSteps: 7, Sampler: DPM++ 2M Karras, CFG scale: 5.5, "
                             "Seed: 3, Size: 96x80")
    assert values["prompt"] == "a cat" and values["negative_prompt"] == "dog"
    assert (values["steps"], values["cfg_scale"], values["seed"]) == (7, 5.5, 3)
    assert (values["sampler_name"], values["scheduler"]) == ("DPM++ 2M", "Karras")  # old style split
    assert (values["width"], values["height"]) == (96, 80)


# ------------------------------------------------------------------------------------------ browser




def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, ctx: AppContext, url: str, data: Path) -> None:
        self.ctx, self.url, self.data = ctx, url, data

    def saved(self, mode: str) -> list[Path]:
        return sorted((self.data / "outputs" / f"{mode}-images").glob("*/*.png"))


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Server]:
    if browser_missing():
        pytest.skip(browser_missing() or "")
    from modules.extensions import load_extensions
    from modules.ui import extension_hooks

    ctx = AppContext.create(Paths.make(data_dir=data_dir), CPU)
    port = _free_port()
    # As webui.py does: the shipped extensions' tabs and scripts, and the Extensions tab.
    tabs, scripts = extension_hooks(load_extensions(ctx))
    demo = launch(ctx, argparse.Namespace(listen=False, port=port, gradio_auth=None, autolaunch=False), tabs, scripts,
                  block=False)
    try:
        yield Server(ctx, f"http://127.0.0.1:{port}/", data_dir)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if browser_missing():
        pytest.skip(browser_missing() or "")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser: Any, server: Server, external: list[str]) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else external.append(r.url))
    page.goto(server.url)
    page.wait_for_selector("#txt2img_generate")
    # The page-load event fills in the current defaults; typing before it lands would be overwritten.
    page.wait_for_function("() => document.body.dataset.uiReady === '1'")
    return page


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    external: list[str] = []
    page = _open(browser, server, external)
    yield page
    page.close()
    assert external == [], f"the page reached outside the local server: {external}"


def _set_number(page: Any, elem_id: str, value: object) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")  # gradio takes the value on change / blur


def _click_generate(page: Any, mode: str) -> None:
    # Mark the last run's messages: every run replaces them, so unmarked ones belong to this run.
    page.evaluate(f"() => document.querySelectorAll('#{mode}_progress .ok-box, #{mode}_message .error-box')"
                  ".forEach(e => e.classList.add('stale'))")
    page.click(f"#{mode}_generate")


def _generate(page: Any, mode: str, prompt: str, steps: int = 3) -> None:
    page.fill(f"#{mode}_prompt textarea", prompt)
    _set_number(page, f"{mode}_steps", steps)
    _click_generate(page, mode)


def _wait_done(page: Any, mode: str) -> str:
    """Wait for the gallery (or an error) and return the infotext shown for the selected image."""
    page.wait_for_function(f"() => document.querySelector('#{mode}_progress .ok-box:not(.stale)')"
                           f" || document.querySelector('#{mode}_message .error-box:not(.stale)')")
    error = page.locator(f"#{mode}_message .error-box")
    assert error.count() == 0, error.inner_text()
    page.wait_for_selector(f"#{mode}_gallery img")
    return page.input_value(f"#{mode}_info textarea")


def _upload(page: Any, elem_id: str, path: Path, editor: bool = False) -> None:
    # Shown = taken: a gr.Image shows an <img>, the editor switches to the brush (offering its size).
    shown = f"#{elem_id} button[title='Brush Size']" if editor else f"#{elem_id} img"
    if editor:
        page.wait_for_selector(f"#{elem_id} canvas", state="attached")
    for attempt in range(3):
        page.set_input_files(f"#{elem_id} input[type=file]", str(path))
        try:
            page.wait_for_selector(shown, timeout=TIMEOUT_MS // 3)
            break
        except Exception:
            # On a starved machine the editor can drop a file that arrives while its canvas
            # library is still loading; a person would simply drop it again.
            if attempt == 2:
                raise
    page.wait_for_timeout(500)  # let the component report its new value before it is used


def _picture(path: Path, size: int = 64) -> Path:
    image = Image.new("RGB", (size, size), (40, 80, 200))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    image.save(path)
    return path


@browser_only
def test_txt2img_generates_saves_and_shows_infotext(page: Any, server: Server) -> None:
    before = set(server.saved("txt2img"))
    _generate(page, "txt2img", "a red circle on a blue background")
    info = _wait_done(page, "txt2img")
    assert info.startswith("a red circle on a blue background") and "Steps: 3" in info
    new = [p for p in server.saved("txt2img") if p not in before]
    assert len(new) == 1
    prompt, _, fields = parse_infotext(read_infotext(new[0]) or "")
    assert prompt == "a red circle on a blue background" and fields["Steps"] == "3"
    assert Image.open(new[0]).size == (64, 64)  # width/height default to the model's native size
    # ♻️ takes the image's seed, 🎲 goes back to random.
    page.click("#txt2img_reuse_seed")
    page.wait_for_function(f"() => document.querySelector('#txt2img_seed input').value === '{fields['Seed']}'")
    page.click("#txt2img_random_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '-1'")
    if os.environ.get("UI_SCREENSHOT"):
        page.screenshot(path=os.environ["UI_SCREENSHOT"], full_page=True)
    # Send to img2img: picture and prompt arrive, the tab switches.
    page.click("#txt2img_send_to_img2img")
    page.wait_for_selector("#img2img_image img")
    assert page.input_value("#img2img_prompt textarea") == "a red circle on a blue background"
    assert page.locator("#tab_img2img").is_visible()
    page.click("#tab_txt2img-button")
    page.click("#txt2img_send_to_inpaint")  # the editor takes it as the picture to paint on
    page.wait_for_selector("#inpaint_image button[title='Brush Size']")


@browser_only
def test_refresh_lists_a_checkpoint_added_after_start(page: Any, server: Server) -> None:
    folder = server.data / "models" / "Stable-diffusion"
    shutil.copy(folder / "tiny.safetensors", folder / "added-later.safetensors")
    shutil.copy(folder / "tiny.yaml", folder / "added-later.yaml")
    try:
        page.click("#sd_checkpoint input")
        assert page.locator("[role=option]", has_text="added-later").count() == 0
        page.keyboard.press("Escape")
        page.click("#refresh_sd_checkpoint")
        page.wait_for_timeout(1000)
        page.click("#sd_checkpoint input")
        page.wait_for_selector("[role=option]:has-text('added-later.safetensors')")
    finally:
        for suffix in (".safetensors", ".yaml"):
            (folder / f"added-later{suffix}").unlink()
        server.ctx.registry.refresh()


@browser_only
def test_bad_width_shows_error_and_the_next_generation_works(page: Any, server: Server) -> None:
    _set_number(page, "txt2img_width", 100)
    _generate(page, "txt2img", "a square")
    page.wait_for_selector("#txt2img_message .error-box:not(.stale)")
    message = page.inner_text("#txt2img_message")
    assert "width must be a multiple of 8" in message and "96 or 104" in message
    _set_number(page, "txt2img_width", 64)
    page.evaluate("() => document.querySelectorAll('#txt2img_message .error-box').forEach(e => e.classList.add('stale'))")
    page.press("#txt2img_prompt textarea", "Control+Enter")  # A1111's shortcut for Generate
    info = _wait_done(page, "txt2img")
    assert "Size: 64x64" in info and page.locator("#txt2img_message .error-box").count() == 0


@browser_only
def test_img2img_with_uploaded_picture(page: Any, server: Server, tmp_path: Path) -> None:
    page.click("#tab_img2img-button")
    _upload(page, "img2img_image", _picture(tmp_path / "in.png"))
    before = set(server.saved("img2img"))
    _generate(page, "img2img", "a green circle")
    info = _wait_done(page, "img2img")
    assert "Denoising strength: 0.75" in info and "Size: 64x64" in info
    assert len([p for p in server.saved("img2img") if p not in before]) == 1


@browser_only
def test_inpaint_with_a_painted_mask(page: Any, server: Server, tmp_path: Path) -> None:
    source = _picture(tmp_path / "in.png", 128)
    page.click("#tab_inpaint-button")
    _upload(page, "inpaint_image", source, editor=True)
    canvas = page.locator("#inpaint_image canvas").first.bounding_box()
    assert canvas is not None
    # The editor opens with the brush selected: one short stroke across the middle-left.
    x, y, w, h = canvas["x"], canvas["y"], canvas["width"], canvas["height"]
    page.mouse.move(x + w * 0.42, y + h * 0.5)
    page.mouse.down()
    page.mouse.move(x + w * 0.5, y + h * 0.5, steps=5)
    page.mouse.up()
    page.wait_for_timeout(1500)  # the editor reports the painted layer asynchronously
    before = set(server.saved("inpaint"))
    _generate(page, "inpaint", "a yellow circle")
    info = _wait_done(page, "inpaint")
    assert "Mask blur: 4" in info and "Masked content: original" in info
    (saved,) = [p for p in server.saved("inpaint") if p not in before]
    out = np.asarray(Image.open(saved).convert("RGB"), dtype=np.int16)
    src = np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)
    assert out.shape == src.shape
    changed = np.abs(out - src).max(axis=2) > 8
    # Repainted under the stroke only: the centre changed, the corners are the original pixels.
    assert changed[60:68, 60:68].any()
    assert not changed[:16, :16].any() and not changed[-16:, -16:].any()


@browser_only
def test_outpaint_makes_a_larger_picture(page: Any, server: Server, tmp_path: Path) -> None:
    page.click("#tab_outpaint-button")
    _upload(page, "outpaint_image", _picture(tmp_path / "in.png"))
    for side, pixels in (("left", 0), ("right", 64), ("top", 0), ("bottom", 32)):
        _set_number(page, f"outpaint_{side}", pixels)
    before = set(server.saved("outpaint"))
    _generate(page, "outpaint", "a wide picture")
    info = _wait_done(page, "outpaint")
    assert "Size: 128x96" in info and 'Outpaint: "0,64,0,32"' in info
    (saved,) = [p for p in server.saved("outpaint") if p not in before]
    assert Image.open(saved).size == (128, 96)


@browser_only
def test_interrupt_stops_a_long_generation_early(page: Any, server: Server) -> None:
    _generate(page, "txt2img", "a long one", steps=150)
    page.wait_for_function(
        "() => { const t = document.querySelector('#txt2img_progress #progress-text');"
        " const m = t && t.textContent.match(/Step (\\d+)\\/150/); return m && +m[1] >= 1; }")
    page.click("#txt2img_interrupt")
    page.wait_for_selector("#txt2img_progress .ok-box:not(.stale)")
    done = page.inner_text("#txt2img_progress")
    match = re.search(r"Interrupted at step (\d+)/150", done)
    assert match and int(match[1]) < 150, done
    page.wait_for_selector("#txt2img_gallery img")  # what was made so far is kept


@browser_only
def test_second_tab_waits_its_turn(browser: Any, page: Any, server: Server) -> None:
    external: list[str] = []
    other = _open(browser, server, external)
    try:
        _generate(page, "txt2img", "first", steps=6)
        _generate(other, "txt2img", "second", steps=6)
        assert _wait_done(page, "txt2img").startswith("first")
        assert _wait_done(other, "txt2img").startswith("second")
    finally:
        other.close()
    assert external == []


@browser_only
def test_png_info_reads_parameters_and_sends_them(page: Any, server: Server, tmp_path: Path) -> None:
    text = ("a cat in a hat\nNegative prompt: blurry\nSteps: 7, Sampler: DPM++ 2M, Schedule type: Karras, "
            "CFG scale: 5.5, Seed: 1234, Size: 96x80, Model: tiny")
    path = save_image(Image.new("RGB", (96, 80), "white"), tmp_path, 1234, text)
    page.click("#tab_pnginfo-button")
    _upload(page, "pnginfo_image", path)
    page.wait_for_function("() => document.querySelector('#pnginfo_parameters textarea').value.includes('Steps: 7')")
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a cat in a hat'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "blurry"
    assert page.input_value("#txt2img_steps input[type=number]") == "7"
    assert page.input_value("#txt2img_cfg_scale input[type=number]") == "5.5"
    assert page.input_value("#txt2img_seed input") == "1234"
    assert page.input_value("#txt2img_width input[type=number]") == "96"
    assert page.input_value("#txt2img_height input[type=number]") == "80"
    assert page.input_value("#txt2img_sampling input") == "DPM++ 2M"
    assert page.input_value("#txt2img_scheduler input") == "Karras"
    page.click("#tab_pnginfo-button")
    page.click("#pnginfo_send_to_outpaint")
    page.wait_for_selector("#outpaint_image img")
    assert page.input_value("#outpaint_prompt textarea") == "a cat in a hat"


@browser_only
def test_settings_apply_saves_config(page: Any, server: Server) -> None:
    page.click("#tab_settings-button")
    _set_number(page, "setting_default_steps", 25)
    page.click("#settings_submit")
    page.wait_for_selector("#settings_result .ok-box")
    try:
        assert '"default_steps": 25' in (server.data / "config.json").read_text()
        page.click("#tab_txt2img-button")
        assert page.input_value("#txt2img_steps input[type=number]") == "25"
        page.click("#tab_settings-button")
        page.fill("#setting_samples_filename_pattern textarea, #setting_samples_filename_pattern input", "[nope]")
        page.click("#settings_submit")
        page.wait_for_selector("#settings_result .error-box")
        assert "[nope]" in page.inner_text("#settings_result")
    finally:
        server.ctx.options.update({"default_steps": 20})


@browser_only
def test_extensions_tab_and_the_example_script(page: Any, server: Server) -> None:
    """The Extensions tab lists the shipped example as loaded; its checkbox in txt2img stamps the
    saved picture (a black bar along the bottom)."""
    page.click("#tab_extensions-button")
    assert "loaded" in page.inner_text("#extension_status_caption-stamp")
    assert page.is_checked("#extension_enabled_caption-stamp input")
    page.click("#tab_txt2img-button")
    page.locator("#txt2img_settings").get_by_text("Caption stamp", exact=True).click()
    page.check("#txt2img_caption_stamp input")
    before = set(server.saved("txt2img"))
    _generate(page, "txt2img", "a stamped circle", steps=2)
    _wait_done(page, "txt2img")
    (saved,) = [p for p in server.saved("txt2img") if p not in before]
    bottom = np.asarray(Image.open(saved).convert("RGB"))[-10:]
    assert (bottom == 0).all(axis=-1).mean() > 0.5  # mostly the bar's black, around the caption


@browser_only
@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the default model is still being trained")
def test_default_model_draws_the_prompt(page: Any, server: Server) -> None:
    """The prompt reaches the model through the page: the embedded default model draws what is asked."""
    from modules.training.default_model.judge import judge

    page.click("#refresh_sd_checkpoint")
    page.wait_for_timeout(1000)
    page.click("#sd_checkpoint input")
    page.click("[role=option]:has-text('default-shapes')")
    try:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while (server.ctx.registry.current_info is None or server.ctx.registry.current_info.stem != "default-shapes"):
            assert time.monotonic() < deadline, "the default model did not load"
            time.sleep(0.2)
        page.wait_for_function("() => document.querySelector('#txt2img_width input[type=number]').value === '128'")
        _set_number(page, "txt2img_seed", 1)
        before = set(server.saved("txt2img"))
        _generate(page, "txt2img", "a red circle on a blue background", steps=20)
        _wait_done(page, "txt2img")
        (saved,) = [p for p in server.saved("txt2img") if p not in before]
        verdict = judge(Image.open(saved))
        # Background colour adherence is not reached by the shipped model yet (issue 4).
        assert (verdict.foreground, verdict.shape) == ("red", "circle"), verdict
    finally:
        server.ctx.registry.load("tiny.safetensors")
