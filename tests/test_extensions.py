"""Extensions: discovery, failures reported without stopping the others, disabling, settings, and the
shipped example (caption-stamp) really changing generated pictures, from the API of processing and
from its checkbox in the page (the Generate handler called directly, no browser)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.extensions import (
    BUILTIN_DIR,
    DISABLED,
    FAILED,
    LOADED,
    load_extensions,
    save_settings,
    set_disabled,
)
from modules.processing.params import Txt2ImgParams
from tests.tiny_models import CPU, write_tiny_checkpoint

GOOD = """
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("yes")

def register(api):
    api.add_tab("Good tab", lambda ctx: None, "tab_good")
    api.add_script("Good script", lambda mode: None)
    api.add_setting("level", 3, "Level")
    api.on_image(lambda image, text, params: image.transpose(0))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ext-home")
    write_tiny_checkpoint(root / "models" / "Stable-diffusion", "sd1", stem="tiny")
    return root


def _ctx(data: Path, outdir: Path | None = None) -> AppContext:
    return AppContext.create(Paths.make(data_dir=data, outdir=outdir), CPU)


def _write(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "extension.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def _user_only(ctx: AppContext) -> list[tuple[Path, bool]]:
    return [(ctx.paths.extensions_dir, False)]


def test_discovery_loads_what_extensions_register(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _write(ctx.paths.extensions_dir, "good", GOOD)
    (ctx.paths.extensions_dir / ".hidden").mkdir()
    loaded = load_extensions(ctx)  # the shipped folder and the data folder's extensions/
    by_name = {e.name: e for e in loaded.extensions}
    assert set(by_name) == {"caption-stamp", "good"}
    assert by_name["caption-stamp"].builtin and by_name["caption-stamp"].path.parent == BUILTIN_DIR
    assert not by_name["good"].builtin and by_name["good"].status == LOADED
    assert [t.label for t in loaded.tabs] == ["Good tab"]
    assert [s.title for s in loaded.scripts] == ["Caption stamp", "Good script"]
    assert [s.full_key for s in loaded.settings] == ["caption-stamp.text", "good.level"]
    assert len(ctx.image_hooks) == 2
    flipped = ctx.image_hooks[1](Image.new("RGB", (2, 1), (0, 0, 0)).copy(), "", Txt2ImgParams())
    assert flipped is not None and flipped.size == (2, 1)


def test_broken_extensions_are_reported_and_the_others_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = _ctx(tmp_path)
    folder = ctx.paths.extensions_dir
    _write(folder, "a-syntax", "def register(api):\n    return (\n")
    _write(folder, "b-raises", """
        def register(api):
            api.on_image(lambda image, text, params: None)
            raise RuntimeError("boom in register")
        """)
    _write(folder, "c-no-register", "X = 1\n")
    (folder / "d-no-entry").mkdir()
    _write(folder, "e-good", GOOD)
    with caplog.at_level(logging.ERROR, logger="modules.extensions"):
        loaded = load_extensions(ctx, _user_only(ctx))
    status = {e.name: (e.status, e.error) for e in loaded.extensions}
    assert status["e-good"] == (LOADED, "")
    assert status["a-syntax"][0] == FAILED and "SyntaxError" in status["a-syntax"][1]
    assert status["b-raises"] == (FAILED, "RuntimeError: boom in register")
    assert status["c-no-register"][0] == FAILED and "register(api)" in status["c-no-register"][1]
    assert status["d-no-entry"][0] == FAILED and "no extension.py" in status["d-no-entry"][1]
    # What the failed one registered before raising is not used; the good one's hook is.
    assert len(ctx.image_hooks) == 1
    logged = caplog.text
    assert "b-raises" in logged and "boom in register" in logged and "a-syntax" in logged


def test_a_user_extension_named_like_a_shipped_one_is_refused(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _write(tmp_path / "shipped", "same", GOOD)
    _write(ctx.paths.extensions_dir, "same", "raise SystemExit('must not be imported')\n")
    loaded = load_extensions(ctx, [(tmp_path / "shipped", True), (ctx.paths.extensions_dir, False)])
    first, second = loaded.extensions
    assert (first.builtin, first.status) == (True, LOADED)
    assert second.status == FAILED and "rename the folder" in second.error


def test_disabling_persists_and_keeps_the_extension_from_being_imported(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    path = _write(ctx.paths.extensions_dir, "good", GOOD)
    set_disabled(ctx, ["good"])
    again = _ctx(tmp_path)  # a restart: a new context reads config.json
    assert again.options.options.disabled_extensions == ["good"]
    loaded = load_extensions(again, _user_only(again))
    (ext,) = loaded.extensions
    assert (ext.enabled, ext.status) == (False, DISABLED)
    assert not (path / "imported.marker").exists() and again.image_hooks == [] and loaded.tabs == []
    set_disabled(again, [])
    assert load_extensions(_ctx(tmp_path), _user_only(again)).extensions[0].status == LOADED
    assert (path / "imported.marker").exists()


def test_extensions_tab_apply_saves_switches_and_settings(tmp_path: Path) -> None:
    from modules.ui import build_ui, extension_hooks

    ctx = _ctx(tmp_path)
    _write(ctx.paths.extensions_dir, "good", GOOD)
    loaded = load_extensions(ctx)
    tabs, scripts = extension_hooks(loaded)
    assert [t.label for t in tabs] == ["Good tab", "Extensions"]
    demo = build_ui(ctx, tabs, scripts)
    (apply,) = [f for f in demo.fns.values()
                if any(getattr(o, "elem_id", None) == "extensions_message" for o in f.outputs)]
    labels = [getattr(c, "label", None) for c in apply.inputs]
    assert labels == ["caption-stamp", "good", "Caption stamp: text (empty = the prompt)", "Level"]
    message = apply.fn(True, False, "signed", 5)
    assert "Restart" in message
    (level,) = [s for s in loaded.settings if s.key == "level"]
    assert level.value == 5  # settings apply at once
    saved = _ctx(tmp_path).options.options
    assert saved.disabled_extensions == ["good"]
    assert saved.extension_settings == {"caption-stamp.text": "signed", "good.level": 5}
    assert "must be a whole number" in apply.fn(True, False, "x", 2.5)
    with pytest.raises(UserError, match="Level must be a number"):
        save_settings(ctx, [level], ["many"])


# ------------------------------------------------------------------------------ the shipped example

def _bar_rows(image: Image.Image) -> int:
    """Rows at the bottom that are the stamp's bar: only black and grey-to-white (the caption) pixels,
    which a generated picture's rows practically never are."""
    arr = np.asarray(image.convert("RGB")).astype(int)
    rows = 0
    for row in arr[::-1]:
        if not ((row[:, 0] == row[:, 1]) & (row[:, 1] == row[:, 2])).all():
            break
        rows += 1
    return rows


def test_the_example_stamps_only_when_asked_and_uses_its_setting(home: Path, tmp_path: Path) -> None:
    ctx = _ctx(home, tmp_path)
    loaded = load_extensions(ctx, [(BUILTIN_DIR, True)])
    quick = {"prompt": "a red circle", "steps": 2, "seed": 5, "width": 64, "height": 64, "save": False}
    plain = np.asarray(ctx.generate(Txt2ImgParams(**quick)).images[0])
    stamped = ctx.generate(Txt2ImgParams(**quick, extra={"caption_stamp": True})).images[0]
    assert _bar_rows(Image.fromarray(plain)) < 10
    assert _bar_rows(stamped) == 10  # 1/8 of 64 px, at least 10
    stamped_arr = np.asarray(stamped)
    np.testing.assert_array_equal(stamped_arr[:-10], plain[:-10])  # above the bar: the same picture
    assert (stamped_arr[-10:] == 0).all(axis=-1).any() and (stamped_arr[-10:] > 128).all(axis=-1).any()
    (text,) = loaded.settings
    save_settings(ctx, [text], ["WWWWWWWW"])
    other = np.asarray(ctx.generate(Txt2ImgParams(**quick, extra={"caption_stamp": True})).images[0])
    assert not np.array_equal(other[-10:], stamped_arr[-10:])  # the setting's text, not the prompt


def test_the_example_checkbox_in_the_page_stamps_the_saved_picture(home: Path, tmp_path: Path) -> None:
    from modules.images import read_infotext
    from modules.ui import build_ui, extension_hooks

    ctx = _ctx(home, tmp_path)
    tabs, scripts = extension_hooks(load_extensions(ctx, [(BUILTIN_DIR, True)]))
    demo = build_ui(ctx, tabs, scripts)
    (fn,) = [f for f in demo.fns.values() if f.api_name == "txt2img"]
    by_id = {getattr(c, "elem_id", None): c for c in fn.inputs}
    saved: list[Path] = []
    for ticked in (False, True):
        data: dict[Any, Any] = {c: (c.value() if callable(c.value) else c.value) for c in fn.inputs}
        data.update({by_id["txt2img_prompt"]: "a dot", by_id["txt2img_steps"]: 2, by_id["txt2img_seed"]: 9,
                     by_id["txt2img_caption_stamp"]: ticked})
        list(fn.fn(data))
        saved = sorted(tmp_path.glob("txt2img-images/*/*.png"))
    assert len(saved) == 2
    plain, stamped = (Image.open(p) for p in saved)
    assert _bar_rows(plain) < 10 and _bar_rows(stamped) == 10  # 64 px pictures: the 10 px minimum bar
    assert read_infotext(saved[1]) == read_infotext(saved[0])  # the same generation, stamped afterwards
