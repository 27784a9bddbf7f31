"""Tiling: circular padding makes the whole pipeline wrap around, and the models are restored after.

The exact check: with circular padding every layer (convolutions, attention, group norm) commutes
with a circular shift by a multiple of the UNet's downsampling, so shifting the starting noise by 8
latent pixels shifts the picture by 64 pixels — which only holds if the left and right (and top and
bottom) edges continue each other. Without tiling the borders break it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import modules.processing.run as run
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.processing.tiling import circular_padding
from tests.tiny_models import CPU, write_tiny_checkpoint

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "default-shapes.safetensors"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _image(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch | None = None, shift: int = 0,
           **kw) -> tuple[np.ndarray, str]:
    if monkeypatch is not None:
        original = run.initial_noise

        def shifted(*args, **kwargs):
            return torch.roll(original(*args, **kwargs), shifts=(shift, shift), dims=(-2, -1))

        monkeypatch.setattr(run, "initial_noise", shifted)
    params = {"prompt": "a pattern", "steps": 3, "seed": 4, "width": 128, "height": 128, "save": False,
              "sampler": "Euler", **kw}
    result = generate(Txt2ImgParams(**params), registry)
    if monkeypatch is not None:
        monkeypatch.undo()
    return np.asarray(result.images[0], dtype=np.float32), result.infotexts[0]


def _wrap_error(base: np.ndarray, moved: np.ndarray, pixels: int) -> float:
    return float(np.abs(np.roll(base, (pixels, pixels), axis=(0, 1)) - moved).mean())


def test_tiled_picture_wraps_around(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    tiled, text = _image(registry, checkpoint="tiny", tiling=True)
    tiled_moved, _ = _image(registry, monkeypatch, shift=8, checkpoint="tiny", tiling=True)
    plain, plain_text = _image(registry, checkpoint="tiny")
    plain_moved, _ = _image(registry, monkeypatch, shift=8, checkpoint="tiny")
    assert "Tiling: True" in text and "Tiling" not in plain_text
    assert _wrap_error(tiled, tiled_moved, 64) < 1.0  # rounding only
    assert _wrap_error(plain, plain_moved, 64) > 5 * max(_wrap_error(tiled, tiled_moved, 64), 0.2)
    # The seam itself: across the wrap the tiled picture changes like between any two columns.
    seam = np.abs(tiled[:, 0] - tiled[:, -1]).mean()
    assert seam < 2.5 * np.abs(np.diff(tiled, axis=1)).mean()


def test_models_are_restored(registry: ModelRegistry) -> None:
    before, _ = _image(registry, checkpoint="tiny")
    _image(registry, checkpoint="tiny", tiling=True)
    model = registry.current()
    modes = {conv.padding_mode for m in (model.unet, model.vae) for conv in m.modules()
             if isinstance(conv, torch.nn.Conv2d)}
    assert modes == {"zeros"}
    after, _ = _image(registry, checkpoint="tiny")
    assert np.array_equal(before, after)


def test_restored_after_an_error() -> None:
    conv = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(RuntimeError), circular_padding([conv]):
        assert conv.padding_mode == "circular"
        raise RuntimeError("boom")
    assert conv.padding_mode == "reflect"


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the embedded default model is missing")
def test_default_model_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry([DEFAULT_MODEL.parent], [], CPU, HashCache(None))
    kw = {"checkpoint": DEFAULT_MODEL.stem, "prompt": "a red circle", "steps": 8}
    tiled, _ = _image(registry, tiling=True, **kw)
    moved, _ = _image(registry, monkeypatch, shift=8, tiling=True, **kw)
    assert tiled.shape == (128, 128, 3)
    assert _wrap_error(tiled, moved, 64) < 1.5
