"""Speed and memory paths give the pictures of the plain path: precision policy, memory-mapped
loading, --medvram / --lowvram offloading (accelerate hooks with the CPU as execution device),
channels-last, tiled VAE decoding, freeing on checkpoint switch. No timings here: those are
scripts/benchmark.py's job."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

from modules.devices import (
    SMALL_MODEL_PARAMS,
    DevicePolicy,
    configure_threads,
    cpu_has_bf16,
    execution_device,
)
from modules.models import placement
from modules.models.convert import ldm_to_modules
from modules.models.discovery import HashCache
from modules.models.load import load_checkpoint, read_state_dict
from modules.models.registry import DEFAULT_MODEL_STEM, ModelRegistry
from modules.networks.lora import layer_table
from modules.processing.params import Txt2ImgParams
from modules.processing.run import decode_latents, encode_image, generate
from modules.training.default_model.judge import judge
from tests.tiny_models import REPO, write_tiny_checkpoint

DEFAULT_MODEL = REPO / "models" / "Stable-diffusion" / f"{DEFAULT_MODEL_STEM}.safetensors"
PLAIN = DevicePolicy.cpu()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("speed"), "sd1")


def _image(path: Path, policy: DevicePolicy, **kw) -> np.ndarray:
    registry = ModelRegistry([path.parent], [], policy, HashCache(None))
    registry.load(registry.find(path.name))
    return _generate(registry, **kw)


def _generate(registry: ModelRegistry, lora_dir: Path | None = None, **kw) -> np.ndarray:
    kw = {"prompt": "a red circle on a blue background", "negative_prompt": "green", "steps": 6,
          "seed": 7, "save": False, **kw}
    return _arr(generate(Txt2ImgParams(**kw), registry, lora_dir=lora_dir).images[0])


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------------------ policy

def test_precision_policy_on_the_cpu() -> None:
    auto = DevicePolicy.from_flags("cpu")
    assert auto.dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    for forced in (DevicePolicy.from_flags("cpu", no_half=True), DevicePolicy.from_flags("cpu", precision="full"),
                   DevicePolicy.from_flags("cpu", precision="bf16", no_half=True)):
        assert (forced.dtype, forced.vae_dtype) == (torch.float32, torch.float32)
        assert forced.for_model(10 * SMALL_MODEL_PARAMS).dtype == torch.float32
    assert DevicePolicy.from_flags("cpu", precision="bf16").dtype == torch.bfloat16
    assert DevicePolicy.from_flags("cpu", precision="bf16", no_half_vae=True).vae_dtype == torch.float32
    # Tests and scripts that build DevicePolicy.cpu() keep fp32 whatever the CPU can do.
    assert PLAIN.dtype == PLAIN.vae_dtype == torch.float32 and not PLAIN.channels_last
    # Small models (the embedded one) stay fp32 under "auto"; full-size ones follow the policy.
    capable = replace(DevicePolicy.cpu(torch.bfloat16), small_model_fp32=True)
    assert capable.for_model(SMALL_MODEL_PARAMS - 1).dtype == torch.float32
    assert capable.for_model(SMALL_MODEL_PARAMS).dtype == torch.bfloat16
    # An explicit --precision bf16 applies to small models too.
    assert DevicePolicy.from_flags("cpu", precision="bf16").for_model(1000).dtype == torch.bfloat16


def test_threads_follow_the_cpu_set() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert 1 <= configure_threads() <= max(1, before)
    finally:
        torch.set_num_threads(before)


def test_default_model_loads_fp32_under_auto_policy() -> None:
    model = load_checkpoint(DEFAULT_MODEL, DevicePolicy.from_flags("cpu"))
    assert next(model.unet.parameters()).dtype == torch.float32
    assert next(model.vae.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------------------------ loading

def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path.resolve())):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def test_mmap_loading_gives_identical_weights_without_a_copy(tiny: Path) -> None:
    state, _ = read_state_dict(tiny)
    with safe_open(str(tiny), framework="pt") as f:
        for key in list(state)[:50]:
            assert torch.equal(state[key], f.get_tensor(key))
    model = load_checkpoint(tiny, PLAIN)
    expected, _ = ldm_to_modules(dict(state), model.arch, source=tiny.name)
    for name, module in (("unet", model.unet), ("vae", model.vae), ("text_encoder_0", model.text_encoders[0])):
        loaded = module.state_dict()
        for key, value in expected[name].items():
            assert torch.equal(loaded[key], value), key
    if Path("/proc/self/maps").is_file():
        # The fp32 file into an fp32 model: the weights are the mapped file pages, not a second copy.
        ranges = _mapped_ranges(tiny)
        weight = model.unet.conv_in.weight
        assert any(lo <= weight.data_ptr() < hi for lo, hi in ranges), "UNet weights were copied out of the map"


def test_bf16_loading_casts_each_weight(tiny: Path) -> None:
    model = load_checkpoint(tiny, DevicePolicy.cpu(torch.bfloat16))
    reference = load_checkpoint(tiny, PLAIN)
    for (key, a), (_, b) in zip(model.unet.state_dict().items(), reference.unet.state_dict().items(), strict=True):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b.to(torch.bfloat16)), key


def test_switching_checkpoints_frees_the_previous_one(tmp_path: Path) -> None:
    first = write_tiny_checkpoint(tmp_path, "sd1", stem="first", seed=1)
    write_tiny_checkpoint(tmp_path, "sd1", stem="second", seed=2)
    registry = ModelRegistry([tmp_path], [], PLAIN, HashCache(None))
    old = weakref.ref(registry.load(registry.find(first.name)).unet)
    registry.load("second")
    gc.collect()
    assert old() is None, "the previous checkpoint's UNet is still alive after switching"


# ------------------------------------------------------------------------------------------ images

@pytest.mark.parametrize("variant", ["full-precision flag", "channels-last", "medvram", "lowvram"])
def test_fp32_variants_give_the_plain_image(tiny: Path, variant: str) -> None:
    policy = {"full-precision flag": DevicePolicy.from_flags("cpu", precision="full"),
              "channels-last": replace(PLAIN, channels_last=True),
              "medvram": replace(PLAIN, offload="medvram"),
              "lowvram": replace(PLAIN, offload="lowvram")}[variant]
    plain = _image(tiny, PLAIN)
    other = _image(tiny, policy)
    assert np.abs(plain - other).max() <= 1, variant


def test_offload_modes_really_install_accelerate_hooks(tiny: Path) -> None:
    medvram = load_checkpoint(tiny, replace(PLAIN, offload="medvram"))
    assert type(medvram.unet._hf_hook).__name__ == "CpuOffload"
    assert execution_device(medvram.unet) == torch.device("cpu")
    lowvram = load_checkpoint(tiny, replace(PLAIN, offload="lowvram"))
    # Sequential offloading keeps the weights aside; the modules hold meta tensors between calls.
    assert next(lowvram.unet.parameters()).device == torch.device("meta")
    assert execution_device(lowvram.unet) == torch.device("cpu")
    assert execution_device(lowvram.text_encoders[0]) == torch.device("cpu")


def test_lora_on_a_lowvram_model_gives_the_plain_models_lora_image(tiny: Path, tmp_path: Path) -> None:
    # --lowvram leaves the parameters on the meta device; the LoRA must be merged into the offloaded
    # copies the hooks load from, and those restored afterwards.
    model = load_checkpoint(tiny, PLAIN)
    layers = ["mid_block.attentions.0.proj_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    g = torch.Generator().manual_seed(11)
    state = {}
    for path in layers:
        weight = layer_table(model)[f"unet.{path}"][0].weight
        name = "lora_unet_" + path.replace(".", "_")
        extra = [1] * (weight.ndim - 2)
        state[f"{name}.lora_down.weight"] = torch.randn(4, weight.shape[1], *extra, generator=g)
        state[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 4, *extra, generator=g)
        state[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(state, str(tmp_path / "strong.safetensors"))
    kw = {"prompt": "a red circle <lora:strong:1>", "lora_dir": tmp_path}
    plain_lora = _image(tiny, PLAIN, **kw)
    lowvram = ModelRegistry([tiny.parent], [], replace(PLAIN, offload="lowvram"), HashCache(None))
    lowvram.load(lowvram.find(tiny.name))
    low_lora = _generate(lowvram, **kw)
    assert np.abs(plain_lora - low_lora).max() <= 1
    assert np.abs(_image(tiny, PLAIN, prompt="a red circle") - plain_lora).max() > 10  # the LoRA does act
    # ... and is gone afterwards: the offloaded weights were restored.
    assert np.abs(_generate(lowvram, prompt="a red circle") - _image(tiny, PLAIN, prompt="a red circle")).max() <= 1
    assert next(lowvram.current().unet.parameters()).device == torch.device("meta")


def test_compile_flag_compiles_the_unet_in_place(tiny: Path) -> None:
    model = load_checkpoint(tiny, replace(PLAIN, compile=True))
    # Compiled lazily on the first call (not run here: compiling takes minutes on a busy CPU).
    assert model.unet._compiled_call_impl is not None
    assert type(model.unet).__name__ == "UNet2DConditionModel"


def test_tiled_decode_matches_the_plain_decode() -> None:
    model = load_checkpoint(DEFAULT_MODEL, PLAIN)
    picture = Image.new("RGB", (384, 384), (40, 60, 200))
    ImageDraw.Draw(picture).ellipse((60, 80, 300, 330), fill=(220, 30, 30))
    latents = encode_image(model, picture)
    plain = _arr(decode_latents(model, latents)[0])
    model.vae.enable_tiling()
    model.vae.tile_sample_min_size, model.vae.tile_latent_min_size = 256, 32  # 4 tiles, blended at the seams
    tiled = _arr(decode_latents(model, latents)[0])
    # Tiles normalise on their own (GroupNorm statistics per tile), so faint seams are expected:
    # the shape and both colours must stay where they were.
    yy, xx = np.mgrid[:384, :384]
    r = ((xx - 180) / 120) ** 2 + ((yy - 205) / 125) ** 2
    for region in (r < 0.8, r > 1.3):
        assert np.abs(plain[region].mean(0) - tiled[region].mean(0)).max() < 30
    assert np.abs(plain - tiled).mean() < 20


def test_large_pictures_tile_automatically(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_checkpoint(DEFAULT_MODEL, PLAIN)
    calls = []
    original = type(model.vae).tiled_decode

    def spy(self, z, *args, **kw):
        calls.append(tuple(z.shape))
        return original(self, z, *args, **kw)

    monkeypatch.setattr(type(model.vae), "tiled_decode", spy)
    latents = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(4))
    decode_latents(model, latents)
    assert calls == []
    monkeypatch.setattr(placement, "AUTO_TILE_LATENT_PIXELS", 32 * 32)
    decode_latents(model, latents)
    assert calls and not model.vae.use_tiling  # tiling was switched on for this decode only


# ------------------------------------------------------------------------------------------ bf16

@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_stays_close_to_fp32_on_the_default_model() -> None:
    bf16 = replace(DevicePolicy.cpu(torch.bfloat16), channels_last=True)
    cases = (("a red circle on a blue background", 11), ("a yellow star on a black background", 12),
             ("a yellow star on a black background", 13), ("a green square on a white background", 14))
    drift = []
    for prompt, seed in cases:
        kw = {"prompt": prompt, "negative_prompt": "", "steps": 20, "seed": seed}
        full, half = _image(DEFAULT_MODEL, PLAIN, **kw), _image(DEFAULT_MODEL, bf16, **kw)
        drift.append(np.abs(full - half).mean())
        a, b = judge(Image.fromarray(full.astype(np.uint8))), judge(Image.fromarray(half.astype(np.uint8)))
        # The colours the prompt asks for survive; the shape is not compared: where the model hesitates
        # between two outlines (seed 12: a six- or a five-pointed star) a small drift picks the other.
        assert (a.foreground, a.background) == (b.foreground, b.background), (a.caption, b.caption)
        if a.centroid and b.centroid:  # ...but it stays where it was, at about its size
            assert np.hypot(a.centroid[0] - b.centroid[0], a.centroid[1] - b.centroid[1]) < 8
            assert abs(a.area - b.area) < 0.25 * a.area
    # bf16 keeps 8 bits of mantissa: over 20 steps pixels drift (mean difference ~1-3 of 255), the
    # picture does not, except where the outline itself was a close call (as above, 17 for seed 12).
    assert sum(d < 12 for d in drift) >= len(cases) - 1, drift


def test_vae_tiling_setting_tiles_every_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import AutoencoderKL

    from modules.context import AppContext, Paths

    calls = []
    original = AutoencoderKL.tiled_decode

    def spy(self, z, *args, **kw):
        calls.append(tuple(z.shape))
        return original(self, z, *args, **kw)

    monkeypatch.setattr(AutoencoderKL, "tiled_decode", spy)
    ctx = AppContext.create(Paths.make(data_dir=tmp_path), PLAIN)
    # 256 px: twice the default model's tile, far below the size that tiles automatically.
    params = Txt2ImgParams(prompt="a red circle", steps=2, width=256, height=256, seed=1, save=False)
    ctx.generate(params)
    assert calls == []
    ctx.options.update({"vae_tiling": True})
    ctx.generate(params)
    assert calls == [(1, 4, 32, 32)] and ctx.registry.current().vae.use_tiling
    ctx.options.update({"vae_tiling": False})
    ctx.generate(params)
    assert len(calls) == 1 and not ctx.registry.current().vae.use_tiling
