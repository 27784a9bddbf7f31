"""ControlNet files: discovery, safe reading, layout and family detection, strict loading, exact round trips,
and the fit with the loaded checkpoint."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors.torch import load_file, save_file

from modules.controlnet.compat import check_compatible, fit_to_checkpoint
from modules.controlnet.discovery import controlnet_dirs, find_controlnet, list_controlnets
from modules.controlnet.keys import build_controlnet, controlnet_key_rules
from modules.controlnet.load import (
    controlnet_state_from_file,
    controlnet_to_ldm,
    load_controlnet,
    save_controlnet,
)
from modules.controlnet.spec import controlnet_config_from_params, describe_controlnet
from modules.errors import UserError
from modules.models.arch import load_ldm_config, parse_ldm_config
from modules.models.detect import CONFIG_DIR
from tests.tiny_controlnets import KINDS, LAYOUTS, TINY_PARAMS, cldm_yaml, file_state, write_tiny_controlnet
from tests.tiny_models import REPO, tiny_config

REFS = REPO.parent / "shared" / "refs"

# The published ControlNet constructor arguments (lllyasviel/ControlNet models/cldm_v15.yaml and
# cldm_v21.yaml), and SDXL's encoder as in configs/sd_xl_base.yaml: facts of the released models.
_PUBLISHED = {"image_size": 32, "in_channels": 4, "hint_channels": 3, "model_channels": 320,
              "num_res_blocks": 2, "use_spatial_transformer": True, "use_checkpoint": True, "legacy": False}
CLDM_V15 = {**_PUBLISHED, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4], "num_heads": 8,
            "transformer_depth": 1, "context_dim": 768}
CLDM_V21 = {**_PUBLISHED, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4],
            "num_head_channels": 64, "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024}
CLDM_XL = {**_PUBLISHED, "attention_resolutions": [4, 2], "channel_mult": [1, 2, 4], "num_head_channels": 64,
           "use_linear_in_transformer": True, "transformer_depth": [1, 2, 10], "context_dim": 2048,
           "adm_in_channels": 2816}


def _sd15_manifest() -> dict[str, tuple[int, ...]]:
    path = REFS / "controlnet-sd15_keys.json"
    if not path.exists():
        pytest.skip(f"reference manifest {path} not available")
    return {k: tuple(v[0]) for k, v in json.loads(path.read_text())["keys"].items()}


def _meta_state(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}


# ------------------------------------------------------------------------------ the reference layout

def test_full_size_sd15_export_reproduces_reference_manifest() -> None:
    family, config = controlnet_config_from_params(CLDM_V15)
    assert family == "sd1"
    info = describe_controlnet(_sd15_manifest(), "control_v11p_sd15_canny.pth", None)
    model = build_controlnet(config, "meta")
    exported = {k: tuple(v.shape) for k, v in controlnet_to_ldm(model.state_dict(), info).items()}
    assert exported == _sd15_manifest()


def test_file_with_manifest_keys_fills_every_parameter() -> None:
    manifest = _sd15_manifest()
    info = describe_controlnet(manifest, "control_v11p_sd15_canny.safetensors")
    assert (info.family, info.layout, info.hint_channels, info.context_dim) == ("sd1", "ldm_prefixed", 3, 768)
    # what the published cldm_v15.yaml says, with 8 heads (SD 1.x's count) guessed
    assert info.config == controlnet_config_from_params(CLDM_V15)[1] and info.heads_guessed
    state = _meta_state(manifest)
    converted = controlnet_state_from_file(state, info)
    model = build_controlnet(info.config, "meta")
    assert set(converted) == set(model.state_dict())
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # diffusers' own single-file converter (an independent implementation) pairs the same tensors
    reference = convert_controlnet_checkpoint(state, info.config)
    assert set(reference) == set(converted)
    assert all(reference[k] is converted[k] for k in converted)


@pytest.mark.parametrize("params,family", [(CLDM_V15, "sd1"), (CLDM_V21, "sd2"), (CLDM_XL, "sdxl")])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_detection_from_full_size_keys_equals_the_published_config(params: dict, family: str, layout: str) -> None:
    expected_family, config = controlnet_config_from_params(params)
    assert expected_family == family
    state = build_controlnet(config, "meta").state_dict()
    if layout != "diffusers":
        prefix = "control_model." if layout == "ldm_prefixed" else ""
        state = {prefix + r.ldm_key: state[r.hf_keys[0]] for r in controlnet_key_rules(config)}
    info = describe_controlnet({k: tuple(v.shape) for k, v in state.items()}, f"cn-{family}.safetensors")
    assert (info.family, info.layout) == (family, layout)
    assert info.config == config


# --------------------------------------------------------------------------- tiny files, every layout

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_layout_loads_fully_and_round_trips_exactly(tmp_path: Path, kind: str, layout: str) -> None:
    path, original = write_tiny_controlnet(tmp_path, kind, layout, seed=5)
    loaded = load_controlnet(path)
    assert (loaded.info.family, loaded.info.layout, loaded.info.hint_channels) == (kind, layout, 3)
    assert loaded.info.config_source == "detected from the keys"
    expected = original.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    assert not any(p.is_meta for p in loaded.model.parameters())
    # export: lllyasviel's layout with the prefix, bit for bit the file's tensors under their LDM names
    saved = load_file(str(save_controlnet(loaded.model, loaded.info, tmp_path / "again.safetensors")))
    written = file_state(original, loaded.info, "ldm_prefixed")
    assert saved.keys() == written.keys()
    for key in written:
        assert torch.equal(saved[key], written[key]), key
    again = load_controlnet(tmp_path / "again.safetensors")
    assert again.info.layout == "ldm_prefixed" and again.info.config == loaded.info.config
    if layout != "diffusers":  # diffusers' converter reads the LDM layout: it must agree with ours
        reference = convert_controlnet_checkpoint(load_file(str(path)), loaded.info.config)
        for key, tensor in reference.items():
            assert torch.equal(tensor, got[key]), key


@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
def test_pickled_files_and_fp16_load(tmp_path: Path, suffix: str) -> None:
    path, original = write_tiny_controlnet(tmp_path, "sd1", suffix=suffix, dtype=torch.float16)
    loaded = load_controlnet(path, dtype=torch.float32)
    weight = loaded.model.controlnet_mid_block.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, original.controlnet_mid_block.weight.half().float())


def test_loaded_tiny_controlnet_runs(tmp_path: Path) -> None:
    path, _ = write_tiny_controlnet(tmp_path, "sd1")
    model = load_controlnet(path).model
    with torch.no_grad():
        out = model(torch.randn(1, 4, 8, 8), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, 32),
                    controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)
    down, mid = out
    # one residual per UNet skip connection: conv_in + 4 levels × 2 res blocks + 3 downsamplers
    assert len(down) == 12 and mid.shape == (1, 64, 1, 1)
    assert all(torch.isfinite(t).all() for t in (*down, mid))


# ------------------------------------------------------------------------------------ .yaml and errors

def test_yaml_beside_the_file_wins_over_detection(tmp_path: Path) -> None:
    detected = load_controlnet(write_tiny_controlnet(tmp_path / "a", "sd1", stem="cn")[0]).info
    # 32 channels: detection guesses SD 1.x's 8 heads; the yaml says 2
    assert detected.config["attention_head_dim"] == (8, 8, 8, 8) and detected.heads_guessed
    path, _ = write_tiny_controlnet(tmp_path / "b", "sd1", stem="cn", with_yaml=True)
    info = load_controlnet(path).info
    assert info.config["attention_head_dim"] == (2, 2, 2, 2) and not info.heads_guessed
    assert info.config_source == "config cn.yaml beside the file"
    # a yaml that does not belong to the file: its error names the keys and the yaml
    path.with_suffix(".yaml").write_text(cldm_yaml(TINY_PARAMS["sd1"] | {"model_channels": 64}))
    with pytest.raises(UserError, match=r"cn\.safetensors.*shape.*\.yaml beside it"):
        load_controlnet(path)
    path.with_suffix(".yaml").write_text("model: {params: {something: 1}}")
    with pytest.raises(UserError, match=r"cn\.yaml is not in lllyasviel's cldm format"):
        load_controlnet(path)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # runs on unpickling: what a malicious model file does
        return (Path.touch, (Path(self.marker),))


def test_hostile_pth_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "models" / "ControlNet"
    folder.mkdir(parents=True)
    evil = folder / "control_evil.pth"
    state = {"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}
    torch.save({"state_dict": state, "payload": _Payload(str(marker))}, evil)
    (folder / "plain_pickle.pth").write_bytes(pickle.dumps(_Payload(str(marker))))
    files = list_controlnets(controlnet_dirs(tmp_path))
    assert [f.name for f in files] == ["control_evil.pth", "plain_pickle.pth"]
    for f in files:
        with pytest.raises(UserError, match=f"{f.path.name}.*could run code"):
            load_controlnet(f.path)
    assert not marker.exists()


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    path, _ = write_tiny_controlnet(tmp_path, "sd1", stem="odd")
    state = load_file(str(path))
    del state["control_model.zero_convs.3.0.weight"]
    state["control_model.something_new.weight"] = torch.zeros(2)
    # a v1.0 release carries the whole SD model beside the ControlNet: that part is skipped
    state["model.diffusion_model.out.2.weight"] = torch.zeros(2)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(UserError) as info:
        load_controlnet(path)
    message = str(info.value)
    assert "odd.safetensors" in message and "SD 1.x ControlNet" in message
    assert "control_model.zero_convs.3.0.weight" in message
    assert "control_model.something_new.weight" in message
    assert "model.diffusion_model" not in message and "position_ids" not in message
    del state["control_model.something_new.weight"]
    state["control_model.zero_convs.3.0.weight"] = torch.zeros(32, 32, 1, 1)
    save_file(state, str(path))
    assert load_controlnet(path).info.layout == "ldm_prefixed"


def test_files_that_are_not_controlnets_name_the_file(tmp_path: Path) -> None:
    lora = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.tensor(1.0)}, str(lora))
    with pytest.raises(UserError, match="some_lora.safetensors is not a ControlNet in a known layout"):
        load_controlnet(lora)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(write_tiny_controlnet(tmp_path, "sd1")[0].read_bytes()[:5000])
    with pytest.raises(UserError, match="cut.safetensors"):
        load_controlnet(cut)


# ------------------------------------------------------------------------------ fit with the checkpoint

def test_sdxl_controlnet_with_sd15_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    info = load_controlnet(write_tiny_controlnet(tmp_path, "sdxl", stem="cn-xl")[0]).info
    sd15 = load_ldm_config(CONFIG_DIR / "v1-inference.yaml")
    with pytest.raises(UserError, match=r"ControlNet 'cn-xl' is for SDXL but the loaded checkpoint "
                                        r"'v1-5-pruned' is SD 1\.x"):
        check_compatible(info, sd15, "v1-5-pruned")
    sd15_cn = describe_controlnet(_sd15_manifest(), "control_v11p_sd15_canny.pth")
    check_compatible(sd15_cn, sd15)
    with pytest.raises(UserError, match="is for SD 1.x but the loaded checkpoint is SD 2.x"):
        check_compatible(sd15_cn, load_ldm_config(CONFIG_DIR / "v2-inference.yaml"))


def test_same_family_other_widths_is_an_error_and_heads_come_from_the_checkpoint(tmp_path: Path) -> None:
    info = load_controlnet(write_tiny_controlnet(tmp_path, "sd1", stem="tiny-cn")[0]).info
    with pytest.raises(UserError, match=r"'tiny-cn' does not fit the loaded checkpoint 'big'.*level widths"):
        check_compatible(info, load_ldm_config(CONFIG_DIR / "v1-inference.yaml"), "big")
    for kind, checkpoint_kind in (("sd1", "sd1"), ("sd2", "sd2-v"), ("sdxl", "sdxl")):
        arch = parse_ldm_config(tiny_config(checkpoint_kind))
        guessed = load_controlnet(write_tiny_controlnet(tmp_path / kind, kind)[0]).info
        fitted = fit_to_checkpoint(guessed, arch)
        assert fitted.config["attention_head_dim"] == tuple(arch.unet["attention_head_dim"])
        assert not fitted.heads_guessed


# ------------------------------------------------------------------------------------------ discovery

def _legacy_hash(path: Path) -> str:
    # A1111's model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits
    return hashlib.sha256(path.read_bytes()[0x100000:0x110000]).hexdigest()[:8]


def test_discovery_lists_subfolders_and_extra_dir_and_skips_annotators(tmp_path: Path) -> None:
    data, extra = tmp_path / "data", tmp_path / "elsewhere"
    root = data / "models" / "ControlNet"
    write_tiny_controlnet(root, "sd1", stem="Control_Canny")
    write_tiny_controlnet(root / "xl", "sdxl", stem="cn-xl", suffix=".ckpt")
    write_tiny_controlnet(root / "annotators", "sd1", stem="not-a-controlnet", suffix=".pth")
    (root / "notes.txt").write_text("not a model")
    (root / "Control_Canny.yaml").write_text(cldm_yaml(TINY_PARAMS["sd1"]))
    write_tiny_controlnet(extra, "sd2", stem="from-extra", suffix=".pth")
    files = list_controlnets(controlnet_dirs(data, extra))
    assert [f.name for f in files] == ["Control_Canny.safetensors", "from-extra.pth", "xl/cn-xl.ckpt"]
    assert list_controlnets(controlnet_dirs(data)) == [f for f in files if f.root == root]
    canny = files[0]
    assert canny.title() == f"Control_Canny [{_legacy_hash(canny.path)}]"
    assert canny.config == root / "Control_Canny.yaml"
    assert find_controlnet(files, canny.title()) == canny
    assert find_controlnet(files, "control_canny [00000000]") == canny  # another copy's hash
    assert find_controlnet(files, "xl/cn-xl") == files[2]
    assert find_controlnet(files, "None") is None and find_controlnet(files, "missing") is None
