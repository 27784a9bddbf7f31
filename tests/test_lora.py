"""LoRAs and embeddings: file formats, applying for one generation, exact restore, errors, training.

Most tests use a tiny SD1 checkpoint; the last group teaches the embedded default model a shape it
never saw (a heart) and checks it with the judge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from modules.errors import UserError
from modules.models.discovery import HashCache
from modules.models.registry import DEFAULT_MODEL_STEM, ModelRegistry
from modules.networks.files import addnet_hash, file_sha256
from modules.networks.lora import LoraLayer, LoraNetwork, applied, layer_table
from modules.processing.params import Txt2ImgParams
from modules.processing.run import generate
from modules.text.conditioning import PromptEncoder
from modules.text.embeddings import EmbeddingVectors
from modules.text.tokenizer import get_tokenizer
from modules.training.lora import data as D
from modules.training.lora.train import LoraTrainSettings, train_lora
from tests.browser import CHROMIUM, CHROMIUM_ARGS, browser_only
from tests.tiny_models import CPU, REPO, build_random_model, write_tiny_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # The test machine is small and shared: two competing thread pools make small models several
    # times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    write_tiny_checkpoint(root / "models" / "Stable-diffusion", "sd1", stem="tiny")
    (root / "models" / "Lora").mkdir(parents=True)
    (root / "embeddings").mkdir()
    return root


@pytest.fixture(scope="module")
def registry(home: Path) -> ModelRegistry:
    return ModelRegistry([home / "models" / "Stable-diffusion"], [], CPU, HashCache(None))


def _gen(registry: ModelRegistry, home: Path, prompt: str, negative: str = "", embeddings: bool = True,
         ) -> tuple[np.ndarray, str]:
    params = Txt2ImgParams(prompt=prompt, negative_prompt=negative, steps=2, seed=3, width=64, height=64,
                           save=False, sampler="Euler")
    result = generate(params, registry, lora_dir=home / "models" / "Lora",
                      embeddings_dir=home / "embeddings" if embeddings else None)
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def _state(registry: ModelRegistry) -> dict[str, torch.Tensor]:
    model = registry.current()
    out = {}
    for name, module in (("unet", model.unet), *((f"te{i}", e) for i, e in enumerate(model.text_encoders))):
        out.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    return out


# A few layers, named both ways (diffusers module path / original LDM path), and the text encoder's.
LAYERS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q":
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v":
        "input_blocks.1.1.transformer_blocks.0.attn2.to_v",
    "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0":
        "output_blocks.5.1.transformer_blocks.0.attn2.to_out.0",
}
TEXT_LAYER = "text_model.encoder.layers.0.self_attn.q_proj"


def _random_lora(registry: ModelRegistry, seed: int, rank: int = 4, alpha: float = 2.0,
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Diffusers path → (down, up, alpha) for LAYERS and TEXT_LAYER, sized for the tiny model."""
    table = layer_table(registry.current())
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for path in [*LAYERS, TEXT_LAYER]:
        key = f"unet.{path}" if path in LAYERS else f"text_encoder.{path}"
        weight = table[key][0].weight
        extra = [1] * (weight.ndim - 2)
        down = torch.randn(rank, weight.shape[1], *extra, generator=g) * 0.5
        up = torch.randn(weight.shape[0], rank, *extra, generator=g) * 0.5
        layers[path] = (down, up, alpha)
    return layers


def _kohya(layers: dict, style: str) -> dict[str, torch.Tensor]:
    state = {}
    for path, (down, up, alpha) in layers.items():
        if path == TEXT_LAYER:
            name = "lora_te_" + path.replace(".", "_")
        else:
            name = "lora_unet_" + (LAYERS[path] if style == "ldm" else path).replace(".", "_")
        state.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                      f"{name}.alpha": torch.tensor(alpha)})
    return state


def _peft(layers: dict) -> dict[str, torch.Tensor]:
    state = {}
    for path, (down, up, alpha) in layers.items():
        prefix = "text_encoder." if path == TEXT_LAYER else "unet."
        # No alpha in this format: the scale is 1, so put alpha/rank into up to mean the same change.
        state[f"{prefix}{path}.lora_A.weight"] = down
        state[f"{prefix}{path}.lora_B.weight"] = up * (alpha / down.shape[0])
    return state


