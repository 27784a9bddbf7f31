"""The default model's ControlNet: its trainer at toy size (deterministic, trains only the ControlNet),
its held-out placements, and the shipped file (loads strictly, fits the default model, and puts the
map's shape where the map puts it through the product's generation path)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.controlnet.compat import check_compatible, fit_to_checkpoint
from modules.controlnet.load import load_controlnet
from modules.controlnet.registry import ControlNetRegistry
from modules.models.discovery import HashCache
from modules.models.load import load_checkpoint
from modules.models.registry import ModelRegistry
from modules.training.controlnet.dataset import canny_map
from modules.training.controlnet.evaluate import judge_case, map_cases, params_for
from modules.training.controlnet.generate import canny_unit, txt2img
from modules.training.controlnet.model import cldm_config, write_controlnet
from modules.training.controlnet.placement import (
    HELD_OUT_RADIUS,
    held_out_placement,
    held_out_radius,
    near_held_out_spot,
    train_placement,
)
from modules.training.controlnet.train import ControlSettings, train_controlnet
from modules.training.default_model.data import SHAPES, draw_shape, make_sample
from tests.tiny_models import CPU, REPO, build_random_model

SHIPPED = REPO / "models" / "ControlNet" / "default-shapes-canny.safetensors"
DEFAULT_MODEL = REPO / "models" / "Stable-diffusion" / "default-shapes.safetensors"
TOY = ControlSettings(steps=3, batch=2, dataset_size=6, warmup=1, threads=1, log_every=1)


def _states(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_toy_training_is_deterministic_and_trains_only_the_controlnet() -> None:
    base = build_random_model("sd1")
    before = {name: _states(m) for name, m in (("unet", base.unet), ("text", base.text_encoders[0]),
                                                ("vae", base.vae))}
    first = _states(train_controlnet(base, TOY))
    again = _states(train_controlnet(base, TOY))
    other = _states(train_controlnet(base, replace(TOY, seed=5)))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    # The zero convolutions start at zero; training moved them, so the ControlNet does something.
    assert first["controlnet_mid_block.weight"].abs().sum() > 0
    for name, module in (("unet", base.unet), ("text", base.text_encoders[0]), ("vae", base.vae)):
        after = module.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before[name].items()), name


def test_the_written_file_loads_strictly_and_fits_its_base(tmp_path: Path) -> None:
    base = build_random_model("sd1")
    model = train_controlnet(base, replace(TOY, steps=1))
    path = write_controlnet(model, cldm_config(base.arch.raw), tmp_path / "toy-canny.safetensors", "# toy\n")
    loaded = load_controlnet(path)
    assert loaded.info.layout == "ldm_prefixed" and "beside the file" in loaded.info.config_source
    check_compatible(loaded.info, base.arch, "tiny")
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v.half().float()) for k, v in model.state_dict().items())


def test_training_draws_never_reach_the_held_out_places_and_sizes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        cx, cy, r, _angle = train_placement(rng, 128, "star")
        assert not held_out_radius(r, 128) and not near_held_out_spot(cx, cy, 128)
        assert r + 1.5 < cx < 128 - r - 1.5 and r + 1.5 < cy < 128 - r - 1.5
    for _ in range(500):
        cx, cy, r, _angle = held_out_placement(rng, 128, "square")
        assert held_out_radius(r, 128) and near_held_out_spot(cx, cy, 128)
        assert r + 1.5 < cx < 128 - r - 1.5 and r + 1.5 < cy < 128 - r - 1.5
    # The turned and mirrored pictures of the trainer's augmentation stay out of the spots too.
    for x, y in ((40.0, 50.0), (90.0, 20.0)):
        for tx, ty in ((128 - x, y), (y, x), (128 - y, 128 - x)):
            assert near_held_out_spot(x, y, 128) == near_held_out_spot(tx, ty, 128)


def test_the_placement_option_leaves_the_default_draws_unchanged() -> None:
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(5):
        plain, with_default = make_sample(a), make_sample(b, placement=None)
        assert plain.caption == with_default.caption and plain.placement == with_default.placement
    placed = make_sample(np.random.default_rng(1), split="held_out", placement=lambda rng, size, shape: (30, 40, 20, 0))
    assert placed.placement == (30, 40, 20, 0)


def test_canny_map_outlines_the_shape() -> None:
    edges = canny_map(draw_shape("square", "red", "blue", 128, 64, 64, 30))
    ys, xs = np.nonzero(edges)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    # The square's circumradius is 30, so its sides are ~21 px from the centre.
    assert abs(xs.mean() - 64) < 1 and abs(ys.mean() - 64) < 1 and 18 < np.abs(xs - 64).max() < 24


def test_evaluation_maps_are_fixed_and_held_out() -> None:
    cases = map_cases(8)
    assert cases == map_cases(8) and [c.shape for c in cases] == list(SHAPES) * 2
    assert all(HELD_OUT_RADIUS[0] * 128 <= c.radius <= HELD_OUT_RADIUS[1] * 128 for c in cases)
    assert all(near_held_out_spot(c.cx, c.cy, 128) for c in cases)


# ------------------------------------------------------------------------------ the shipped file

@pytest.fixture(scope="module")
def shipped():
    assert SHIPPED.is_file(), f"the default ControlNet {SHIPPED} is missing"
    return load_controlnet(SHIPPED)


def test_shipped_controlnet_loads_fully_and_fits_the_default_model(shipped) -> None:
    assert shipped.info.layout == "ldm_prefixed" and not shipped.info.heads_guessed
    assert SHIPPED.stat().st_size < 16e6
    for name, p in shipped.model.named_parameters():
        assert p.device.type == "cpu" and torch.isfinite(p).all(), name
    base = load_checkpoint(DEFAULT_MODEL, CPU)
    check_compatible(shipped.info, base.arch, DEFAULT_MODEL.name)
    assert fit_to_checkpoint(shipped.info, base.arch).config == shipped.info.config
    # Trained: the zero convolutions have opened.
    assert shipped.model.controlnet_mid_block.weight.abs().max() > 0


@pytest.fixture(scope="module")
def default_registry() -> ModelRegistry:
    registry = ModelRegistry([DEFAULT_MODEL.parent], [], CPU, HashCache(None))
    registry.load(registry.find(DEFAULT_MODEL.name))
    return registry


def test_shipped_controlnet_puts_the_shape_where_the_map_does(default_registry: ModelRegistry) -> None:
    controlnets = ControlNetRegistry([SHIPPED.parent])
    for case in map_cases(4):  # held-out sizes at held-out places
        result = txt2img(default_registry, controlnets, params_for(case), canny_unit(SHIPPED.stem, case.picture()))
        judged = judge_case(case, result.images[0])
        assert judged.place_ok and judged.colours_ok, (case, judged)
        assert np.array_equal(np.asarray(result.detected_maps[0].convert("L")), case.edge_map())
    # Weight 0: exactly the picture without ControlNet.
    plain = txt2img(default_registry, controlnets, params_for(case)).images[0]
    zero = txt2img(default_registry, controlnets, params_for(case), canny_unit(SHIPPED.stem, case.picture(), 0.0))
    assert np.array_equal(np.asarray(zero.images[0]), np.asarray(plain))
    assert not judge_case(case, plain).place_ok  # the base model alone draws it elsewhere
