"""Checkpoint layer: layouts against the reference manifests, strict loading, round trips, safety."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.errors import CheckpointError
from modules.models.arch import load_ldm_config
from modules.models.build import build_empty
from modules.models.convert import ldm_to_modules, modules_to_ldm
from modules.models.detect import CONFIG_DIR, detect_config, is_v_prediction
from modules.models.load import load_checkpoint, load_vae_file, read_state_dict, save_checkpoint
from tests.tiny_models import CPU, KINDS, REPO, build_random_model, write_tiny_checkpoint

REFS = REPO.parent / "shared" / "refs"
MANIFESTS = {
    "sd1": "v1-inference", "sd1-inpainting": "v1-inpainting-inference",
    "sd2v": "v2-inference-v", "sdxl": "sd_xl_base",
}


def _manifest(name: str) -> dict[str, list[int]]:
    path = REFS / f"{name}_keys.json"
    if not path.exists():
        pytest.skip(f"reference manifest {path} not available")
    return {k: v[0] for k, v in json.loads(path.read_text())["keys"].items()}


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_full_size_export_reproduces_reference_layout(name: str) -> None:
    arch = load_ldm_config(CONFIG_DIR / f"{MANIFESTS[name]}.yaml")
    modules = build_empty(arch, "meta")
    exported = modules_to_ldm({k: m.state_dict() for k, m in modules.items()}, arch)
    assert {k: list(v.shape) for k, v in exported.items()} == _manifest(name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("name", list(MANIFESTS))
def test_file_with_manifest_keys_fills_every_parameter(name: str, dtype: torch.dtype) -> None:
    manifest = _manifest(name)
    # Meta tensors: the real shapes without the memory; int64 where the release has ints.
    state = {k: torch.empty(s, dtype=torch.int64 if k.endswith("position_ids") else dtype, device="meta")
             for k, s in manifest.items()}
    shapes = {k: tuple(s) for k, s in manifest.items()}
    config, _ = detect_config(shapes, f"{name}.safetensors" if name != "sd2v" else "768-v-ema.ckpt")
    assert config.name == MANIFESTS[name] + ".yaml"
    arch = load_ldm_config(config)
    converted, extras = ldm_to_modules(state, arch)
    modules = build_empty(arch, "meta")
    for module_name, module in modules.items():
        expected = module.state_dict()
        assert set(converted[module_name]) == {k for k in expected if not k.endswith("position_ids")}
        for key, tensor in converted[module_name].items():
            assert tuple(tensor.shape) == tuple(expected[key].shape), key
        result = module.load_state_dict(converted[module_name], strict=False, assign=True)
        assert [k for k in result.missing_keys if not k.endswith("position_ids")] == []
    assert len(extras) > 0


def test_ema_and_optional_keys(tmp_path: Path) -> None:
    model = build_random_model("sd1")
    state = modules_to_ldm(model.module_states(), model.arch)
    state["model_ema.decay"] = torch.tensor(0.999)
    state["model_ema.diffusion_modelinput_blocks00weight"] = state["model.diffusion_model.input_blocks.0.0.weight"]
    del state["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    converted, extras = ldm_to_modules(state, model.arch)
    assert "model_ema.decay" not in extras
    assert torch.equal(converted["unet"]["conv_in.weight"], state["model.diffusion_model.input_blocks.0.0.weight"])


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_round_trip_is_exact(tmp_path: Path, kind: str) -> None:
    original = build_random_model(kind, seed=3)
    path = write_tiny_checkpoint(tmp_path, kind, seed=3)
    first = load_file(str(path))
    loaded = load_checkpoint(path, CPU)
    assert loaded.config_reason.startswith("config tiny-")
    for name, state in original.module_states().items():
        reloaded = loaded.module_states()[name]
        for key, tensor in state.items():
            assert torch.equal(tensor, reloaded[key]), (name, key)
    again = load_file(str(save_checkpoint(loaded, tmp_path / "again.safetensors")))
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    if kind == "sd1-inpainting":
        assert loaded.unet.config.in_channels == 9 and loaded.arch.is_inpainting
    if kind == "sd2-v":
        assert loaded.arch.prediction_type == "v_prediction"
    if kind == "sdxl":
        assert loaded.unet.config.addition_embed_type == "text_time"


def test_fp16_file_loads_into_fp32(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path, "sd1", dtype=torch.float16)
    model = load_checkpoint(path, CPU)
    assert next(model.unet.parameters()).dtype == torch.float32
    assert load_file(str(path))["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_ckpt_wrapper_loads_like_safetensors(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path, "sd1", stem="m")
    state = load_file(str(path))
    ckpt = tmp_path / "m2.ckpt"
    torch.save({"state_dict": state, "global_step": 470000, "epoch": 3}, ckpt)
    (tmp_path / "m2.yaml").write_text((tmp_path / "m.yaml").read_text())
    a, b = load_checkpoint(path, CPU), load_checkpoint(ckpt, CPU)
    assert torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # runs on unpickling: what a malicious checkpoint does
        return (Path.touch, (Path(self.marker),))


def test_code_executing_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="evil.ckpt.*could run code"):
        read_state_dict(evil)
    assert not marker.exists()
    plain_pickle = tmp_path / "plain.ckpt"
    plain_pickle.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="plain.ckpt"):
        read_state_dict(plain_pickle)
    assert not marker.exists()


def test_truncated_and_foreign_files_name_the_file(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path, "sd1", stem="whole")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(cut, CPU)
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a model")
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        load_checkpoint(text, CPU)
    lora_like = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.tensor(1.0)}, str(lora_like))
    with pytest.raises(CheckpointError, match="lora.safetensors.*no Stable Diffusion UNet"):
        load_checkpoint(lora_like, CPU)


def test_wrong_layout_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path, "sd1", stem="odd")
    state = load_file(str(path))
    del state["model.diffusion_model.out.2.weight"]
    state["model.diffusion_model.something_new.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, CPU)
    message = str(info.value)
    assert "odd.safetensors" in message
    assert "model.diffusion_model.out.2.weight" in message
    assert "model.diffusion_model.something_new.weight" in message


def test_sd2_prediction_heuristic() -> None:
    assert is_v_prediction("768-v-ema.ckpt")
    assert is_v_prediction("v2-1_768-ema-pruned.safetensors")
    assert not is_v_prediction("512-base-ema.ckpt")
    assert not is_v_prediction("v2-1_512-ema-pruned.safetensors")
    assert not is_v_prediction("my-2.1-model.safetensors")
    assert is_v_prediction("anything.safetensors", {"modelspec.prediction_type": "v"})
    assert not is_v_prediction("768-v.safetensors", {"modelspec.prediction_type": "epsilon"})


def test_yaml_beside_checkpoint_wins_over_detection(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path, "sd2-v", stem="768-v-ema")
    model = load_checkpoint(path, CPU)
    assert model.arch.prediction_type == "v_prediction"
    assert model.config_reason == "config 768-v-ema.yaml beside the checkpoint"


def test_separate_vae_file_replaces_the_vae_of_a_lowvram_model(tmp_path: Path) -> None:
    # --lowvram keeps meta tensors in the modules; the file must land in the hooks' CPU copy.
    path = write_tiny_checkpoint(tmp_path, "sd1", seed=1)
    plain, low = load_checkpoint(path, CPU), load_checkpoint(path, replace(CPU, offload="lowvram"))
    donor = modules_to_ldm(build_random_model("sd1", seed=2).module_states(), plain.arch)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in donor.items()
               if k.startswith("first_stage_model.")}, str(tmp_path / "vae.safetensors"))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = low.vae.decode(z).sample
        for model in (plain, low):
            load_vae_file(tmp_path / "vae.safetensors", model)
        after_plain, after_low = plain.vae.decode(z).sample, low.vae.decode(z).sample
    assert next(low.vae.parameters()).device == torch.device("meta")
    torch.testing.assert_close(after_low, after_plain)
    assert (after_low - before).abs().max() > 1e-3


def test_separate_vae_file_replaces_vae(tmp_path: Path) -> None:
    model = load_checkpoint(write_tiny_checkpoint(tmp_path, "sd1", seed=1), CPU)
    donor = modules_to_ldm(build_random_model("sd1", seed=2).module_states(), model.arch)
    vae_state = {k.removeprefix("first_stage_model."): v for k, v in donor.items() if k.startswith("first_stage_model.")}
    vae_state["loss.discriminator.main.0.weight"] = torch.zeros(1)  # released VAE .ckpt files carry these
    torch.save({"state_dict": vae_state}, tmp_path / "vae.pt")
    load_vae_file(tmp_path / "vae.pt", model)
    expected = donor["first_stage_model.decoder.mid.attn_1.q.weight"].reshape(64, 64)
    assert torch.equal(model.vae.decoder.mid_block.attentions[0].to_q.weight, expected)
    with pytest.raises(CheckpointError, match="not a VAE"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        load_vae_file(tmp_path / "bad.safetensors", model)


@pytest.mark.parametrize("kind", KINDS)
def test_one_denoising_step_end_to_end(tmp_path: Path, kind: str) -> None:
    model = load_checkpoint(write_tiny_checkpoint(tmp_path, kind), CPU)
    ids = torch.tensor([[49406, 320, 736, 49407] + [49407] * 73])
    contexts, pooled = [], None
    with torch.no_grad():
        for spec, enc in zip(model.arch.text_encoders, model.text_encoders, strict=True):
            out = enc(ids, output_hidden_states=True)
            contexts.append(out.hidden_states[-spec.layer_from_end])
            if spec.projection:
                pooled = out.text_embeds
        context = torch.cat(contexts, dim=-1)
        in_ch = model.unet.config.in_channels
        latents = torch.randn(1, in_ch, 8, 8, generator=torch.Generator().manual_seed(0))
        extra = {}
        if model.arch.is_sdxl:
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64.0]])}
        eps = model.unet(latents, torch.tensor([999]), encoder_hidden_states=context, **extra).sample
        image = model.vae.decode((latents[:, :4] - eps) / model.arch.scale_factor).sample
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