@pytest.fixture(scope="module")
def lora_files(home: Path, registry: ModelRegistry) -> dict[str, Path]:
    folder = home / "models" / "Lora"
    first, second = _random_lora(registry, 0), _random_lora(registry, 1)
    files = {"ldm_style": _kohya(first, "ldm"), "diffusers_style": _kohya(first, "diffusers"),
             "peft_style": _peft(first), "other": _kohya(second, "diffusers")}
    paths = {}
    for name, state in files.items():
        paths[name] = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, paths[name])
    return paths


# ------------------------------------------------------------------------------------------ LoRA use

def test_lora_in_all_namings_changes_output_and_weight_0_or_no_tag_is_exact(
        registry: ModelRegistry, home: Path, lora_files: dict[str, Path]) -> None:
    before = _state(registry)
    base, base_info = _gen(registry, home, "a red circle")
    ldm, info = _gen(registry, home, "a red circle <lora:ldm_style:0.8>")
    assert np.abs(ldm - base).max() > 10, "the LoRA did not change the picture"
    # The same tensors under the diffusers names, and in the peft format, are the same LoRA.
    assert np.array_equal(_gen(registry, home, "a red circle <lora:diffusers_style:0.8>")[0], ldm)
    assert np.abs(_gen(registry, home, "a red circle <lora:peft_style:0.8>")[0] - ldm).max() <= 1
    # Weight 0 and no tag: exactly the base model, and the weights are bit-for-bit what they were.
    assert np.array_equal(_gen(registry, home, "a red circle <lora:ldm_style:0>")[0], base)
    assert np.array_equal(_gen(registry, home, "a red circle")[0], base)
    after = _state(registry)
    assert all(torch.equal(before[k], after[k]) for k in before)
    short = addnet_hash(lora_files["ldm_style"])[:12]
    assert f'Lora hashes: "ldm_style: {short}"' in info
    assert "Lora hashes" not in base_info
    assert info.splitlines()[0] == "a red circle <lora:ldm_style:0.8>"  # the prompt keeps its tag, as in A1111


def test_several_loras_at_once_and_in_the_negative_prompt(registry: ModelRegistry, home: Path,
                                                          lora_files: dict[str, Path]) -> None:
    one, _ = _gen(registry, home, "a red circle <lora:ldm_style:0.5>")
    both, info = _gen(registry, home, "a red circle <lora:ldm_style:0.5> <lora:other:0.5>")
    assert np.abs(both - one).max() > 5
    assert "ldm_style: " in info and "other: " in info
    negative, info = _gen(registry, home, "a red circle", negative="<lora:other:0.7>")
    assert np.abs(negative - _gen(registry, home, "a red circle")[0]).max() > 5
    assert "other: " in info


def test_merge_is_alpha_over_rank_times_up_down_and_restores_exactly(registry: ModelRegistry) -> None:
    model = registry.current()
    module = layer_table(model)["unet.mid_block.attentions.0.proj_in"][0]
    original = module.weight.detach().clone()
    g = torch.Generator().manual_seed(5)
    down = torch.randn(3, *original.shape[1:], generator=g)
    up = torch.randn(original.shape[0], 3, *([1] * (original.ndim - 2)), generator=g)
    network = LoraNetwork("x", Path("x.safetensors"),
                          {"lora_unet_mid_block_attentions_0_proj_in": LoraLayer(down, up, 1.5)})
    with applied(model, [(network, 0.7)]):
        expected = original + 0.7 * 0.5 * (up.flatten(1) @ down.flatten(1)).reshape(original.shape)
        torch.testing.assert_close(module.weight.detach(), expected)
    assert torch.equal(module.weight.detach(), original)
    with pytest.raises(RuntimeError), applied(model, [(network, 1.0)]):
        raise RuntimeError("a failure mid-generation")
    assert torch.equal(module.weight.detach(), original)


def test_unknown_lora_is_reported_with_the_available_names(registry: ModelRegistry, home: Path,
                                                           lora_files: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="Unknown LoRA 'nosuch'") as err:
        _gen(registry, home, "a red circle <lora:nosuch:1>")
    assert "ldm_style" in str(err.value) and "other" in str(err.value)


