"""Checkpoint Merger on tiny checkpoints in the released layouts: the merge rules, the file it
writes, its refusals, and its memory (a subprocess merging large SDXL-named files)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.errors import UserError
from modules.models.discovery import HashCache
from modules.models.load import load_checkpoint
from modules.models.merge import MergeRequest, merge_checkpoints
from modules.processing.params import InpaintParams, Txt2ImgParams
from modules.processing.run import generate
from tests.tiny_models import CPU, write_tiny_checkpoint

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("merge-in")
    return {"a": write_tiny_checkpoint(folder, "sd1", stem="a", seed=1),
            "b": write_tiny_checkpoint(folder, "sd1", stem="b", seed=2),
            "c": write_tiny_checkpoint(folder, "sd1", stem="c", seed=3),
            "inpaint": write_tiny_checkpoint(folder, "sd1-inpainting", stem="inp", seed=4),
            "xl": write_tiny_checkpoint(folder, "sdxl", stem="xl", seed=5, with_yaml=False)}


def _merge(out: Path, **kwargs) -> dict[str, torch.Tensor]:
    path = merge_checkpoints(MergeRequest(**kwargs), out, HashCache(None))
    return load_file(str(path))


def test_weighted_sum_ends_are_a_and_b(models: dict[str, Path], tmp_path: Path) -> None:
    a, b = load_file(str(models["a"])), load_file(str(models["b"]))
    at_zero = _merge(tmp_path, primary=models["a"], secondary=models["b"], multiplier=0.0, custom_name="m0")
    at_one = _merge(tmp_path, primary=models["a"], secondary=models["b"], multiplier=1.0, custom_name="m1")
    assert set(at_zero) == set(a) == set(at_one)
    assert all(torch.equal(at_zero[k], a[k]) for k in a)
    # M = 1 gives B, but the text encoder's position ids stay A's (A1111 never merges them).
    assert all(torch.equal(at_one[k], b[k]) for k in a if k != POSITION_IDS)
    half = _merge(tmp_path, primary=models["a"], secondary=models["b"], multiplier=0.25, custom_name="m25")
    key = "model.diffusion_model.out.2.weight"
    assert torch.allclose(half[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6)


def test_add_difference_of_equal_models_is_a(models: dict[str, Path], tmp_path: Path) -> None:
    a, b, c = (load_file(str(models[k])) for k in "abc")
    same = _merge(tmp_path, primary=models["a"], secondary=models["b"], tertiary=models["b"], method="Add difference",
                  multiplier=0.7, custom_name="same")
    assert all(torch.equal(same[k], a[k]) for k in a)
    diff = _merge(tmp_path, primary=models["a"], secondary=models["b"], tertiary=models["c"], method="Add difference",
                  multiplier=0.5, custom_name="diff")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.allclose(diff[key], a[key] + 0.5 * (b[key] - c[key]), atol=1e-6)


def test_default_names_and_recipe_metadata(models: dict[str, Path], tmp_path: Path) -> None:
    cache = HashCache(None)
    path = merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], multiplier=0.3), tmp_path, cache)
    assert path.name == "0.7(a) + 0.3(b).safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.3
    assert recipe["primary_model_hash"] == cache.sha256(models["a"])
    merged_from = json.loads(metadata["sd_merge_models"])
    assert merged_from[cache.sha256(models["b"])]["name"] == "b.safetensors"
    assert metadata["format"] == "pt"
    diff = merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], tertiary=models["c"],
                                          method="Add difference", multiplier=1), tmp_path, cache)
    assert diff.name == "a + 1(b - c).safetensors"
    # The config beside A comes along ("A, B or C"); "Don't" copies none.
    assert path.with_suffix(".yaml").read_text() == models["a"].with_suffix(".yaml").read_text()
    bare = merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], custom_name="bare",
                                          config_source="Don't"), tmp_path, cache)
    assert not bare.with_suffix(".yaml").exists()


def test_inpainting_model_merge_keeps_its_channels_and_generates(models: dict[str, Path], tmp_path: Path) -> None:
    inp, a, c = (load_file(str(models[k])) for k in ("inpaint", "a", "c"))
    path = merge_checkpoints(MergeRequest(primary=models["inpaint"], secondary=models["a"], tertiary=models["c"],
                                          method="Add difference", multiplier=1.0, custom_name="mix"),
                             tmp_path, HashCache(None))
    assert path.name == "mix.inpainting.safetensors"
    merged = load_file(str(path))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert merged[key].shape[1] == 9
    assert torch.equal(merged[key][:, 4:], inp[key][:, 4:])
    assert torch.allclose(merged[key][:, :4], inp[key][:, :4] + a[key] - c[key], atol=1e-6)
    with pytest.raises(UserError, match="A must be the inpainting model"):
        merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["inpaint"], custom_name="wrong"),
                          tmp_path, HashCache(None))
    # The result is a working inpainting model.
    from modules.models.registry import ModelRegistry

    registry = ModelRegistry([tmp_path], [], CPU, HashCache(None))
    assert load_checkpoint(path, CPU).arch.is_inpainting
    from PIL import Image

    picture = Image.new("RGB", (64, 64), (40, 90, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = generate(InpaintParams(prompt="x", steps=2, seed=1, checkpoint=registry.find(path.name).name,
                                    init_image=picture, mask=mask, save=False), registry)
    assert result.images[0].size == (64, 64)
    assert result.images[0].getpixel((2, 2)) == (40, 90, 200)  # outside the mask nothing changes


def test_refusals_before_any_work(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"different architectures.*a.safetensors is SD 1.x, xl.safetensors is SDXL"):
        merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["xl"]), tmp_path, HashCache(None))
    with pytest.raises(UserError, match="needs a tertiary model"):
        merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], method="Add difference"),
                          tmp_path, HashCache(None))
    with pytest.raises(UserError, match="not a regular expression"):
        merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], discard_weights="("),
                          tmp_path, HashCache(None))
    assert not list(tmp_path.iterdir())
    first = merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], custom_name="keep"), tmp_path,
                              HashCache(None))
    before = first.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], custom_name="keep",
                                       multiplier=0.9), tmp_path, HashCache(None))
    assert first.read_bytes() == before
    merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], custom_name="keep", multiplier=0.9,
                                   overwrite=True), tmp_path, HashCache(None))
    assert first.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_half_discard_bake_vae_and_ckpt(models: dict[str, Path], tmp_path: Path) -> None:
    b = load_file(str(models["b"]))
    vae = {k[len("first_stage_model."):]: v for k, v in b.items() if k.startswith("first_stage_model.")}
    vae_file = tmp_path / "vae.safetensors"
    save_file(vae, str(vae_file))
    out = tmp_path / "out"
    merged = _merge(out, primary=models["a"], method="No interpolation", save_as_half=True, bake_in_vae=vae_file,
                    discard_weights=r"^model_ema\.|position_ids", custom_name="half")
    assert POSITION_IDS not in merged
    assert all(v.dtype == torch.float16 for k, v in merged.items() if v.is_floating_point())
    key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(merged[key], b[key].half())
    ckpt = merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], multiplier=0.0,
                                          checkpoint_format="ckpt", custom_name="old"), out, HashCache(None))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    a = load_file(str(models["a"]))
    assert set(state) == set(a) and all(torch.equal(state[k], a[k]) for k in a)
    assert load_checkpoint(ckpt, CPU) is not None


_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import torch
    from modules.models.discovery import HashCache
    from modules.models.merge import MergeRequest, merge_checkpoints
    torch.ones(1) + 1  # libraries loaded before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = Path(sys.argv[1])
    merge_checkpoints(MergeRequest(primary=folder / "a.safetensors", secondary=folder / "b.safetensors",
                                   multiplier=0.5, custom_name="out"), folder, HashCache(None))
    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_merging_two_large_files_holds_about_one_tensor(tmp_path: Path) -> None:
    # SDXL key names with 256 MB of weights per file, in 16 tensors of 16 MB.
    keys = ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.1.model.ln_final.weight"]
    keys += [f"model.diffusion_model.output_blocks.{i}.0.in_layers.2.weight" for i in range(14)]
    for stem, seed in (("a", 0), ("b", 1)):
        generator = torch.Generator().manual_seed(seed)
        state = {k: torch.randn(4 * 1024 * 1024, generator=generator) for k in keys}
        state[keys[0]] = torch.randn(320, 4, 3, 3, generator=generator)
        save_file(state, str(tmp_path / f"{stem}.safetensors"))
        del state
    size_mb = (tmp_path / "a.safetensors").stat().st_size / 2**20
    result = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    base_kb, peak_kb = map(int, result.stdout.split())
    grown_mb = (peak_kb - base_kb) / 1024
    # Reading both files whole and building the result would take 3 x 240 MB; streaming a few tensors.
    assert grown_mb < 0.5 * size_mb, f"peak grew by {grown_mb:.0f} MB for {size_mb:.0f} MB files"
    merged = load_file(str(tmp_path / "out.safetensors"))
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert torch.allclose(merged[keys[5]], 0.5 * a[keys[5]] + 0.5 * b[keys[5]])


def test_txt2img_on_a_merge(models: dict[str, Path], tmp_path: Path) -> None:
    from modules.models.registry import ModelRegistry

    path = merge_checkpoints(MergeRequest(primary=models["a"], secondary=models["b"], multiplier=0.5,
                                          custom_name="gen"), tmp_path, HashCache(None))
    registry = ModelRegistry([tmp_path], [], CPU, HashCache(None))
    result = generate(Txt2ImgParams(prompt="x", steps=2, seed=1, width=64, height=64, save=False,
                                    checkpoint=registry.find(path.name).name), registry)
    assert result.images[0].size == (64, 64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    import shutil

    data = tmp_path_factory.mktemp("merge-data")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for key in ("a", "b", "c", "xl"):
        shutil.copy(models[key], folder / models[key].name)
        if models[key].with_suffix(".yaml").exists():
            shutil.copy(models[key].with_suffix(".yaml"), folder / models[key].with_suffix(".yaml").name)
    return data


def test_merge_from_the_command_line(data_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import webui

    args = ["merge", "--primary", "a.safetensors", "--secondary", "b", "--multiplier", "0", "--name", "cli",
            "--data-dir", str(data_dir), "--threads", "1"]
    assert webui.main(args) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == data_dir / "models" / "Stable-diffusion" / "cli.safetensors"
    a = load_file(str(models["a"]))
    assert all(torch.equal(load_file(str(path))[k], a[k]) for k in a)
    assert webui.main(args) == 2  # exists: refused, the file stays
    assert "already exists" in capsys.readouterr().err


def test_merge_over_the_api_and_in_the_ui(data_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from modules.api import create_api
    from modules.context import AppContext, Paths
    from modules.ui.merger_tab import run_merge

    ctx = AppContext.create(Paths.make(data_dir=data_dir), CPU)
    client = TestClient(create_api(ctx))
    answer = client.post("/sdapi/v1/checkpoint-merger", json={
        "primary_model_name": "a.safetensors", "secondary_model_name": "b.safetensors",
        "tertiary_model_name": "c.safetensors", "interp_method": "Add difference", "multiplier": 0.5,
        "custom_name": "api", "config_source": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "api.safetensors"
    assert "api.safetensors" in {m["filename"].rsplit("/", 1)[-1] for m in client.get("/sdapi/v1/sd-models").json()}
    bad = client.post("/sdapi/v1/checkpoint-merger", json={"primary_model_name": "a.safetensors",
                                                           "secondary_model_name": "xl.safetensors"})
    assert bad.status_code == 400 and "different architectures" in bad.json()["detail"]
    missing = client.post("/sdapi/v1/checkpoint-merger", json={"primary_model_name": "a.safetensors",
                                                               "interp_method": "Add difference",
                                                               "secondary_model_name": "b.safetensors"})
    assert missing.status_code == 400 and "tertiary" in missing.json()["detail"]
    # The tab's handler: the message, and the new file in the list at once.
    message = run_merge(ctx, "a.safetensors", "b.safetensors", "None", "Weighted sum", 0.5, False, "ui",
                        "safetensors", "A, B or C", "None", "", True, True, False)
    assert "Checkpoint saved to" in message and "ui.safetensors" in {i.name for i in ctx.registry.checkpoints}
    refused = run_merge(ctx, "a.safetensors", "xl.safetensors", "None", "Weighted sum", 0.5, False, "",
                        "safetensors", "A, B or C", "None", "", True, True, False)
    assert "Error" in refused and "different architectures" in refused
