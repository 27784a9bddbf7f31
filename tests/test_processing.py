"""The processing layer on tiny checkpoints: samplers, seeds, batches, the four modes, control, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.errors import UserError
from modules.images import read_infotext
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.control import GenerationControl
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Img2ImgParams, InpaintParams, OutpaintParams, Txt2ImgParams
from modules.processing.run import generate
from modules.sampling.samplers import SAMPLER_NAMES
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    write_tiny_checkpoint(folder, "sd1-inpainting", stem="tiny-inpainting")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _quick(**kw) -> dict:
    base = {"prompt": "a red circle", "steps": 3, "seed": 7, "width": 64, "height": 64, "save": False,
            "checkpoint": "tiny"}
    base.update(kw)
    return base


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs(registry: ModelRegistry, sampler: str) -> None:
    result = generate(Txt2ImgParams(**_quick(sampler=sampler)), registry)
    assert result.images[0].size == (64, 64)
    assert np.isfinite(_arr(result.images[0])).all()
    assert f"Sampler: {sampler}," in result.infotexts[0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "Euler"])
def test_same_seed_same_image_single_and_batched(registry: ModelRegistry, sampler: str) -> None:
    one = generate(Txt2ImgParams(**_quick(sampler=sampler, seed=100)), registry).images[0]
    again = generate(Txt2ImgParams(**_quick(sampler=sampler, seed=100)), registry).images[0]
    assert np.array_equal(_arr(one), _arr(again))
    batch = generate(Txt2ImgParams(**_quick(sampler=sampler, seed=100, batch_size=4)), registry)
    assert batch.seeds == [100, 101, 102, 103]
    # Batched matrix products may round differently from single ones; the picture is the same.
    assert np.abs(_arr(batch.images[0]) - _arr(one)).max() <= 3
    third = generate(Txt2ImgParams(**_quick(sampler=sampler, seed=102)), registry).images[0]
    assert np.abs(_arr(batch.images[2]) - _arr(third)).max() <= 3
    assert np.abs(_arr(batch.images[1]) - _arr(one)).mean() > 5  # other seeds, other pictures


def test_batch_size_times_count_files_and_seeds(registry: ModelRegistry, tmp_path: Path) -> None:
    result = generate(Txt2ImgParams(**_quick(seed=10, batch_size=2, batch_count=3, save=True, save_grid=True)),
                      registry, tmp_path)
    assert len(result.paths) == 6 and len(set(result.paths)) == 6
    seeds = []
    for path in result.paths:
        assert path.is_file() and path.parent.parent == tmp_path / "txt2img-images"
        prompt, negative, fields = parse_infotext(read_infotext(path))
        assert prompt == "a red circle"
        seeds.append(infotext_to_params(fields)["seed"])
        assert path.name.endswith(f"-{seeds[-1]}.png")
    assert seeds == [10, 11, 12, 13, 14, 15]
    assert result.grid_path is not None and result.grid_path.is_file()


def test_infotext_round_trips_into_params(registry: ModelRegistry) -> None:
    params = Txt2ImgParams(**_quick(negative_prompt="blue, (green:1.2)", cfg_scale=5.5, sampler="DPM++ 2M",
                                    schedule_type="Karras", seed=42, clip_skip=2))
    text = generate(params, registry).infotexts[0]
    prompt, negative, fields = parse_infotext(text)
    parsed = infotext_to_params(fields)
    assert (prompt, negative) == ("a red circle", "blue, (green:1.2)")
    assert parsed["steps"] == 3 and parsed["cfg_scale"] == 5.5 and parsed["seed"] == 42
    assert parsed["sampler_name"] == "DPM++ 2M" and parsed["scheduler"] == "Karras"
    assert (parsed["width"], parsed["height"]) == (64, 64) and parsed["clip_skip"] == 2


def test_img2img_strength_zero_returns_input(registry: ModelRegistry) -> None:
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = generate(Img2ImgParams(**_quick(init_image=source, denoising_strength=0.0)), registry)
    assert np.array_equal(_arr(result.images[0]), _arr(source))
    changed = generate(Img2ImgParams(**_quick(init_image=source, denoising_strength=0.6)), registry)
    assert changed.images[0].size == (64, 64)
    assert not np.array_equal(_arr(changed.images[0]), _arr(source))


@pytest.mark.parametrize("checkpoint", ["tiny", "tiny-inpainting"])
@pytest.mark.parametrize("content", ["original", "fill", "latent noise", "latent nothing"])
def test_inpaint_keeps_everything_outside_the_mask(registry: ModelRegistry, checkpoint: str, content: str) -> None:
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 8, 48, 40))
    result = generate(InpaintParams(**_quick(init_image=source, mask=mask, masked_content=content, mask_blur=4,
                                             denoising_strength=1.0, checkpoint=checkpoint)), registry)
    out, src, hard = _arr(result.images[0]), _arr(source), np.asarray(mask) > 0
    assert np.array_equal(out[~hard], src[~hard])
    assert np.abs(out[hard] - src[hard]).mean() > 10


def test_inpaint_only_masked_and_inverted(registry: ModelRegistry) -> None:
    source = Image.fromarray(np.random.default_rng(2).integers(0, 255, (96, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 96), 0)
    mask.paste(255, (8, 8, 24, 24))
    result = generate(InpaintParams(**_quick(init_image=source, mask=mask, inpaint_area="only masked",
                                             only_masked_padding=8, width=0, height=0)), registry)
    out, src, hard = _arr(result.images[0]), _arr(source), np.asarray(mask) > 0
    assert out.shape == src.shape
    assert np.array_equal(out[~hard], src[~hard])
    inverted = generate(InpaintParams(**_quick(init_image=source, mask=mask, invert_mask=True, width=0,
                                               height=0)), registry)
    assert np.array_equal(_arr(inverted.images[0])[hard], src[hard])


def test_outpaint_extends_and_keeps_original(registry: ModelRegistry) -> None:
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = generate(OutpaintParams(**_quick(init_image=source, left=16, bottom=8, fill="mean")), registry)
    out = _arr(result.images[0])
    assert result.images[0].size == (80, 72)
    assert np.array_equal(out[0:64, 16:80], _arr(source))
    odd = generate(OutpaintParams(**_quick(init_image=source, right=13)), registry)
    assert odd.images[0].size[0] % 8 == 0 and odd.images[0].size[0] >= 77


def test_interrupt_stops_within_one_step(registry: ModelRegistry) -> None:
    control = GenerationControl()
    steps_seen = []

    def on_step(state) -> None:
        steps_seen.append(state.step)
        if state.step == 2:
            control.interrupt()

    control.on_step = on_step
    result = generate(Txt2ImgParams(**_quick(steps=30, batch_count=3)), registry, control=control)
    assert steps_seen == [1, 2]
    assert result.interrupted and len(result.images) == 1


def test_skip_moves_to_next_batch(registry: ModelRegistry) -> None:
    control = GenerationControl()
    seen: list[tuple[int, int]] = []

    def on_step(state) -> None:
        seen.append((state.job, state.step))
        if state.job == 0 and state.step == 1:
            control.skip()

    control.on_step = on_step
    result = generate(Txt2ImgParams(**_quick(steps=3, batch_count=2)), registry, control=control)
    assert seen == [(0, 1), (1, 1), (1, 2), (1, 3)]
    assert len(result.images) == 2 and not result.interrupted


def test_progress_previews(registry: ModelRegistry) -> None:
    control = GenerationControl(preview_every=2)
    generate(Txt2ImgParams(**_quick(steps=4)), registry, control=control)
    assert control.state.preview is not None and control.state.preview_step == 4


def test_requests_queue_on_the_device(registry: ModelRegistry) -> None:
    results: list[int] = []

    def worker(seed: int) -> None:
        results.append(len(generate(Txt2ImgParams(**_quick(seed=seed, steps=2)), registry).images))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1, 1, 1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (Txt2ImgParams(**_quick(width=100)), "multiple of 8"),
        (Txt2ImgParams(**_quick(steps=0)), "steps must be from 1 to 150"),
        (Txt2ImgParams(**_quick(sampler="Euler z")), "Euler a"),
        (Img2ImgParams(**_quick(init_image="not an image")), "not an image"),
        (InpaintParams(**_quick(init_image=Image.new("RGB", (64, 64)), mask=Image.new("L", (32, 32)))), "same size"),
        (Txt2ImgParams(**_quick(checkpoint="../../etc/passwd")), "not paths"),
        (Txt2ImgParams(**_quick(checkpoint="nope")), "Unknown checkpoint"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(registry: ModelRegistry, tmp_path: Path, params, message) -> None:
    with pytest.raises(UserError, match=message):
        generate(params.__class__(**{**params.as_dict(), "save": True, **_images(params)}), registry, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _images(params) -> dict:
    return {k: getattr(params, k) for k in ("init_image", "mask") if hasattr(params, k)}
