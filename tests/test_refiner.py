"""The refiner: a second checkpoint takes over at `refiner_switch_at`; the same checkpoint as
refiner changes nothing; infotext and errors. Tiny SD1 and SDXL checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import modules.processing.refiner as refiner_module
from modules.errors import UserError
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    write_tiny_checkpoint(folder, "sd1", stem="tiny-other", seed=1)
    write_tiny_checkpoint(folder, "sdxl", stem="xl")
    write_tiny_checkpoint(folder, "sdxl", stem="xl-other", seed=1)
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _params(**kw) -> Txt2ImgParams:
    base = {"prompt": "a red circle", "steps": 5, "seed": 2, "width": 64, "height": 64, "save": False,
            "sampler": "Euler", "checkpoint": "tiny"}
    return Txt2ImgParams(**{**base, **kw})


def _who_denoises(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch, params: Txt2ImgParams) -> tuple[list[str], object]:
    """Which model ran each UNet call ("base" / "refiner"), and the result."""
    order: list[str] = []
    loaded = refiner_module.load_checkpoint

    def load_and_mark(*args, **kwargs):
        model = loaded(*args, **kwargs)
        model.unet.register_forward_pre_hook(lambda *_: order.append("refiner"))
        return model

    monkeypatch.setattr(refiner_module, "load_checkpoint", load_and_mark)
    registry.drop_secondary()  # a refiner kept from an earlier test would carry no marking hook
    base = registry.load(params.checkpoint)
    handle = base.unet.register_forward_pre_hook(lambda *_: order.append("base"))
    try:
        result = generate(params, registry)
    finally:
        handle.remove()
    return order, result


@pytest.mark.parametrize("base, other", [("tiny", "tiny-other"), ("xl", "xl-other")])
def test_switch_happens_at_the_asked_step(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch,
                                          base: str, other: str) -> None:
    order, result = _who_denoises(registry, monkeypatch,
                                  _params(checkpoint=base, refiner_checkpoint=other, refiner_switch_at=0.6))
    assert order == ["base"] * 3 + ["refiner"] * 2
    assert registry.current_info.stem == base  # the base stays the loaded model
    text = result.infotexts[0]
    assert f"Refiner: {other} [" in text and "Refiner switch at: 0.6" in text
    values = infotext_to_params(parse_infotext(text)[2])
    assert values["refiner_checkpoint"].startswith(other) and values["refiner_switch_at"] == 0.6
    plain = generate(_params(checkpoint=base), registry).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(result.images[0]))


def test_same_checkpoint_as_refiner_changes_nothing(registry: ModelRegistry) -> None:
    plain = generate(_params(), registry).images[0]
    refined = generate(_params(refiner_checkpoint="tiny", refiner_switch_at=0.4), registry).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(refined))


def test_switch_at_one_never_switches(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    order, _ = _who_denoises(registry, monkeypatch, _params(refiner_checkpoint="tiny-other", refiner_switch_at=1.0))
    assert order == ["base"] * 5


@pytest.mark.parametrize("kw, message", [
    ({"refiner_checkpoint": "missing-model"}, "missing-model"),
    ({"refiner_checkpoint": "tiny-other", "refiner_switch_at": 1.5}, "refiner switch at"),
])
def test_bad_refiner_is_refused(registry: ModelRegistry, kw: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate(_params(**kw), registry)


def test_none_means_no_refiner(registry: ModelRegistry) -> None:
    result = generate(_params(refiner_checkpoint="None"), registry)
    assert "Refiner" not in result.infotexts[0]


def test_refiner_is_loaded_once_for_a_series_of_requests(registry: ModelRegistry,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    loaded = refiner_module.load_checkpoint

    def counting(path, policy):
        loads.append(Path(path).stem)
        return loaded(path, policy)

    monkeypatch.setattr(refiner_module, "load_checkpoint", counting)
    registry.drop_secondary()
    first = generate(_params(refiner_checkpoint="tiny-other", refiner_switch_at=0.5), registry).images[0]
    again = generate(_params(refiner_checkpoint="tiny-other", refiner_switch_at=0.5), registry).images[0]
    assert loads == ["tiny-other"]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    generate(_params(checkpoint="xl", width=64, height=64, refiner_checkpoint="xl-other"), registry)
    assert loads == ["tiny-other", "xl-other"]  # another refiner replaces the kept one


def test_sdxl_refiner_scores_the_negative_low_and_the_positive_high() -> None:
    from types import SimpleNamespace

    import torch

    from modules.processing.params import Txt2ImgParams
    from modules.processing.run import _unet_conditioning
    from modules.text.conditioning import Conditioning

    # A1111's sdxl_refiner_low_aesthetic_score / high: 2.5 for the negative side, 6.0 for the prompt.
    batch, width = 2, 8
    cond = Conditioning(torch.zeros(batch, 77, width), torch.zeros(batch, 4))
    uncond = Conditioning(torch.zeros(batch, 77, width), torch.zeros(batch, 4))
    params = Txt2ImgParams(width=96, height=64)
    for family, expected in (("sdxl_refiner", [[64, 96, 0, 0, 2.5]] * 2 + [[64, 96, 0, 0, 6.0]] * 2),
                             ("sdxl", [[64, 96, 0, 0, 64, 96]] * 4)):
        model = SimpleNamespace(arch=SimpleNamespace(is_sdxl=True, family=family))
        _, added = _unet_conditioning(model, params, cond, uncond, torch.device("cpu"), torch.float32)
        assert added["time_ids"].tolist() == expected, family
