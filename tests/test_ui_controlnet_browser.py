"""The txt2img ControlNet accordion in headless Chromium: upload an edge map into a unit, choose the
model, generate; the infotext records the unit and the picture differs from the one without it.

Uses the server, browser and page fixtures of tests/test_ui.py (skipped without Chromium and
Playwright) on a data folder that also holds a tiny ControlNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.browser import browser_only
from tests.test_ui import Server, _generate, _upload, _wait_done, browser, page, server  # noqa: F401 - fixtures
from tests.tiny_controlnets import write_tiny_controlnet
from tests.tiny_models import write_tiny_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides test_ui's: the `server` fixture serves this folder."""
    data = tmp_path_factory.mktemp("webui-controlnet")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    write_tiny_controlnet(data / "models" / "ControlNet", "sd1", stem="tiny_canny")
    return data


def _edge_map(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 24, 40, 52), outline="white", width=2)
    image.save(path)
    return path


@browser_only
def test_txt2img_unit_from_an_uploaded_edge_map(page: Any, server: Server, tmp_path: Path) -> None:  # noqa: F811
    page.click("#txt2img_controlnet > button")  # open the accordion
    _upload(page, "txt2img_controlnet_0_image", _edge_map(tmp_path / "edges.png"))
    # Uploading switches the unit on.
    page.wait_for_function("() => document.querySelector('#txt2img_controlnet_0_enable input').checked")
    page.click("#txt2img_controlnet_0_model input")
    page.click("[role=option]:has-text('tiny_canny')")
    page.wait_for_timeout(500)
    before = set(server.saved("txt2img"))
    _generate(page, "txt2img", "a square", steps=2)
    info = _wait_done(page, "txt2img")
    assert 'ControlNet 0: "Module: none, Model: tiny_canny [' in info and "Weight: 1.0" in info
    new = [p for p in server.saved("txt2img") if p not in before]
    # The picture, and the unit's detected map saved beside it.
    assert len(new) == 2 and new[1].name.endswith("-controlnet-map-0.png")
    # The seed was random: the picture without the unit is made with the same one.
    same_seed = info.split("Seed: ")[1].split(",")[0]
    page.click("#txt2img_controlnet_0_enable input")  # off again
    page.fill("#txt2img_seed input", same_seed)
    page.press("#txt2img_seed input", "Tab")
    _generate(page, "txt2img", "a square", steps=2)
    plain_info = _wait_done(page, "txt2img")
    assert "ControlNet 0" not in plain_info and f"Seed: {same_seed}," in plain_info
    plain = server.saved("txt2img")[-1]
    difference = np.abs(np.asarray(Image.open(new[0]), dtype=int) - np.asarray(Image.open(plain), dtype=int))
    assert difference.max() > 0
