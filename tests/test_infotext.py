"""A1111 infotext: format, parse, round trip, typed values."""

from __future__ import annotations

import pytest

from modules.processing.infotext import format_infotext, infotext_to_params, parse_infotext

PARAMS = {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 1,
          "Size": "512x512", "Model hash": "abcdef1234", "Model": "name"}


def test_format_matches_a1111() -> None:
    text = format_infotext("a cat", "blurry", PARAMS)
    assert text == ("a cat\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, "
                    "Size: 512x512, Model hash: abcdef1234, Model: name")


def test_format_details() -> None:
    text = format_infotext("p", "", {"Steps": 20, "CFG scale": 7.5, "Size": (768, 512), "Skipped": None,
                                     "Denoising strength": 0.75, "Lora hashes": "a: 1, b: 2", "Flag": "Flag"})
    assert text == ('p\nSteps: 20, CFG scale: 7.5, Size: 768x512, Denoising strength: 0.75, '
                    'Lora hashes: "a: 1, b: 2", Flag')


def test_parse() -> None:
    prompt, negative, fields = parse_infotext(format_infotext("a cat", "blurry", PARAMS))
    assert (prompt, negative) == ("a cat", "blurry")
    assert fields == {k: str(v) if k != "CFG scale" else "7" for k, v in PARAMS.items()}
    assert list(fields) == list(PARAMS)  # order kept


@pytest.mark.parametrize(("prompt", "negative"), [
    ("a cat", ""),
    ("", "blurry"),
    ("line one\nline two\n\nline four", "neg one\nneg two"),
    ("a, b: c (d:1.2) [e|f] \"quoted\"", 'bad "hands", extra: fingers'),
    ("Steps: 20, Sampler: Euler, CFG scale: 7", ""),
    ("prompt\nSteps: 20, Sampler: Euler, CFG scale: 7", "Steps: 1, Seed: 2, Size: 3x3"),
    ("unicode ✓ 猫 émoji 🐈", "ß"),
])
def test_round_trip(prompt: str, negative: str) -> None:
    params = {"Steps": 30, "Sampler": "DPM++ 2M", "CFG scale": 6.5, "Seed": 4242,
              "Model": 'odd, name: "v2"', "Template": "line1\nline2, with comma", "Note": 'say "hi"'}
    text = format_infotext(prompt, negative, params)
    assert text.split("\n")[-1].startswith("Steps: 30, ")  # multi-line values stay on one line
    parsed_prompt, parsed_negative, fields = parse_infotext(text)
    assert (parsed_prompt, parsed_negative) == (prompt, negative)
    assert fields == {k: str(v) for k, v in params.items()}


def test_prompt_with_params_like_text_is_not_parsed() -> None:
    text = "Steps: 20, Sampler: Euler, CFG scale: 7\nNegative prompt: x\nSteps: 5, Seed: 9, Size: 64x64"
    prompt, negative, fields = parse_infotext(text)
    assert prompt == "Steps: 20, Sampler: Euler, CFG scale: 7"
    assert negative == "x"
    assert fields == {"Steps": "5", "Seed": "9", "Size": "64x64"}


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    prompt, negative, fields = parse_infotext("a cat\nstyle: anime, mood: calm")
    assert prompt == "a cat\nstyle: anime, mood: calm"
    assert (negative, fields) == ("", {})


def test_params_without_prompt() -> None:
    assert parse_infotext("Steps: 20, Seed: 1, Size: 64x64") == ("", "", {"Steps": "20", "Seed": "1", "Size": "64x64"})


def test_a1111_written_text() -> None:
    text = ("masterpiece, 1girl, (smile:1.2)\nNegative prompt: lowres, bad anatomy\n"
            "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3735928559, Size: 512x768, "
            "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.55, Clip skip: 2, "
            'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.6.0')
    prompt, negative, fields = parse_infotext(text)
    assert prompt == "masterpiece, 1girl, (smile:1.2)" and negative == "lowres, bad anatomy"
    assert fields["Lora hashes"] == "add_detail: 7c6bad76eb54"
    params = infotext_to_params(fields)
    assert params == {
        "steps": 28, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 7.0, "seed": 3735928559,
        "width": 512, "height": 768, "model_hash": "6ce0161689", "model": "v1-5-pruned-emaonly",
        "denoising_strength": 0.55, "clip_skip": 2, "hr_scale": 2.0, "hr_upscaler": "Latent", "enable_hr": True,
    }


def test_typed_params() -> None:
    params = infotext_to_params({
        "Steps": "20", "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": "7.5", "Seed": "-1",
        "Size": "640x448", "Variation seed": "77", "Variation seed strength": "0.25", "Batch size": "4",
        "Seed resize from": "512x512", "ENSD": "31337", "Unknown key": "x", "Clip skip": "two",
    })
    assert params == {
        "steps": 20, "sampler_name": "Euler a", "scheduler": "Automatic", "cfg_scale": 7.5, "seed": -1,
        "width": 640, "height": 448, "subseed": 77, "subseed_strength": 0.25, "batch_size": 4,
        "seed_resize_from_w": 512, "seed_resize_from_h": 512, "eta_noise_seed_delta": 31337,
    }
    assert isinstance(params["steps"], int) and isinstance(params["cfg_scale"], float)


def test_unknown_sampler_is_kept_as_written() -> None:
    assert infotext_to_params({"Sampler": "Restart"}) == {"sampler_name": "Restart"}
