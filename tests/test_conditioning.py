from dataclasses import replace

import pytest
import torch

from modules.models.arch import TextEncoderSpec, parse_ldm_config
from modules.models.build import build_text_encoder
from modules.text.conditioning import (
    CHUNK_IDS,
    PromptEncoder,
    chunk_ids,
    sdxl_time_ids,
    tokenize_prompt,
)
from modules.text.tokenizer import BOS_ID, EOS_ID, tokenize_fragment

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
SD1 = TextEncoderSpec(layout="hf_clip", prefix="cond_stage_model.transformer.", hidden_act="quick_gelu", **TINY)
SD2 = TextEncoderSpec(
    layout="open_clip", prefix="cond_stage_model.model.", hidden_act="gelu",
    layer_from_end=2, final_layer_norm=True, pad_with_eos=False, **TINY,
)
SDXL_L = replace(SD1, prefix="conditioner.embedders.0.transformer.", layer_from_end=2, final_layer_norm=False)
SDXL_G = TextEncoderSpec(
    layout="open_clip", prefix="conditioner.embedders.1.model.", hidden_act="gelu",
    hidden_size=48, num_layers=3, num_heads=2, intermediate_size=96,
    layer_from_end=2, final_layer_norm=False, pad_with_eos=False, projection=True,
)


