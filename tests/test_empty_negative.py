"""SDXL's empty negative prompt: zeros for every text encoder's output, as sgm and A1111 do.

A1111 (`sd_models_xl.get_learned_conditioning`) passes `force_zero_embeddings=['txt']` to sgm's
GeneralConditioner when every text of a negative prompt's schedule is "": the cross-attention context
and the pooled vector become zeros of the usual shapes, the size/crop (and refiner aesthetic) time ids
stay. SD 1.x / 2.x go through LDM's encoder, which encodes "" as text. Tiny models in the real layouts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from modules.models.arch import parse_ldm_config
from modules.models.build import build_text_encoder
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.text.conditioning import Conditioning, PromptEncoder
from modules.text.prompt_schedule import PromptSchedules
from tests.tiny_models import CPU, REPO, build_random_model, write_tiny_checkpoint

TINY_TEXT = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def encoders() -> dict[str, PromptEncoder]:
    out = {}
    for kind in ("sd1", "sd2-v", "sdxl"):
        model = build_random_model(kind)
        out[kind] = PromptEncoder(model.arch.text_encoders, model.text_encoders)
    return out


def _uncond(encoder: PromptEncoder, negative: str, step: int = 0, steps: int = 4, prompt: str = "a cat",
            batch: int = 2) -> tuple[Conditioning, Conditioning]:
    return PromptSchedules(encoder, prompt, negative, batch).for_steps(steps).at(step)


def test_sdxl_empty_negative_is_zeros_of_the_encoded_shapes(encoders: dict[str, PromptEncoder]) -> None:
    encoder = encoders["sdxl"]
    cond, uncond = _uncond(encoder, "")
    encoded_empty = encoder.encode([""])
    assert uncond.context.shape == (2, *encoded_empty.context.shape[1:]) == (2, 77, 64)
    assert uncond.pooled is not None and encoded_empty.pooled is not None
    assert uncond.pooled.shape == (2, encoded_empty.pooled.shape[1]) == (2, 32)
    assert torch.count_nonzero(uncond.context) == 0 and torch.count_nonzero(uncond.pooled) == 0
    # What is replaced is not zero by itself: "" encodes to a non-zero context and pooled vector.
    assert encoded_empty.context.abs().max() > 0.1 and encoded_empty.pooled.abs().max() > 0.01
    torch.testing.assert_close(cond.context[0], encoder.encode(["a cat"]).context[0])


def test_sdxl_non_empty_negative_is_encoded(encoders: dict[str, PromptEncoder]) -> None:
    encoder = encoders["sdxl"]
    for negative in ("blurry", " "):  # a space is not empty, for A1111 (x == '') either
        _, uncond = _uncond(encoder, negative)
        expected = encoder.encode([negative])
        torch.testing.assert_close(uncond.context[1], expected.context[0])
        torch.testing.assert_close(uncond.pooled[1], expected.pooled[0])
        assert uncond.context.abs().max() > 0.1


def test_sdxl_scheduled_negative_with_an_empty_part_encodes_it(encoders: dict[str, PromptEncoder]) -> None:
    """"[:ugly:0.5]" goes through "" and "ugly": not every text is empty, so "" is encoded as text."""
    encoder = encoders["sdxl"]
    empty, ugly = encoder.encode([""]), encoder.encode(["ugly"])
    for negative, expected in (("[:ugly:0.5]", [empty, empty, ugly, ugly]), ("[ugly::0.5]", [ugly, ugly, empty, empty])):
        schedules = PromptSchedules(encoder, "a cat", negative, 1).for_steps(4)
        for step, want in enumerate(expected):
            torch.testing.assert_close(schedules.at(step)[1].context, want.context)
            torch.testing.assert_close(schedules.at(step)[1].pooled, want.pooled)
    # Alternation between empty texts renders "" at every step: zeros.
    _, uncond = _uncond(encoder, "[|]")
    assert torch.count_nonzero(uncond.context) == 0


@pytest.mark.parametrize("kind", ["sd1", "sd2-v"])
def test_sd1_sd2_empty_negative_encodes_the_empty_text(encoders: dict[str, PromptEncoder], kind: str) -> None:
    encoder = encoders[kind]
    assert not encoder.zeroes_empty_negative
    _, uncond = _uncond(encoder, "")
    expected = encoder.encode([""]).context[0]
    assert uncond.pooled is None
    torch.testing.assert_close(uncond.context[0], expected)
    assert expected.abs().max() > 0.1
    _, neg = encoder.encode_for_cfg(["a cat"], [""])
    torch.testing.assert_close(neg.context[0], expected)


def test_sdxl_zeros_are_padded_to_a_long_prompt(encoders: dict[str, PromptEncoder]) -> None:
    encoder = encoders["sdxl"]
    long_prompt = " ".join(["cat"] * 100)  # two chunks
    cond, uncond = _uncond(encoder, "", prompt=long_prompt)
    assert cond.context.shape[1] == uncond.context.shape[1] == 154
    assert torch.count_nonzero(uncond.context) == 0
    pos, neg = encoder.encode_for_cfg([long_prompt], [""])
    assert neg.context.shape == (1, 154, 64) and torch.count_nonzero(neg.context) == 0
    assert neg.pooled is not None and torch.count_nonzero(neg.pooled) == 0
    assert torch.count_nonzero(encoder.encode_for_cfg(["a cat"], ["blurry"])[1].context) > 0


def test_zero_context_length_does_not_change_the_unet_output() -> None:
    """Why zeros are padded with zeros: all-zero keys and values give the same cross-attention output at any
    length, so the padded negative equals A1111's default unpadded pass (and sgm's single chunk)."""
    model = build_random_model("sdxl")
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    added = {"text_embeds": torch.zeros(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        short = model.unet(x, t, encoder_hidden_states=torch.zeros(1, 77, 64), added_cond_kwargs=added).sample
        long = model.unet(x, t, encoder_hidden_states=torch.zeros(1, 154, 64), added_cond_kwargs=added).sample
        padded_with_text = model.unet(x, t, added_cond_kwargs=added, encoder_hidden_states=torch.cat(
            [torch.zeros(1, 77, 64), torch.randn(1, 77, 64)], dim=1)).sample
    torch.testing.assert_close(short, long, rtol=0, atol=1e-6)
    assert (short - padded_with_text).abs().max() > 1e-3


def test_refiner_zeroes_its_empty_negative_too() -> None:
    """A1111 reloads the refiner and rebuilds the conditioning with the same sgm function (setup_conds),
    so its single OpenCLIP-G tower's context and pooled vector are zeroed alike."""
    data = yaml.safe_load((REPO / "configs" / "sd_xl_refiner.yaml").read_text())
    data["model"]["params"]["conditioner_config"]["params"]["emb_models"][0]["params"]["text_config"] = dict(TINY_TEXT)
    arch = parse_ldm_config(data)
    assert arch.family == "sdxl_refiner"
    torch.manual_seed(0)
    encoder = PromptEncoder(arch.text_encoders, [build_text_encoder(s).eval() for s in arch.text_encoders])
    assert encoder.zeroes_empty_negative
    _, uncond = _uncond(encoder, "")
    assert uncond.context.shape == (2, 77, 32) and uncond.pooled is not None and uncond.pooled.shape == (2, 32)
    assert torch.count_nonzero(uncond.context) == 0 and torch.count_nonzero(uncond.pooled) == 0
    _, encoded = _uncond(encoder, "blurry")
    torch.testing.assert_close(encoded.context[0], encoder.encode(["blurry"]).context[0])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder: Path = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder, "sdxl", stem="xl")
    return ModelRegistry([folder], [], CPU, HashCache(None))


