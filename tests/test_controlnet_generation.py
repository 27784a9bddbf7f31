"""ControlNet units in generation, on tiny models (64 px, a few Euler steps).

The reference for Balanced mode is diffusers' `StableDiffusionControlNetPipeline` run on the same
UNet, VAE, ControlNet weights, start latents, prompt embeddings and sampler; the other two modes,
the step window and the weight are checked against the rules of A1111's ControlNet extension
(scripts/hook.py), written out here from its text, on the residuals the UNet actually receives.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline
from PIL import Image, ImageDraw

from modules.controlnet.registry import ControlNetRegistry
from modules.controlnet.units import ControlUnit
from modules.errors import UserError
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.processing.params import Img2ImgParams, InpaintParams, Txt2ImgParams
from modules.processing.run import decode_latents, generate
from modules.sampling.k_schedulers import start_noise_scale
from modules.sampling.noise import initial_noise
from modules.sampling.samplers import make_scheduler
from tests.tiny_controlnets import write_tiny_controlnet
from tests.tiny_models import CPU, write_tiny_checkpoint

STEPS = 6
SEED = 7
SIZE = 64
# Random ControlNet weights barely move the UNet and hardly see the map; stronger output
# convolutions and hint encoder (tests/tiny_controlnets.py) make the map's effect far exceed the
# 1/255 the comparison allows.
GAIN, HINT_GAIN = 10.0, 3.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("controlnet-generation")
    write_tiny_checkpoint(root / "sd", "sd1", stem="tiny")
    _, net = write_tiny_controlnet(root / "cn", "sd1", "ldm_prefixed", stem="cn-sd1", gain=GAIN,
                                  hint_gain=HINT_GAIN)
    write_tiny_controlnet(root / "cn", "sdxl", "diffusers", stem="cn-sdxl")
    registry = ModelRegistry([root / "sd"], [], CPU, HashCache(None))
    return SimpleNamespace(registry=registry, controlnets=ControlNetRegistry([root / "cn"]), net=net,
                           model=registry.load("tiny"), checkpoint="tiny")


def square_map(left: int = 16, top: int = 16, side: int = 24) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    ImageDraw.Draw(image).rectangle([left, top, left + side - 1, top + side - 1], fill="white")
    return image


def unit(**kw: object) -> ControlUnit:
    settings: dict[str, object] = {"enabled": True, "module": "none", "model": "cn-sd1", "image": square_map()}
    settings.update(kw)
    return ControlUnit(**settings)  # type: ignore[arg-type]


def run(env: SimpleNamespace, *units: ControlUnit, steps: int = STEPS, kind: type = Txt2ImgParams,
        **settings: object) -> tuple[np.ndarray, list[dict]]:
    """The product's picture (txt2img unless `kind` says) and, per UNet call, what the UNet received."""
    calls: list[dict] = []

    def spy(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({"x": args[0].clone(), "t": args[1], "context": kwargs["encoder_hidden_states"].clone(),
                      "added": kwargs.get("added_cond_kwargs"), "down": kwargs.get("down_block_additional_residuals"),
                      "mid": kwargs.get("mid_block_additional_residual")})

    handle = env.model.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        base: dict[str, object] = {"prompt": "a red circle", "sampler": "Euler", "schedule_type": "Automatic",
                                   "steps": steps, "cfg_scale": 7.0, "seed": SEED, "width": SIZE, "height": SIZE,
                                   "save": False, "checkpoint": env.checkpoint, "controlnet_units": tuple(units)}
        params = kind(**{**base, **settings})
        result = generate(params, env.registry, controlnets=env.controlnets)
    finally:
        handle.remove()
    return np.asarray(result.images[0], dtype=np.int16), calls


def diffusers_image(env: SimpleNamespace, context: torch.Tensor, scale: float, start: float, end: float,
                    steps: int = STEPS) -> np.ndarray:
    """diffusers' ControlNet pipeline on the product's modules, sampler, start latents and prompts."""
    model = env.model
    reference = make_scheduler("Euler", "Automatic", model.arch.scheduler_config)
    reference.set_timesteps(steps)
    start_latents = initial_noise([SEED], (4, SIZE // 8, SIZE // 8), torch.device("cpu"), torch.float32)
    start_latents = start_latents * start_noise_scale(reference)
    pipe = StableDiffusionControlNetPipeline(
        vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet, controlnet=env.net,
        scheduler=make_scheduler("Euler", "Automatic", model.arch.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=context[1:2], negative_prompt_embeds=context[0:1], image=square_map(), height=SIZE,
               width=SIZE, num_inference_steps=steps, guidance_scale=7.0,
               latents=start_latents / reference.init_noise_sigma, controlnet_conditioning_scale=scale,
               control_guidance_start=start, control_guidance_end=end, output_type="latent")
    return np.asarray(decode_latents(model, out.images)[0], dtype=np.int16)


def extension_window(steps: int, start: float, end: float) -> list[int]:
    """Steps a unit acts on, by the extension's rule as A1111 feeds it.

    A1111 sets `state.sampling_step` in the sampler callback after each step (0 at launch), and the
    extension reads it before the model call: fraction = that / steps, off when < start or > end.
    """
    active, sampling_step = [], 0
    for i in range(steps):
        fraction = sampling_step / steps
        if not (fraction < start or fraction > end):
            active.append(i)
        sampling_step = i  # the callback after step i
    return active


def test_balanced_txt2img_equals_diffusers_controlnet_pipeline(env: SimpleNamespace) -> None:
    plain, _ = run(env)
    image, calls = run(env, unit())
    assert all(c["down"] is not None and len(c["down"]) == 12 and c["mid"] is not None for c in calls)
    expected = diffusers_image(env, calls[0]["context"], 1.0, 0.0, 1.0)
    assert np.abs(image - expected).max() <= 1
    # The control is far above that tolerance: the comparison is not of two near-plain pictures.
    assert np.abs(image - plain).mean() > 5 and np.abs(image - plain).max() > 40


def test_weight_and_guidance_window_equal_diffusers(env: SimpleNamespace) -> None:
    start, end = 0.1, 0.4
    active = extension_window(STEPS, start, end)
    assert active == [2, 3]  # fractions 0, 0, 1/6, 2/6, 3/6, 4/6
    image, calls = run(env, unit(weight=0.5, guidance_start=start, guidance_end=end))
    assert [i for i, c in enumerate(calls) if c["down"] is not None] == active
    # diffusers keeps step i when i/n >= s and (i+1)/n <= e: these bounds give the same steps.
    ref_start, ref_end = active[0] / STEPS, (active[-1] + 1) / STEPS
    assert [i for i in range(STEPS) if not (i / STEPS < ref_start or (i + 1) / STEPS > ref_end)] == active
    expected = diffusers_image(env, calls[0]["context"], 0.5, ref_start, ref_end)
    assert np.abs(image - expected).max() <= 1
    # The comparison tells the step counting apart: reading step i as fraction i/n (steps 1 and 2)
    # gives another picture.
    unlagged = diffusers_image(env, calls[0]["context"], 0.5, 1 / STEPS, 3 / STEPS)
    assert np.abs(image - unlagged).max() > 4


def raw_outputs(env: SimpleNamespace, call: dict) -> list[torch.Tensor]:
    hint = torch.from_numpy(np.asarray(square_map(), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        down, mid = env.net(call["x"], call["t"], encoder_hidden_states=call["context"], controlnet_cond=hint,
                            return_dict=False)
    return [*down, mid]


@pytest.mark.parametrize("mode", ["My prompt is more important", "ControlNet is more important"])
def test_soft_modes_follow_the_extension(env: SimpleNamespace, mode: str) -> None:
    weight = 0.8
    _, calls = run(env, unit(weight=weight, control_mode=mode), steps=2)
    for call in calls:
        got = [*call["down"], call["mid"]]
        outputs = raw_outputs(env, call)
        assert len(got) == len(outputs) == 13
        for i, (g, raw) in enumerate(zip(got, outputs, strict=True)):
            # Output i (0 = first skip connection, 12 = middle block) times weight * 0.825^(12 - i).
            want = raw * (weight * 0.825 ** (12 - i))
            if mode == "ControlNet is more important":
                want = torch.cat([torch.zeros_like(want[:1]), want[1:]])  # batch is [uncond, cond]
                assert torch.count_nonzero(g[0]) == 0
            torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-6)


def test_two_units_sum(env: SimpleNamespace) -> None:
    second = square_map(left=30, top=8, side=20)
    _, calls = run(env, unit(weight=0.7), unit(weight=1.3, image=second, control_mode="My prompt is more important"),
                   steps=1)
    call = calls[0]
    hint2 = torch.from_numpy(np.asarray(second, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        down2, mid2 = env.net(call["x"], call["t"], encoder_hidden_states=call["context"], controlnet_cond=hint2,
                              return_dict=False)
    first = raw_outputs(env, call)
    for i, (g, a, b) in enumerate(zip([*call["down"], call["mid"]], first, [*down2, mid2], strict=True)):
        torch.testing.assert_close(g, b * (1.3 * 0.825 ** (12 - i)) + a * 0.7, rtol=1e-5, atol=1e-6)


def test_weight_zero_and_empty_window_give_the_plain_image(env: SimpleNamespace) -> None:
    plain, _ = run(env)
    # Windows no step falls in: the fractions seen are 0, 0, 1/6, ..., 4/6.
    assert extension_window(STEPS, 1.0, 1.0) == extension_window(STEPS, 0.55, 0.6) == []
    for settings in ({"weight": 0.0}, {"guidance_start": 1.0, "guidance_end": 1.0},
                     {"guidance_start": 0.55, "guidance_end": 0.6}):
        image, calls = run(env, unit(**settings))
        assert all(c["down"] is None and c["mid"] is None for c in calls), settings
        assert np.array_equal(image, plain), settings


def test_sdxl_controlnet_with_sd1_checkpoint_is_refused(env: SimpleNamespace) -> None:
    with pytest.raises(UserError, match=r"(?s)cn-sdxl.*SDXL.*'tiny'.*SD 1"):
        run(env, unit(model="cn-sdxl"))


def test_unknown_model_and_bad_settings_name_the_field(env: SimpleNamespace) -> None:
    with pytest.raises(UserError, match="unknown ControlNet model 'nope'"):
        run(env, unit(model="nope"))
    cases = [({"weight": 5}, "weight"), ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start"),
             ({"control_mode": "Louder"}, "control_mode"), ({"resize_mode": "Stretch"}, "resize_mode"),
             ({"hr_option": 7}, "hr_option"), ({"model": "None"}, "no ControlNet model")]
    for settings, field in cases:
        with pytest.raises(UserError, match=f"ControlNet unit 0: .*{field}|ControlNet unit 0: {field}"):
            Txt2ImgParams(controlnet_units=(unit(**settings),)).validate()
    # The params allow up to 10 units; the setting control_net_unit_count (default 3) limits a request
    # further in the app context (tests/test_settings.py).
    with pytest.raises(UserError, match="at most 10"):
        Txt2ImgParams(controlnet_units=(unit(),) * 11).validate()


def test_a_square_map_moves_the_output(env: SimpleNamespace) -> None:
    """Moving the square in the map moves the change it makes (a random model: a sanity check)."""
    plain, _ = run(env)
    left, _ = run(env, unit(image=square_map(left=4, top=20, side=20)))
    right, _ = run(env, unit(image=square_map(left=40, top=20, side=20)))
    change = np.abs(left - right).sum(axis=2)
    squares = np.zeros((SIZE, SIZE), dtype=bool)
    squares[20:40, 4:24] = squares[20:40, 40:60] = True
    assert change[squares].mean() > 1.2 * change[~squares].mean()

    def centre_x(difference: np.ndarray) -> float:
        weight = difference.sum(axis=2).astype(np.float64)
        return float((weight * np.arange(SIZE)[None, :]).sum() / weight.sum())

    assert centre_x(np.abs(left - plain)) + 2 < centre_x(np.abs(right - plain))


def test_infotext_field_per_enabled_unit(env: SimpleNamespace, tmp_path: Path) -> None:
    from modules.controlnet.infotext import units_from_fields
    from modules.processing.infotext import parse_infotext

    params = Txt2ImgParams(prompt="a red circle", sampler="Euler", steps=1, seed=SEED, width=SIZE, height=SIZE,
                           save=False, checkpoint="tiny",
                           controlnet_units=(ControlUnit(), unit(module="canny", pixel_perfect=True,
                                                                 guidance_end=0.75)))
    text = generate(params, env.registry, controlnets=env.controlnets).infotexts[0]
    title = env.controlnets.find("cn-sd1").title()
    expected = (f'ControlNet 0: "Module: canny, Model: {title}, Weight: 1.0, Resize Mode: Crop and Resize, '
                "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, "
                'Guidance End: 0.75, Pixel Perfect: True, Control Mode: Balanced"')
    assert expected in text and "ControlNet 1" not in text
    units = units_from_fields(parse_infotext(text)[2])
    assert units == [{"enabled": True, "module": "canny", "model": title, "weight": 1.0,
                      "resize_mode": "Crop and Resize", "processor_res": 512, "threshold_a": 100.0,
                      "threshold_b": 200.0, "guidance_start": 0.0, "guidance_end": 0.75, "pixel_perfect": True,
                      "control_mode": "Balanced"}]
    assert ControlUnit(**{**units[0], "image": square_map()}).validate().model == title


def test_img2img_unit_without_image_uses_the_input_picture(env: SimpleNamespace) -> None:
    picture = square_map(left=30, top=10, side=30).resize((96, 64))  # wider than the 64 x 64 generation
    request = {"kind": Img2ImgParams, "init_image": picture, "denoising_strength": 0.7,
               "resize_mode": "crop and resize", "steps": 3}
    image, calls = run(env, unit(image=None), **request)
    assert all(c["down"] is not None for c in calls)
    same, _ = run(env, unit(image=picture, resize_mode="Crop and Resize"), **request)
    assert np.array_equal(image, same)  # the input picture, fitted with the request's resize mode
    stretched, _ = run(env, unit(image=picture, resize_mode="Just Resize"), **request)
    assert not np.array_equal(image, stretched)
    with pytest.raises(UserError, match="ControlNet unit 0 has no image"):
        run(env, unit(image=None), steps=1)


HIRES = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
         "denoising_strength": 0.6, "steps": 2}


@pytest.mark.parametrize(("option", "first", "second"), [("Both", True, True), ("Low res only", True, False),
                                                         ("High res only", False, True)])
def test_hires_option_picks_the_passes(env: SimpleNamespace, option: str, first: bool, second: bool) -> None:
    _, calls = run(env, unit(hr_option=option), **HIRES)
    low = [c for c in calls if c["x"].shape[-1] == 8]  # latents of the 64 px pass
    high = [c for c in calls if c["x"].shape[-1] == 16]  # and of the 128 px hires pass
    assert len(low) == 2 and high and len(low) + len(high) == len(calls)
    assert all((c["down"] is not None) == first for c in low)
    assert all((c["down"] is not None) == second for c in high)
    if second:
        assert high[0]["down"][0].shape[-1] == 16  # the hint fitted to the hires size


def test_canny_is_soft_in_the_hires_pass(env: SimpleNamespace) -> None:
    """The extension injects canny softly in the hires pass whatever the mode; other modules keep theirs."""
    def hires_residuals(module: str, mode: str) -> list[torch.Tensor]:
        _, calls = run(env, unit(module=module, control_mode=mode, hr_option="High res only",
                                 image=square_map().convert("L").convert("RGB")), **HIRES)
        first_hires = next(c for c in calls if c["x"].shape[-1] == 16)
        return [*first_hires["down"], first_hires["mid"]]

    balanced, prompt = hires_residuals("canny", "Balanced"), hires_residuals("canny", "My prompt is more important")
    assert all(torch.equal(a, b) for a, b in zip(balanced, prompt, strict=True))
    plain_balanced = hires_residuals("invert", "Balanced")
    plain_prompt = hires_residuals("invert", "My prompt is more important")
    torch.testing.assert_close(plain_prompt[0], plain_balanced[0] * 0.825 ** 12)


def test_refiner_steps_get_no_control(env: SimpleNamespace) -> None:
    _, calls = run(env, unit(), steps=4, refiner_checkpoint="tiny", refiner_switch_at=0.5)
    assert [c["down"] is not None for c in calls] == [True, True, False, False]


def test_sdxl_unit_follows_the_rule(tmp_path: Path) -> None:
    """SDXL: 9 skip connections + the middle block, the ControlNet sees the UNet's added conditioning,
    and soft injection takes the first 10 of the 13 factors (the middle block gets weight * 0.825^3)."""
    write_tiny_checkpoint(tmp_path / "sd", "sdxl", stem="tiny-xl")
    _, net = write_tiny_controlnet(tmp_path / "cn", "sdxl", "diffusers", stem="cn-xl", gain=GAIN,
                                   hint_gain=HINT_GAIN)
    registry = ModelRegistry([tmp_path / "sd"], [], CPU, HashCache(None))
    env = SimpleNamespace(registry=registry, controlnets=ControlNetRegistry([tmp_path / "cn"]), net=net,
                          model=registry.load("tiny-xl"), checkpoint="tiny-xl")
    _, calls = run(env, unit(model="cn-xl", weight=1.5, control_mode="ControlNet is more important"), steps=1)
    call = calls[0]
    assert len(call["down"]) == 9
    hint = torch.from_numpy(np.asarray(square_map(), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        down, mid = net(call["x"], call["t"], encoder_hidden_states=call["context"], controlnet_cond=hint,
                        added_cond_kwargs=call["added"], return_dict=False)
    for i, (got, raw) in enumerate(zip([*call["down"], call["mid"]], [*down, mid], strict=True)):
        want = torch.cat([torch.zeros_like(raw[:1]), raw[1:] * (1.5 * 0.825 ** (12 - i))])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_inpaint_only_uses_the_tabs_picture_and_mask(env: SimpleNamespace) -> None:
    """In the inpaint tab inpaint_only falls back to 'inpaint' (as the extension) and its hint is the
    input picture with -1 where the tab's mask (blurred as A1111 does, then > 127) marks the area."""
    picture = Image.new("RGB", (SIZE, SIZE), (255, 51, 0))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, 24, SIZE))
    hints: list[torch.Tensor] = []
    file = env.controlnets.find("cn-sd1")
    net = env.controlnets.load(file, env.model.arch, "tiny", torch.device("cpu"), torch.float32).model
    handle = net.register_forward_pre_hook(lambda m, a, k: hints.append(k["controlnet_cond"].clone()),
                                           with_kwargs=True)
    try:
        _, calls = run(env, unit(module="inpaint_only", image=None), kind=InpaintParams, init_image=picture,
                       mask=mask, mask_blur=0, denoising_strength=0.8, steps=2)
    finally:
        handle.remove()
    assert hints and all(c["down"] is not None for c in calls)
    hint = hints[0][0]
    assert (hint[:, :, :24] == -1).all()
    colour = torch.tensor([1.0, 0.2, 0.0])[:, None, None].expand(3, SIZE, SIZE - 24)
    torch.testing.assert_close(hint[:, :, 24:], colour)


def test_batch_images_equal_their_single_runs(env: SimpleNamespace) -> None:
    """With two images the CFG batch is [uncond, uncond, cond, cond]: 'ControlNet is more important'
    must zero both unconditional ones, so each image is the one made alone with its seed."""
    control = unit(control_mode="ControlNet is more important")
    params = {"prompt": "a red circle", "sampler": "Euler", "steps": 3, "seed": SEED, "width": SIZE,
              "height": SIZE, "save": False, "checkpoint": "tiny", "controlnet_units": (control,)}
    batch = generate(Txt2ImgParams(**params, batch_size=2), env.registry, controlnets=env.controlnets).images
    second = generate(Txt2ImgParams(**{**params, "seed": SEED + 1}), env.registry, controlnets=env.controlnets)
    first = generate(Txt2ImgParams(**params), env.registry, controlnets=env.controlnets)
    for got, alone in zip(batch, (first.images[0], second.images[0]), strict=True):
        assert np.abs(np.asarray(got, dtype=np.int16) - np.asarray(alone, dtype=np.int16)).max() <= 1


def test_shuffle_controlnet_is_pooled(env: SimpleNamespace, tmp_path: Path) -> None:
    """A ControlNet named like lllyasviel's shuffle model: conditional half only, each output averaged
    over the picture after scaling (the extension's global average pooling)."""
    _, net = write_tiny_controlnet(tmp_path, "sd1", "ldm_prefixed", stem="tiny_shuffle", gain=GAIN,
                                   hint_gain=HINT_GAIN)
    pooled_env = SimpleNamespace(**{**vars(env), "controlnets": ControlNetRegistry([tmp_path]), "net": net})
    _, calls = run(pooled_env, unit(model="tiny_shuffle", weight=0.6), steps=1)
    call = calls[0]
    for got, raw in zip([*call["down"], call["mid"]], raw_outputs(pooled_env, call), strict=True):
        want = torch.cat([torch.zeros_like(raw[:1]), raw[1:] * 0.6]).mean(dim=(2, 3), keepdim=True)
        assert got.shape[-2:] == (1, 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_inpaint_only_with_its_own_mask_keeps_the_picture_outside(env: SimpleNamespace) -> None:
    """txt2img with an inpaint_only unit: outside the mask (and its 7-pixel soft seam) the result is the
    control picture itself; inside, something new is drawn."""
    picture = Image.new("RGB", (SIZE, SIZE), (200, 120, 40))
    ImageDraw.Draw(picture).ellipse([36, 20, 56, 40], fill=(20, 40, 220))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, 24, SIZE))
    image, calls = run(env, unit(module="inpaint_only", image=picture, mask=mask), steps=3)
    kept = np.asarray(picture, dtype=np.int16)
    assert np.array_equal(image[:, 34:], kept[:, 34:])  # 24 + dilation 3 + blur 3, and a margin
    assert np.abs(image[:, :20] - kept[:, :20]).mean() > 10


def test_detected_maps_are_saved_beside_the_pictures(env: SimpleNamespace, tmp_path: Path) -> None:
    params = Txt2ImgParams(prompt="a red circle", sampler="Euler", steps=1, seed=SEED, width=SIZE, height=SIZE,
                           save=True, checkpoint="tiny",
                           controlnet_units=(unit(module="canny"), unit(module="invert", save_detected_map=False)))
    result = generate(params, env.registry, tmp_path, controlnets=env.controlnets)
    assert len(result.paths) == 1 and len(result.map_paths) == 1  # only the unit that keeps its map
    saved = result.map_paths[0]
    assert saved.parent == result.paths[0].parent and saved.name.endswith(f"{SEED}-controlnet-map-0.png")
    with Image.open(saved) as picture:
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(result.detected_maps[0].convert("RGB")))