def test_corrupt_lora_gives_a_clear_error_and_generation_without_it_works(registry: ModelRegistry, home: Path,
                                                                         lora_files: dict[str, Path]) -> None:
    folder = home / "models" / "Lora"
    (folder / "garbage.safetensors").write_bytes(b"this is not a safetensors file")
    data = lora_files["other"].read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    base, _ = _gen(registry, home, "a red circle")
    for name in ("garbage", "truncated"):
        with pytest.raises(UserError, match=f"{name}.safetensors"):
            _gen(registry, home, f"a red circle <lora:{name}:1>")
    assert np.array_equal(_gen(registry, home, "a red circle")[0], base)
    # A LoRA for another kind of model: reported, not silently ignored.
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(5120, 4)},
              folder / "sdxl_only.safetensors")
    with pytest.raises(UserError, match="changes no layer of this model"):
        _gen(registry, home, "a red circle <lora:sdxl_only:1>")
    name = "lora_unet_" + next(iter(LAYERS)).replace(".", "_")
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 7), f"{name}.lora_up.weight": torch.zeros(7, 4)},
              folder / "wrong_shape.safetensors")
    with pytest.raises(UserError, match="does not fit this model"):
        _gen(registry, home, "a red circle <lora:wrong_shape:1>")
    save_file({f"{name}.hada_w1_a": torch.zeros(4, 4)}, folder / "loha.safetensors")
    with pytest.raises(UserError, match="hada"):
        _gen(registry, home, "a red circle <lora:loha:1>")
    assert np.array_equal(_gen(registry, home, "a red circle")[0], base)


# ------------------------------------------------------------------------------------------ embeddings

def _token_rows(encoder: torch.nn.Module, words: str) -> torch.Tensor:
    ids = get_tokenizer().tokenize_fragment(words)
    return encoder.get_input_embeddings().weight[ids].detach().clone()


def test_embedding_vectors_are_spliced_in_place_of_its_name() -> None:
    # An embedding made of the input vectors of "red dog" must encode exactly like the words.
    for kind in ("sd1", "sdxl"):
        model = build_random_model(kind)
        specs, encoders = model.arch.text_encoders, model.text_encoders
        vectors = tuple(_token_rows(e, "red dog") for e in encoders)
        encoder = PromptEncoder(specs, encoders, embeddings={"my-emb": EmbeddingVectors("my-emb", vectors)})
        plain = PromptEncoder(specs, encoders)
        spliced = encoder.encode(["a (my-emb:1.2), on grass"])
        words = plain.encode(["a (red dog:1.2), on grass"])
        assert torch.equal(spliced.context, words.context), kind
        if kind == "sdxl":
            assert spliced.pooled is not None and torch.equal(spliced.pooled, words.pooled)
        assert encoder.count_tokens("a my-emb") == (3, 75)
        assert encoder.embeddings is not None and encoder.embeddings.used == {"my-emb"}


def test_embedding_files_are_used_by_name(registry: ModelRegistry, home: Path) -> None:
    folder = home / "embeddings"
    g = torch.Generator().manual_seed(0)
    # A1111's SD1 .pt layout (read with weights_only=True) and its safetensors layout.
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 32, generator=g)},
                "name": "shinystyle", "step": 100}, folder / "shinystyle.pt")
    save_file({"emb_params": torch.randn(1, 32, generator=g)}, folder / "darkmood.safetensors")
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, folder / "xlonly.safetensors")
    plain, plain_info = _gen(registry, home, "a red circle shinystyle")
    without, _ = _gen(registry, home, "a red circle shinystyle", embeddings=False)
    assert np.abs(plain - without).max() > 5, "the embedding did not change the picture"
    assert f'TI hashes: "shinystyle: {file_sha256(folder / "shinystyle.pt")[:12]}"' in plain_info
    negative, info = _gen(registry, home, "a red circle", negative="darkmood")
    assert np.abs(negative - _gen(registry, home, "a red circle")[0]).max() > 5
    assert "darkmood: " in info
    # An SDXL embedding does not fit SD1: its name stays plain text (skipped, as in A1111).
    assert np.array_equal(_gen(registry, home, "a red circle xlonly")[0],
                          _gen(registry, home, "a red circle xlonly", embeddings=False)[0])


# ------------------------------------------------------------------------------------------ training