def make_encoder(spec: TextEncoderSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_text_encoder(spec).eval()


@pytest.fixture(scope="module")
def sd1() -> tuple[PromptEncoder, torch.nn.Module]:
    encoder = make_encoder(SD1)
    return PromptEncoder([SD1], [encoder]), encoder


def ids_tensor(prompt: str, pad: int) -> torch.Tensor:
    ids = [BOS_ID, *tokenize_fragment(prompt), EOS_ID]
    return torch.tensor([ids + [pad] * (CHUNK_IDS - len(ids))])


def words(n: int) -> str:
    # "cat" is one token, so n words are n tokens.
    return " ".join(["cat"] * n)


def test_chunk_padding_depends_on_spec() -> None:
    chunks, count = tokenize_prompt("a red circle")
    assert count == 3
    eos_ids, w = chunk_ids(chunks[0], pad_with_eos=True)
    zero_ids, _ = chunk_ids(chunks[0], pad_with_eos=False)
    assert len(eos_ids) == len(zero_ids) == len(w) == CHUNK_IDS
    assert eos_ids[:5] == zero_ids[:5] == [BOS_ID, 320, 736, tokenize_fragment("circle")[0], EOS_ID]
    assert set(eos_ids[5:]) == {EOS_ID}
    assert set(zero_ids[5:]) == {0}
    empty, count = tokenize_prompt("")
    assert count == 0 and len(empty) == 1
    assert chunk_ids(empty[0], False)[0][:3] == [BOS_ID, EOS_ID, 0]


def test_long_prompt_and_break_make_chunks(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, _ = sd1
    assert len(tokenize_prompt(words(75))[0]) == 1
    assert len(tokenize_prompt(words(76))[0]) == 2
    assert encoder.count_tokens(words(100)) == (100, 150)
    assert encoder.encode([words(100)]).context.shape == (1, 154, 32)
    chunks, count = tokenize_prompt("a cat BREAK a dog")
    assert [len(c.tokens) for c in chunks] == [2, 2]
    assert count == 77  # A1111 counts a chunk ended by BREAK as full
    assert encoder.encode(["a cat BREAK a dog"]).context.shape == (1, 154, 32)


def test_comma_backtrack_keeps_phrase_together() -> None:
    prompt = words(70) + ", red dog house cat cat cat"
    chunks, _ = tokenize_prompt(prompt)
    assert [len(c.tokens) for c in chunks] == [71, 6]
    assert chunks[0].tokens[-1] == tokenize_fragment(",")[0]


def test_weight_one_equals_plain_encoder(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, model = sd1
    cond = encoder.encode(["a red circle"])
    with torch.no_grad():
        expected = model(ids_tensor("a red circle", EOS_ID), output_hidden_states=True).last_hidden_state
    torch.testing.assert_close(cond.context, expected, rtol=0, atol=0)
    assert cond.pooled is None
    assert cond.context.dtype == torch.float32


def test_clip_skip_is_penultimate_plus_final_norm(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, model = sd1
    cond = encoder.encode(["a red circle"], clip_skip=2)
    with torch.no_grad():
        hidden = model(ids_tensor("a red circle", EOS_ID), output_hidden_states=True).hidden_states
        expected = model.final_layer_norm(hidden[-2])
    torch.testing.assert_close(cond.context, expected)
    assert not torch.allclose(cond.context, encoder.encode(["a red circle"]).context)


def test_sd2_penultimate_zero_padding_ignores_clip_skip() -> None:
    model = make_encoder(SD2)
    encoder = PromptEncoder([SD2], [model])
    with torch.no_grad():
        hidden = model(ids_tensor("a red circle", 0), output_hidden_states=True).hidden_states
    expected = model.final_layer_norm(hidden[-2])
    torch.testing.assert_close(encoder.encode(["a red circle"]).context, expected)
    torch.testing.assert_close(encoder.encode(["a red circle"], clip_skip=2).context, expected)


def test_emphasis_changes_that_token(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, _ = sd1
    plain = encoder.encode(["a red circle"]).context[0]
    weighted = encoder.encode(["a (red:1.5) circle"]).context[0]
    mean_ratio = plain.mean() / (plain * torch.tensor([1, 1, 1.5] + [1] * 74).unsqueeze(-1)).mean()
    # Token 2 ("red") is scaled by 1.5, then every position by the mean-restoring ratio.
    torch.testing.assert_close(weighted[2], plain[2] * 1.5 * mean_ratio)
    torch.testing.assert_close(weighted[1], plain[1] * mean_ratio)
    torch.testing.assert_close(weighted.mean(), plain.mean())


def test_batch_and_cache(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, _ = sd1
    cond = encoder.encode(["a cat", "a dog", "a cat"])
    assert cond.context.shape == (3, 77, 32)
    torch.testing.assert_close(cond.context[0], cond.context[2])
    torch.testing.assert_close(cond.context[1], encoder.encode(["a dog"]).context[0])
    # A shorter prompt in a batch is padded with empty chunks.
    mixed = encoder.encode(["a cat", words(80)])
    assert mixed.context.shape == (2, 154, 32)
    torch.testing.assert_close(mixed.context[0, 77:], encoder.encode([""]).context[0])
    assert encoder.encode(["a cat"], min_chunks=3).context.shape == (1, 231, 32)


def test_encode_for_cfg_pads_to_equal_length(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, _ = sd1
    pos, neg = encoder.encode_for_cfg([words(100)], ["blurry"])
    assert pos.context.shape == neg.context.shape == (1, 154, 32)
    torch.testing.assert_close(neg.context[:, :77], encoder.encode(["blurry"]).context)
    torch.testing.assert_close(neg.context[:, 77:], encoder.encode([""]).context)
    pos, neg = encoder.encode_for_cfg(["cat"], ["a BREAK b BREAK c"])
    assert pos.context.shape == neg.context.shape == (1, 231, 32)


def test_lora_tags_are_not_encoded(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, _ = sd1
    torch.testing.assert_close(encoder.encode(["a cat<lora:x:0.5>"]).context, encoder.encode(["a cat"]).context)
    assert encoder.count_tokens("a cat <lora:some long name>") == (2, 75)


def test_sdxl_two_encoders() -> None:
    model_l, model_g = make_encoder(SDXL_L, 1), make_encoder(SDXL_G, 2)
    encoder = PromptEncoder([SDXL_L, SDXL_G], [model_l, model_g])
    cond = encoder.encode(["a red circle", words(90)])
    assert cond.context.shape == (2, 154, 32 + 48)
    assert cond.pooled is not None and cond.pooled.shape == (2, 48)
    with torch.no_grad():
        out_l = model_l(ids_tensor("a red circle", EOS_ID), output_hidden_states=True)
        out_g = model_g(ids_tensor("a red circle", 0), output_hidden_states=True)
    # Penultimate layers, no final norm, concatenated on the feature axis.
    torch.testing.assert_close(cond.context[0, :77, :32], out_l.hidden_states[-2][0])
    torch.testing.assert_close(cond.context[0, :77, 32:], out_g.hidden_states[-2][0])
    # Pooled = projection of the final-normed last layer at the first EOS (position 4 here).
    expected_pooled = model_g.text_projection(model_g.text_model.final_layer_norm(out_g.hidden_states[-1])[0, 4])
    torch.testing.assert_close(cond.pooled[0], expected_pooled)
    torch.testing.assert_close(cond.pooled[0], out_g.text_embeds[0])
    # The long prompt's pooled vector comes from its first chunk only.
    first_chunk = torch.tensor([[BOS_ID, *tokenize_fragment(words(75)), EOS_ID]])
    with torch.no_grad():
        torch.testing.assert_close(cond.pooled[1], model_g(first_chunk).text_embeds[0])


def test_sdxl_time_ids() -> None:
    ids = sdxl_time_ids((1024, 768), (0, 16), (1024, 768))
    assert ids.tolist() == [1024, 768, 0, 16, 1024, 768]
    assert ids.shape == (6,)


def test_bad_arguments(sd1: tuple[PromptEncoder, torch.nn.Module]) -> None:
    encoder, model = sd1
    with pytest.raises(ValueError):
        PromptEncoder([SD1, SD1], [model])
    with pytest.raises(TypeError):
        encoder.encode("a cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encoder.encode(["a cat"], clip_skip=0)


@pytest.mark.parametrize(("kind", "width", "pooled"), [("sd1", 32, None), ("sd2-v", 32, None), ("sdxl", 64, 32)])
def test_specs_from_shipped_configs(kind: str, width: int, pooled: int | None) -> None:
    from tests.tiny_models import tiny_config

    specs = parse_ldm_config(tiny_config(kind)).text_encoders
    encoder = PromptEncoder(specs, [make_encoder(s, i) for i, s in enumerate(specs)])
    cond = encoder.encode(["a (red:1.2) circle BREAK on a table"], clip_skip=2)
    assert cond.context.shape == (1, 154, width)
    assert (cond.pooled is None) if pooled is None else (cond.pooled.shape == (1, pooled))
    if kind == "sdxl":
        # SGM's "hidden" layer_idx for CLIP-L becomes the penultimate layer, unnormalised.
        assert (specs[0].layer_from_end, specs[0].final_layer_norm) == (2, False)
