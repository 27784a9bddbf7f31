"""Upscaler model files: tiny real ESRGAN-architecture weights in models/ESRGAN are listed,
loaded safely (weights only) and run in tiles; damaged files fail with the file's name."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.ESRGAN import ESRGAN

from modules.errors import UserError
from modules.upscaler_models import load_upscaler, tiled
from modules.upscalers import UpscalerRegistry


def write_esrgan(folder: Path, stem: str, scale: int, suffix: str = ".pth", seed: int = 0) -> Path:
    """An ESRGAN (RRDBNet) with the real key layout at 8 features and one block, random weights."""
    torch.manual_seed(seed)
    state = ESRGAN(num_filters=8, num_blocks=1, scale=scale).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def picture(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> UpscalerRegistry:
    root = tmp_path_factory.mktemp("upscalers")
    write_esrgan(root / "ESRGAN", "4x-tiny", 4)
    write_esrgan(root / "ESRGAN", "tiny_x2", 2, ".safetensors")
    write_esrgan(root / "RealESRGAN", "RealESRGAN_x2tiny", 2)
    return UpscalerRegistry([root / "ESRGAN", root / "RealESRGAN"])


def test_model_files_are_listed_with_their_scale(registry: UpscalerRegistry) -> None:
    models = {u.name: u for u in registry.model_upscalers()}
    assert set(models) == {"4x-tiny", "tiny_x2", "RealESRGAN_x2tiny"}
    assert (models["4x-tiny"].scale, models["tiny_x2"].scale) == (4, 2)
    names = registry.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "4x-tiny" in names and "Latent" in names
    assert registry.model_scale("tiny_x2") == 2 and registry.model_scale("4x-tiny") == 4


@pytest.mark.parametrize(("name", "factor"), [("4x-tiny", 4), ("tiny_x2", 2), ("4x-tiny", 2), ("tiny_x2", 3)])
def test_model_upscales_to_the_requested_size(registry: UpscalerRegistry, name: str, factor: int) -> None:
    image = picture(24, 16)
    out = registry.upscale_image(image, (24 * factor, 16 * factor), name)
    assert out.size == (24 * factor, 16 * factor) and out.mode == "RGB"
    # The network ran (random weights): not just a Lanczos resize of the input.
    lanczos = np.asarray(image.resize(out.size, Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(out, dtype=float) - lanczos).mean() > 5


def test_model_output_matches_the_network_and_tiles_join_without_seams(registry: UpscalerRegistry) -> None:
    model = registry._model(registry.find("tiny_x2").path)  # noqa: SLF001 - the loaded network itself
    image = picture(40, 36)
    whole = np.asarray(model.upscale(image, tile=0), dtype=float)
    tiles = np.asarray(model.upscale(image, tile=16, overlap=8), dtype=float)
    assert whole.shape == (72, 80, 3)
    # One RRDB block sees a few pixels around itself; 8 pixels of context per tile are enough.
    assert np.abs(whole - tiles).max() <= 2
    # Against the raw spandrel network on the whole tensor.
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = model.model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255
    assert np.abs(whole - ref).max() <= 1


def test_tiled_covers_every_pixel_once() -> None:
    x = torch.arange(2 * 7 * 9, dtype=torch.float32).reshape(1, 2, 7, 9)
    out = tiled(lambda t: t.repeat_interleave(3, 2).repeat_interleave(3, 3), x, 3, tile=4, overlap=1)
    assert torch.equal(out, x.repeat_interleave(3, 2).repeat_interleave(3, 3))


def test_unknown_upscaler_lists_the_known_ones(registry: UpscalerRegistry) -> None:
    with pytest.raises(UserError, match=r"Unknown upscaler 'nope'.*Lanczos.*4x-tiny"):
        registry.upscale_image(picture(8, 8), (16, 16), "nope")


def test_damaged_and_foreign_files_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "broken.pth").write_bytes(b"\x80\x02not a torch file at all")
    (folder / "broken2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    torch.save({"foo.weight": torch.zeros(3, 3)}, folder / "notanupscaler.pth")
    registry = UpscalerRegistry([folder])
    for name in ("broken", "broken2", "notanupscaler"):
        with pytest.raises(UserError, match=name):
            registry.upscale_image(picture(8, 8), (32, 32), name)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model.0.weight": Payload()}, f)
    with pytest.raises(UserError, match="evil.pth"):
        load_upscaler(path, torch.device("cpu"))


def test_scale_is_read_from_the_model_once_loaded(tmp_path: Path) -> None:
    write_esrgan(tmp_path / "ESRGAN", "plainname", 2)
    registry = UpscalerRegistry([tmp_path / "ESRGAN"])
    assert registry.model_upscalers()[0].scale == 4  # a guess: the name says nothing
    assert registry.upscale_image(picture(8, 8), (16, 16), "plainname").size == (16, 16)
    assert registry.model_upscalers()[0].scale == 2
