"""Prompt editing `[from:to:when]` and alternation `[a|b]`: the parser, and the conditioning the UNet
actually receives per step on tiny SD1 and SDXL checkpoints (and the default model, robustly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.text.conditioning import PromptEncoder
from modules.text.prompt_schedule import prompt_schedule, text_at
from tests.tiny_models import CPU, write_tiny_checkpoint

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "default-shapes.safetensors"


# ------------------------------------------------------------------------------------------ parser

@pytest.mark.parametrize("prompt, steps, expected", [
    ("a [red:blue:0.5] circle", 20, [(10, "a red circle"), (20, "a blue circle")]),
    ("a [red:blue:3] circle", 10, [(3, "a red circle"), (10, "a blue circle")]),
    ("[to:2]", 4, [(2, ""), (4, "to")]),
    ("[from::2]", 4, [(2, "from"), (4, "")]),
    ("x [a|b]", 4, [(1, "x a"), (2, "x b"), (3, "x a"), (4, "x b")]),
    ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
    ("[a:b: 0.25 ]", 8, [(2, "a"), (8, "b")]),
    # Nesting: a schedule inside a schedule, alternation inside a schedule.
    ("[[a:b:1]:c:3]", 4, [(1, "a"), (3, "b"), (4, "c")]),
    ("[x:[a|b]:2]", 4, [(2, "x"), (3, "a"), (4, "b")]),
    # Emphasis and BREAK pass through for prompt_parser, also inside a schedule.
    ("[(red:1.2):blue:2] BREAK (dot)", 4, [(2, "(red:1.2) BREAK (dot)"), (4, "blue BREAK (dot)")]),
    ("(a [b:c:1]:1.3)", 3, [(1, "(a b:1.3)"), (3, "(a c:1.3)")]),
    # Not editing syntax: emphasis brackets, a colon without a number, escapes, unclosed brackets.
    ("[word] (x:1.2) <lora:pic:0.5>", 5, [(5, "[word] (x:1.2) <lora:pic:0.5>")]),
    ("[a:b]", 5, [(5, "[a:b]")]),
    (r"\[a:b:2\]", 5, [(5, r"\[a:b:2\]")]),
    ("[a:b:2", 5, [(5, "[a:b:2")]),
    ("[a|b:2]", 5, [(5, "[a|b:2]")]),
    # `when` beyond the steps: never switches; 0: switched from the start.
    ("[a:b:50]", 5, [(5, "a")]),
    ("[a:b:0]", 5, [(5, "b")]),
])
def test_schedule(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, steps) == expected


def test_text_at_counts_steps_from_zero() -> None:
    schedule = prompt_schedule("[red:blue:2]", 4)
    assert [text_at(schedule, i) for i in range(4)] == ["red", "red", "blue", "blue"]


# ------------------------------------------------------------------------------------------ conditioning per step

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sd1", stem="tiny")
    write_tiny_checkpoint(folder, "sdxl", stem="tiny-xl")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _contexts(registry: ModelRegistry, **kw) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(encoder_hidden_states, text_embeds) of every UNet call of one generation."""
    model = registry.load(kw["checkpoint"])
    calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def record(_module, _args, kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        text = added.get("text_embeds")
        calls.append((kwargs["encoder_hidden_states"].clone(), None if text is None else text.clone()))

    handle = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate(Txt2ImgParams(**{"steps": 4, "seed": 3, "width": 64, "height": 64, "save": False,
                                  "sampler": "Euler", **kw}), registry)
    finally:
        handle.remove()
    return calls


def _encoded(registry: ModelRegistry, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    model = registry.current()
    cond = PromptEncoder(model.arch.text_encoders, model.text_encoders).encode([text])
    return cond.context[0], None if cond.pooled is None else cond.pooled[0]


def _which(value: torch.Tensor, candidates: dict[str, torch.Tensor]) -> str:
    found = [name for name, c in candidates.items() if c.shape == value.shape and torch.allclose(value, c, atol=1e-5)]
    assert len(found) == 1, (found, list(candidates))
    return found[0]


@pytest.mark.parametrize("checkpoint", ["tiny", "tiny-xl"])
def test_unet_gets_each_steps_prompt(registry: ModelRegistry, checkpoint: str) -> None:
    calls = _contexts(registry, checkpoint=checkpoint, prompt="a [red:blue:0.5] circle",
                      negative_prompt="[dull|flat]")
    texts = ["a red circle", "a blue circle", "dull", "flat"]
    encoded = {t: _encoded(registry, t) for t in texts}
    assert len(calls) == 4
    positive = [_which(c[1], {t: e[0] for t, e in encoded.items()}) for c, _ in calls]
    negative = [_which(c[0], {t: e[0] for t, e in encoded.items()}) for c, _ in calls]
    assert positive == ["a red circle", "a red circle", "a blue circle", "a blue circle"]
    assert negative == ["dull", "flat", "dull", "flat"]
    if checkpoint == "tiny-xl":  # SDXL's pooled vector follows the prompt too
        pooled = [_which(p[1], {t: e[1] for t, e in encoded.items()}) for _, p in calls]
        assert pooled == positive


def test_emphasis_inside_a_schedule_reaches_the_encoder(registry: ModelRegistry) -> None:
    calls = _contexts(registry, checkpoint="tiny", prompt="[(red:1.5):blue:1]", steps=2)
    weighted, plain = _encoded(registry, "(red:1.5)")[0], _encoded(registry, "red")[0]
    assert torch.allclose(calls[0][0][1], weighted, atol=1e-5)
    assert not torch.allclose(calls[0][0][1], plain, atol=1e-3)
    assert torch.allclose(calls[1][0][1], _encoded(registry, "blue")[0], atol=1e-5)


def test_long_schedule_text_pads_chunks(registry: ModelRegistry) -> None:
    """A step's text longer than 75 tokens gets two chunks; the negative side is padded to match."""
    long = " ".join(["red"] * 90)
    calls = _contexts(registry, checkpoint="tiny", prompt=f"[{long}:blue:2]")
    assert [c[0].shape[1] for c in calls] == [154, 154, 77, 77]


def test_plain_prompt_is_unchanged_by_the_schedule_code(registry: ModelRegistry) -> None:
    """A prompt without editing syntax gives the same picture as an equivalent edited prompt that
    never switches (`when` beyond the steps)."""
    base = {"steps": 3, "seed": 5, "width": 64, "height": 64, "save": False, "checkpoint": "tiny"}
    plain = generate(Txt2ImgParams(prompt="a red circle", **base), registry).images[0]
    never = generate(Txt2ImgParams(prompt="a [red:blue:99] circle", **base), registry).images[0]
    switched = generate(Txt2ImgParams(prompt="a [red:blue:1] circle", **base), registry).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(never))
    assert not np.array_equal(np.asarray(plain), np.asarray(switched))


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the embedded default model is missing")
def test_default_model_edited_prompt_differs_from_both(tmp_path: Path) -> None:
    registry = ModelRegistry([DEFAULT_MODEL.parent], [], CPU, HashCache(None))
    base = {"steps": 12, "seed": 11, "save": False, "checkpoint": DEFAULT_MODEL.stem, "sampler": "Euler"}
    images = {p: np.asarray(generate(Txt2ImgParams(prompt=p, **base), registry).images[0], dtype=np.float32)
              for p in ("a red circle", "a blue circle", "a [red:blue:0.5] circle")}
    edited = images["a [red:blue:0.5] circle"]
    for pure in ("a red circle", "a blue circle"):
        assert np.abs(edited - images[pure]).mean() > 1.0, pure


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the embedded default model is missing")
def test_default_model_switching_colour_midway_gives_a_third_colour() -> None:
    from modules.training.default_model.judge import judge

    registry = ModelRegistry([DEFAULT_MODEL.parent], [], CPU, HashCache(None))
    registry.load(registry.find(DEFAULT_MODEL.name))

    def colours(prompt: str) -> list[str | None]:
        # Euler a: the switching points below are measured on its uniform sigmas (the default DPM++ 2M
        # runs on Karras sigmas, which reach low noise sooner, so the colour settles at another step).
        params = [Txt2ImgParams(prompt=prompt, sampler="Euler a", steps=20, seed=seed, save=False) for seed in (1, 2, 3)]
        return [judge(generate(p, registry).images[0]).foreground for p in params]

    assert colours("a red circle on a white background") == ["red"] * 3
    assert colours("a blue circle on a white background") == ["blue"] * 3
    # The default model settles the shape's colour during the first half of sampling: switched from
    # red to blue early, the circle is blue; switched late, red; switched near the point where the
    # colour settles (which moves a little from seed to seed, ~0.4-0.45 for this model), it is a
    # colour that is neither (the judge names it, e.g. black).
    assert colours("a [red:blue:0.2] circle on a white background") == ["blue"] * 3
    assert colours("a [red:blue:0.6] circle on a white background") == ["red"] * 3
    midway = [colours(f"a [red:blue:{when}] circle on a white background") for when in (0.4, 0.45)]
    for seed_index in range(3):
        seen = [m[seed_index] for m in midway]
        assert any(c not in ("red", "blue") for c in seen), midway