def _unet_calls(registry: ModelRegistry, negative: str) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    model = registry.load("xl")
    calls: list[dict[str, torch.Tensor]] = []

    def record(_module, _args, kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append({"context": kwargs["encoder_hidden_states"].clone(), "text": added["text_embeds"].clone(),
                      "time": added["time_ids"].clone()})

    handle = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = generate(Txt2ImgParams(prompt="a red circle", negative_prompt=negative, steps=3, seed=4,
                                        width=64, height=64, save=False, sampler="Euler"), registry)
    finally:
        handle.remove()
    return calls, np.asarray(result.images[0])


def test_generation_feeds_the_unet_zeros_for_an_empty_negative(registry: ModelRegistry) -> None:
    calls, picture = _unet_calls(registry, "")
    assert len(calls) == 3 and picture.shape == (64, 64, 3)
    for call in calls:  # the batch is [negative, positive]
        assert torch.count_nonzero(call["context"][0]) == 0 and torch.count_nonzero(call["text"][0]) == 0
        assert call["context"][1].abs().max() > 0.1
        # The size/crop part of SDXL's vector stays: the same time ids on both sides.
        torch.testing.assert_close(call["time"][0], torch.tensor([64.0, 64, 0, 0, 64, 64]))
        torch.testing.assert_close(call["time"][0], call["time"][1])
    encoded_calls, encoded_picture = _unet_calls(registry, "blurry")
    assert encoded_calls[0]["context"][0].abs().max() > 0.1
    assert not np.array_equal(picture, encoded_picture)