def _tiny_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate([(64, 64), (80, 64), (64, 64), (128, 64)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        if i % 2 == 0:
            (folder / f"p{i}.txt").write_text("a noisy picture\n", encoding="utf-8")
    return folder


def test_train_lora_command_writes_a_kohya_file_with_metadata(home: Path, registry: ModelRegistry,
                                                              tmp_path: Path) -> None:
    data = _tiny_folder(tmp_path / "pictures")
    ckpt = home / "models" / "Stable-diffusion" / "tiny.safetensors"
    result = subprocess.run(
        [sys.executable, str(REPO / "webui.py"), "train-lora", "--threads", "1", "--ckpt", str(ckpt),
         "--data-dir", str(home), "--data", str(data), "--name", "mini", "--steps", "3", "--batch-size", "2",
         "--resolution", "64", "--bucket", "--rank", "4", "--alpha", "4", "--lr", "0.05", "--sample-every", "3",
         "--train-text-encoder"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip())
    assert path == home / "models" / "Lora" / "mini.safetensors" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    with safe_open(str(path), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert any("attn2_to_k" in k for k in keys) and any(k.startswith("lora_te_text_model_") for k in keys)
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_steps"]) == ("4", "4.0", "3")
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_sd_model_name"] == "tiny" and meta["ss_output_name"] == "mini"
    assert json.loads(meta["ss_tag_frequency"]) == {"pictures": {"a noisy picture": 2, "mini": 2}}
    # The 5:4 and 2:1 pictures got buckets of about their shape, the square ones a square.
    assert set(json.loads(meta["ss_bucket_info"])) == {"64x64", "72x56", "80x48"}
    assert meta["sshs_model_hash"] == addnet_hash(path)
    assert list((home / "outputs" / "lora-samples" / "mini").glob("mini-step000003-0.png"))
    # The new file is a LoRA like any other: it changes the picture and names itself in the infotext.
    base, _ = _gen(registry, home, "a noisy picture")
    tuned, info = _gen(registry, home, "a noisy picture <lora:mini:1>")
    assert np.abs(tuned - base).max() > 0
    assert f'Lora hashes: "mini: {meta["sshs_model_hash"][:12]}"' in info


def test_stop_and_crash_keep_the_last_saved_file_and_leave_no_temp_file(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from modules.models.load import load_checkpoint
    from modules.training.lora import export

    data = _tiny_folder(tmp_path / "pictures")
    ckpt = home / "models" / "Stable-diffusion" / "tiny.safetensors"
    lora_dir = tmp_path / "Lora"
    stop = threading.Event()
    settings = LoraTrainSettings(data_dir=data, name="stopped", rank=2, steps=50, batch_size=1, resolution=64,
                                 save_every=2)

    def stop_at_3(report) -> None:  # noqa: ANN001 - a TrainProgress
        if report.step == 3:
            stop.set()

    result = train_lora(load_checkpoint(ckpt, CPU), settings, lora_dir, progress=stop_at_3, stop=stop)
    assert result.stopped and result.steps == 3 and result.path == lora_dir / "stopped.safetensors"
    with safe_open(str(result.path), framework="pt") as f:
        assert f.metadata()["ss_steps"] == "3"
    saved = result.path.read_bytes()

    # A crash while writing: the file under the final name stays the last complete one.
    def broken_save(tensors, filename, metadata=None) -> None:  # noqa: ANN001
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_lora(load_checkpoint(ckpt, CPU), settings, lora_dir)
    assert result.path.read_bytes() == saved
    assert [p.name for p in lora_dir.iterdir()] == ["stopped.safetensors"]


def test_background_job_reports_progress_and_stops(home: Path, tmp_path: Path) -> None:
    """What the Train tab runs: a job in a thread that reports every step and stops on request."""
    from modules.context import AppContext, Paths
    from modules.training.lora.run import start_training
    from modules.ui.train_tab import make_settings, progress_html, result_html

    ctx = AppContext.create(Paths.make(home), CPU)
    settings = make_settings(str(_tiny_folder(tmp_path / "pictures")), "job", "", 2, 2, 1e-3, 1000, 1, 64, False,
                             0, False, 0, 0, 0, "", 0, 0, "Automatic")
    job = start_training(ctx, settings, "tiny")
    deadline = time.monotonic() + 300
    while job.latest is None and job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.latest is not None, job.error
    assert "step " in progress_html(job) and "loss " in progress_html(job)
    job.stop.set()
    assert job.done.wait(300)
    assert job.error is None and job.result is not None and job.result.stopped
    assert job.result.path == home / "models" / "Lora" / "job.safetensors" and job.result.path.is_file()
    assert "stopped after" in result_html(job)
    with pytest.raises(UserError, match="folder"):
        make_settings("", "job", "", 2, 2, 1e-3, 10, 1, 64, False, 0, False, 0, 0, 0, "", 0, 0, "Automatic")


def test_ui_pieces_build_and_insert_tags(home: Path, lora_files: dict[str, Path]) -> None:
    import gradio as gr

    from modules.context import AppContext, Paths
    from modules.ui.networks import build_networks_panel, insert_tag, lora_tag
    from modules.ui.train_tab import build_train_tab

    save_file({"emb_params": torch.zeros(1, 32)}, home / "embeddings" / "listed.safetensors")
    ctx = AppContext.create(Paths.make(home), CPU)
    with gr.Blocks():
        with gr.Tab("Train"):
            build_train_tab(ctx)
        with gr.Tab("txt2img"):
            panel = build_networks_panel(ctx, gr.Textbox())
    assert ["ldm_style"] in panel.loras.samples and ["listed"] in panel.embeddings.samples
    assert insert_tag("a cat", lora_tag("ldm_style")) == "a cat, <lora:ldm_style:1>"
    assert insert_tag("a cat, <lora:ldm_style:1>", "<lora:ldm_style:1>") == "a cat, <lora:ldm_style:1>"
    assert insert_tag("a cat,", "shinystyle") == "a cat, shinystyle" and insert_tag(None, "x") == "x"
    assert insert_tag("a shinystyles", "shinystyle") == "a shinystyles, shinystyle"






@browser_only
def test_panel_and_train_tab_in_the_browser(home: Path, lora_files: dict[str, Path], tmp_path: Path) -> None:
    """In the real page: clicking a LoRA / an embedding in a generation tab's panel adds it to that
    tab's prompt (refresh finds new files); the Train tab shows loss and sample pictures while it
    trains, and Stop saves."""
    import argparse
    import socket

    from playwright.sync_api import sync_playwright

    from modules.context import AppContext, Paths
    from modules.ui import launch

    ctx = AppContext.create(Paths.make(home), CPU)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = launch(ctx, argparse.Namespace(listen=False, port=port, gradio_auth=None, autolaunch=False,
                                          skip_load_model_at_start=True), block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => document.body.dataset.uiReady === '1'")
            for mode in ("txt2img", "img2img"):  # every generation tab has its own panel
                if mode != "txt2img":
                    page.click(f"#tab_{mode}-button")
                prompt = f"#{mode}_prompt textarea"
                page.fill(prompt, "a cat")
                page.locator(f"#{mode}_networks").get_by_text("LoRA / Embeddings").first.click()  # open it
                page.locator(f"#{mode}_networks_lora").get_by_text("diffusers_style", exact=True).click()
                page.wait_for_function(f"() => document.querySelector('{prompt}').value"
                                       " === 'a cat, <lora:diffusers_style:1>'")
            save_file({"emb_params": torch.zeros(1, 32)}, home / "embeddings" / "fresh.safetensors")
            page.click("#img2img_networks_refresh")
            page.locator("#img2img_networks_embeddings").get_by_text("fresh", exact=True).click()
            page.wait_for_function("() => document.querySelector('#img2img_prompt textarea').value"
                                   ".endsWith(', fresh')")

            page.click("#tab_train-button")
            page.fill("#train_data_dir textarea", str(_tiny_folder(tmp_path / "pictures")))
            page.fill("#train_name textarea", "fromui")
            for elem_id, value in (("train_steps", 500), ("train_sample_every", 2), ("train_resolution", 64)):
                box = page.locator(f"#{elem_id} input[type=number]")
                box.fill(str(value))
                box.press("Tab")
            page.click("#train_start")
            page.wait_for_function("() => document.querySelector('#train_progress_text')?.innerText.includes('loss')")
            page.wait_for_selector("#train_samples img")
            page.click("#train_stop")
            page.wait_for_selector("#train_message :text('stopped after')")
            browser.close()
    finally:
        demo.close()
    assert (home / "models" / "Lora" / "fromui.safetensors").is_file()


def test_training_defaults_follow_the_base_model(tmp_path: Path) -> None:
    import webui
    from modules.models.arch import load_ldm_config
    from modules.training.lora.cli import settings_from_args
    from modules.training.lora.defaults import (
        FULL_SIZE,
        SMALL,
        defaults_for,
        defaults_for_file,
        with_defaults,
    )

    configs = REPO / "configs"
    for name in ("v1-inference.yaml", "v2-inference-v.yaml", "sd_xl_base.yaml"):
        assert defaults_for(load_ldm_config(configs / name)) == FULL_SIZE, name
    assert (FULL_SIZE.learning_rate, FULL_SIZE.batch_size, FULL_SIZE.lr_schedule) == (1e-4, 1, "constant")
    assert defaults_for_file(DEFAULT_MODEL) == SMALL
    assert {k: getattr(SMALL, k) for k in NEW_SHAPE_SETTINGS} == NEW_SHAPE_SETTINGS
    # train-lora with only --data and --name gives nothing of its own; flags given win over the defaults.
    parser = webui.build_parser()
    settings, given = settings_from_args(parser.parse_args(["train-lora", "--data", str(tmp_path), "--name", "x"]))
    assert given == set()
    assert with_defaults(settings, SMALL, given).learning_rate == 2e-3
    settings, given = settings_from_args(parser.parse_args(["train-lora", "--data", str(tmp_path), "--name", "x",
                                                            "--lr", "0.01", "--batch-size", "2"]))
    chosen = with_defaults(settings, SMALL, given)
    assert (chosen.learning_rate, chosen.batch_size, chosen.lr_schedule) == (0.01, 2, "cosine")
    # The Train tab shows the same defaults for the chosen checkpoint before starting.
    import gradio as gr

    from modules.context import AppContext, Paths
    from modules.ui.train_tab import build_train_tab, model_defaults

    ctx = AppContext.create(Paths.make(data_dir=tmp_path / "home"), CPU)
    assert model_defaults(ctx, DEFAULT_MODEL.name) == SMALL
    with gr.Blocks() as demo:
        build_train_tab(ctx)
    values = {c.elem_id: c.value for c in demo.blocks.values() if getattr(c, "elem_id", None) and hasattr(c, "value")}
    assert values["train_lr"] == 2e-3 and values["train_batch_size"] == 8 and values["train_lr_schedule"] == "cosine"


def test_buckets_keep_the_aspect_ratio() -> None:
    buckets = D.bucket_sizes(512)
    assert (512, 512) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    wide = D.choose_bucket(1200, 600, buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 2) < 0.35
    tall = D.choose_bucket(600, 900, buckets)
    assert tall[1] > tall[0]
    picture = Image.new("RGB", (1200, 600))
    assert D.fit(picture, *wide).size == wide
    assert D.fit(picture, 512, 512).size == (512, 512)


def test_settings_are_checked() -> None:
    for bad in ({"name": "../evil"}, {"name": ""}, {"rank": 0}, {"learning_rate": 0}, {"resolution": 100}):
        with pytest.raises(UserError):
            LoraTrainSettings(**{"data_dir": Path("."), "name": "ok", **bad}).validate()


# ------------------------------------------------------------------------------------------ default model

SHIPPED = REPO / "models" / "Stable-diffusion" / f"{DEFAULT_MODEL_STEM}.safetensors"
DEFAULT_MODEL = Path(os.environ.get("DEFAULT_MODEL_PATH", SHIPPED))
# A heart: the default model never saw one (the word's embedding is all zeros in its text encoder).
# Asked for in the colour pairs of lora_check.EVAL_PAIRS; scripts/eval_lora.py runs the same check and
# prints the figures (1000 steps: 79% hearts, 67% in the asked colours; 1500 steps: 83% / 71%).
NEW_SHAPE = "heart"
NEW_SHAPE_SEEDS = (100, 101, 102)
NEW_SHAPE_SETTINGS = {"rank": 16, "alpha": 16.0, "learning_rate": 2e-3, "steps": 1000, "batch_size": 8,
                      "lr_schedule": "cosine", "min_snr_gamma": 5.0}
EXACT_PROMPTS = ("a red heart on a blue background", "a yellow circle on a black background")


def _default_picture(registry: ModelRegistry, prompt: str, lora_dir: Path | None = None) -> np.ndarray:
    params = Txt2ImgParams(prompt=prompt, seed=NEW_SHAPE_SEEDS[0], steps=20, save=False)
    return np.asarray(generate(params, registry, lora_dir=lora_dir).images[0])


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default model, what it draws before any LoRA, and a LoRA teaching it the new shape (trained once)."""
    from modules.models.load import load_checkpoint
    from modules.training.default_model.lora_check import EVAL_PAIRS, judge_prompts, write_shape_folder

    assert DEFAULT_MODEL.is_file(), f"the embedded default model {DEFAULT_MODEL} is missing"
    root = tmp_path_factory.mktemp("taught")
    registry = ModelRegistry([DEFAULT_MODEL.parent], [], CPU, HashCache(None))
    registry.load(registry.find(DEFAULT_MODEL.name))
    base = judge_prompts(registry, NEW_SHAPE, EVAL_PAIRS, NEW_SHAPE_SEEDS)
    before = {prompt: _default_picture(registry, prompt) for prompt in EXACT_PROMPTS}
    write_shape_folder(root / "data", NEW_SHAPE, count=32)
    # Only the data and the name, as `train-lora --data DIR --name NAME`: the rest are the defaults the
    # base model gets (modules/training/lora/defaults.py).
    from modules.training.lora.defaults import defaults_for_file, with_defaults

    settings = with_defaults(LoraTrainSettings(data_dir=root / "data", name=NEW_SHAPE, seed=0),
                             defaults_for_file(DEFAULT_MODEL), given=set()).validate()
    assert {k: getattr(settings, k) for k in NEW_SHAPE_SETTINGS} == NEW_SHAPE_SETTINGS
    start = time.perf_counter()
    # Its own copy of the model, as train-lora does: the registry's model must stay untouched.
    result = train_lora(load_checkpoint(DEFAULT_MODEL, CPU), settings, root / "Lora")
    print(f"\n{NEW_SHAPE} LoRA: {result.steps} steps in {time.perf_counter() - start:.0f}s, loss {result.loss:.4f}")
    return {"registry": registry, "base": base, "before": before, "lora_dir": root / "Lora"}


@pytest.fixture(scope="module")
def judged_new_shape(taught: dict) -> tuple[tuple[float, float, float], tuple[float, float, float], list]:
    from modules.training.default_model.lora_check import EVAL_PAIRS, judge_prompts, rates

    judged = judge_prompts(taught["registry"], NEW_SHAPE, EVAL_PAIRS, NEW_SHAPE_SEEDS, taught["lora_dir"],
                           f"<lora:{NEW_SHAPE}:1>")
    base, taught_rates = rates(taught["base"]), rates(judged)
    print(f"{NEW_SHAPE}s without the LoRA: {base[0]:.0%} ({base[1]:.0%} in the asked colour); with it: "
          f"{taught_rates[0]:.0%} ({taught_rates[1]:.0%} in the asked colour, {taught_rates[2]:.0%} also on the "
          "asked background)")
    return base, taught_rates, judged


def test_lora_teaches_the_default_model_a_new_shape(judged_new_shape) -> None:
    (base_shape, base_colour, _), (shape, colour, background), judged = judged_new_shape
    # Issue 7's target: the judge finds the new shape, in the asked colour, in >= 80% of the
    # fixed-seed pictures; without the LoRA the model draws (almost) none.
    assert colour >= 0.8, [j.verdict.caption for j in judged]
    assert shape - base_shape >= 0.5 and colour - base_colour >= 0.5, [j.verdict.caption for j in judged]
    assert background >= 0.6


def test_default_model_without_the_tag_or_at_weight_0_is_exactly_the_base(taught: dict) -> None:
    # Pictures made before the LoRA existed: training (on its own copy) and applying/removing it
    # leave the loaded model bit-for-bit as it was.
    for prompt, before in taught["before"].items():
        for tag in ("", f" <lora:{NEW_SHAPE}:0>"):
            assert np.array_equal(_default_picture(taught["registry"], prompt + tag, taught["lora_dir"]), before), tag
        changed = _default_picture(taught["registry"], prompt + f" <lora:{NEW_SHAPE}:1>", taught["lora_dir"])
        assert not np.array_equal(changed, before)
