"""webui.py and the command line, run as a user runs them: in a subprocess, on tiny checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.images import read_infotext
from modules.processing import params as P
from modules.processing.infotext import infotext_to_params, parse_infotext
from tests.tiny_models import write_tiny_checkpoint, write_tiny_vae

REPO = Path(__file__).resolve().parents[1]
WEBUI = REPO / "webui.py"
# One torch thread: the test machine is small and shared, and two competing thread pools make a
# tiny model several times slower than one.
FAST = ["--threads", "1", "--steps", "2", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ckpt = write_tiny_checkpoint(root / "elsewhere", "sd1", stem="tiny")
    rng = np.random.default_rng(0)
    init = root / "init.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(init)
    mask = root / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    m.save(mask)
    return {"root": root, "ckpt": ckpt, "init": init, "mask": mask}


def run_webui(*args: str | Path, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
              timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, str(WEBUI), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)


def _listed(result: subprocess.CompletedProcess[str]) -> list[Path]:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines and all(line.strip() == line and line.endswith(".png") for line in lines), result.stdout
    return [Path(line) for line in lines]


def _fields(path: Path) -> tuple[str, str, dict]:
    text = read_infotext(path)
    assert text, f"{path} has no parameters chunk"
    with Image.open(path) as image:
        assert image.info.get("parameters") == text  # A1111 stores it as the PNG text chunk "parameters"
    prompt, negative, fields = parse_infotext(text)
    return prompt, negative, infotext_to_params(fields)


def test_txt2img_prints_the_saved_files(files: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_webui("txt2img", "--data-dir", data, "--ckpt", files["ckpt"], "--prompt", "a red circle",
                       "--negative-prompt", "blue", "--sampler", "DPM++ 2M", "--seed", "5", "--batch-size", "2",
                       "--cfg-scale", "6.5", *FAST)
    paths = _listed(result)
    assert len(paths) == 2
    seeds = []
    for path in paths:
        assert path.is_file() and data / "outputs" / "txt2img-images" in path.parents
        with Image.open(path) as image:
            assert image.size == (64, 64)
        prompt, negative, fields = _fields(path)
        assert (prompt, negative) == ("a red circle", "blue")
        assert fields["steps"] == 2 and fields["sampler_name"] == "DPM++ 2M" and fields["cfg_scale"] == 6.5
        seeds.append(fields["seed"])
    assert seeds == [5, 6]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "outpaint"])
def test_image_modes(files: dict[str, Path], tmp_path: Path, mode: str) -> None:
    data, outdir = tmp_path / "data", tmp_path / "pictures"
    args: list[str | Path] = [mode, "--data-dir", data, "--outdir", outdir, "--init-image", files["init"],
                              "--prompt", "a square", "--seed", "1", *FAST]
    if mode == "img2img":
        # --ckpt as a name, found through --ckpt-dir.
        args += ["--ckpt-dir", files["ckpt"].parent, "--ckpt", "tiny", "--denoising-strength", "0.6",
                 "--resize-mode", "Crop and resize"]
    elif mode == "inpaint":
        args += ["--ckpt", files["ckpt"], "--mask", files["mask"], "--masked-content", "1", "--mask-blur", "2"]
    else:
        # No --ckpt: the model in the data folder is the default.
        shutil.copytree(files["ckpt"].parent, data / "models" / "Stable-diffusion")
        args += ["--outpaint-left", "16", "--outpaint-bottom", "8", "--outpaint-fill", "mean"]
    [path] = _listed(run_webui(*args))
    assert path.is_file() and outdir / f"{mode}-images" in path.parents
    text = read_infotext(path)
    _, _, fields = _fields(path)
    with Image.open(path) as image:
        out = np.asarray(image.convert("RGB"), dtype=np.int16)
    src = np.asarray(Image.open(files["init"]).convert("RGB"), dtype=np.int16)
    if mode == "img2img":
        assert fields["denoising_strength"] == 0.6 and out.shape == src.shape
    elif mode == "inpaint":
        hard = np.asarray(Image.open(files["mask"])) > 0
        assert "Masked content: original" in text  # "1" is A1111's index for "original"
        assert np.array_equal(out[~hard], src[~hard])  # outside the mask nothing changes
    else:
        assert out.shape == (72, 80, 3)
        assert np.array_equal(out[0:64, 16:80], src)


@pytest.fixture
def webui_main(monkeypatch: pytest.MonkeyPatch):
    """`webui.main` in this process (fast: the libraries are already imported). Importing webui
    forces the offline variables; they are set through monkeypatch first so later tests see the
    environment they started with."""
    for key in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    import webui

    return webui.main


def _one_error_line(stderr: str, message: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr


def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(files: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_webui("img2img", "--ckpt", files["ckpt"], "--init-image", "no-such-picture.png", "--data-dir", data,
                       "--threads", "1")
    assert result.returncode == 2 and result.stdout == ""
    _one_error_line(result.stderr, "The init image file no-such-picture.png does not exist.")
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["txt2img", "--width", "100"], "width must be a multiple of 8"),
        (["txt2img", "--steps", "0"], "steps must be from 1 to 150"),
        (["txt2img", "--sampler", "Euler z"], "Unknown sampler 'Euler z'"),
        (["inpaint", "--mask", "{init}", "--masked-content", "mud"], "Unknown masked content 'mud'"),
        (["inpaint", "--mask", "{root}/none.png"], "The mask file"),
        (["txt2img", "--ckpt", "/nowhere/model.safetensors"], "Checkpoint file not found: /nowhere/model.safetensors"),
        (["txt2img", "--ckpt", "no-such-model"], "Unknown checkpoint 'no-such-model'"),
        (["txt2img", "--device", "tpu"], "Unknown --device 'tpu'"),
        (["txt2img", "--override-settings", "no_such_setting=1"], "Unknown option(s) no_such_setting"),
        (["txt2img", "--override-settings", "sgm_noise_multiplier=5"],
         "Option sgm_noise_multiplier must be true or false, got 5"),
        (["txt2img", "--override-settings", "sgm_noise_multiplier"], "write KEY=VALUE"),
        (["txt2img", "--schedule-type", "Quadratic"], "Unknown schedule type 'Quadratic'"),
        (["txt2img", "--vae", "/nowhere/vae.pt"], "--vae /nowhere/vae.pt: no such file"),
    ],
)
def test_bad_input_is_refused(webui_main, capsys: pytest.CaptureFixture[str], files: dict[str, Path],
                              tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.format(init=files["init"], root=files["root"]) for a in args]
    if "--ckpt" not in args:
        args += ["--ckpt", str(files["ckpt"])]
    if args[0] == "inpaint":
        args += ["--init-image", str(files["init"])]
    assert webui_main([*args, "--data-dir", str(tmp_path / "data")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _one_error_line(err, message)
    assert not list(tmp_path.rglob("*.png"))


def test_override_settings_apply_to_the_run(webui_main, capsys: pytest.CaptureFixture[str],
                                            files: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["txt2img", "--ckpt", str(files["ckpt"]), "--data-dir", str(data), "--sampler", "Euler a",
            "--schedule-type", "SGM Uniform", "--seed", "3", *FAST]
    assert webui_main([*args, "--override-settings", "eta_noise_seed_delta=31337",
                       "--override-settings", "sgm_noise_multiplier=true"]) == 0
    path = Path(capsys.readouterr().out.strip())
    _, _, fields = _fields(path)
    assert fields["eta_noise_seed_delta"] == 31337 and fields["sgm_noise_multiplier"] is True
    assert fields["scheduler"] == "SGM Uniform"
    assert not (data / "config.json").exists()  # for this run only: nothing saved


def test_tab_switches_on_the_command_line(webui_main, capsys: pytest.CaptureFixture[str], files: dict[str, Path],
                                          tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nSharp,sharp,blurry\n", encoding="utf-8")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="other", seed=3)
    args = ["txt2img", "--ckpt", str(files["ckpt"]), "--data-dir", str(data), "--prompt", "a dot", "--seed", "4",
            "--enable-hr", "--hr-scale", "2", "--hr-second-pass-steps", "2", "--denoising-strength", "0.6",
            "--tiling", "--styles", "Sharp", "--clip-skip", "2", "--subseed", "9", "--subseed-strength", "0.5",
            "--refiner-checkpoint", "other.safetensors", "--refiner-switch-at", "0.5", *FAST]
    assert webui_main(args) == 0
    path = Path(capsys.readouterr().out.strip())
    with Image.open(path) as image:
        assert image.size == (128, 128)  # hires. fix doubled the 64-pixel first pass
    prompt, negative, fields = _fields(path)
    assert (prompt, negative) == ("a dot, sharp", "blurry")
    assert fields["enable_hr"] and fields["hr_scale"] == 2.0 and fields["hr_second_pass_steps"] == 2
    assert fields["denoising_strength"] == 0.6 and fields["tiling"] is True and fields["clip_skip"] == 2
    assert fields["subseed"] == 9 and fields["subseed_strength"] == 0.5
    assert fields["refiner_checkpoint"].startswith("other") and fields["refiner_switch_at"] == 0.5


def test_vae_flag_is_used_whatever_the_settings_say(webui_main, capsys: pytest.CaptureFixture[str],
                                                    files: dict[str, Path], tmp_path: Path) -> None:
    vae = write_tiny_vae(tmp_path / "elsewhere" / "mine.safetensors", seed=5)
    args = ["txt2img", "--ckpt", str(files["ckpt"]), "--data-dir", str(tmp_path / "data"), "--seed", "4", *FAST]
    assert webui_main([*args, "--vae", str(vae), "--override-settings", "sd_vae=None"]) == 0
    _, _, fields = _fields(Path(capsys.readouterr().out.strip()))
    assert fields["sd_vae"] == "mine.safetensors"
    assert webui_main(args) == 0
    _, _, fields = _fields(Path(capsys.readouterr().out.strip()))
    assert "sd_vae" not in fields


def test_script_flag_runs_an_xyz_plot(webui_main, capsys: pytest.CaptureFixture[str], files: dict[str, Path],
                                      tmp_path: Path) -> None:
    args = ["txt2img", "--ckpt", str(files["ckpt"]), "--data-dir", str(tmp_path / "data"), "--seed", "4", *FAST,
            "--script", "X/Y/Z plot", "--script-arg", "x_type=Steps", "--script-arg", "x_values=1,2",
            "--script-arg", "y_type=6", "--script-arg", "y_values=3,5"]  # 6: CFG Scale in A1111's txt2img list
    assert webui_main(args) == 0
    grid, *cells = [Path(line) for line in capsys.readouterr().out.split()]
    assert "txt2img-grids" in grid.parts and Image.open(grid).size[0] >= 128
    fields = [_fields(cell)[2] for cell in cells]
    assert [(f["steps"], f["cfg_scale"]) for f in fields] == [(1, 3.0), (2, 3.0), (1, 5.0), (2, 5.0)]
    assert {f["seed"] for f in fields} == {4}
    assert webui_main([*args[:-10], "--script-arg", "x_type=Steps"]) == 2
    _one_error_line(capsys.readouterr().err, "--script-arg needs --script NAME")


def test_unreadable_init_image_names_the_file(webui_main, capsys: pytest.CaptureFixture[str],
                                              files: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert webui_main(["img2img", "--ckpt", str(files["ckpt"]), "--init-image", str(broken),
                       "--data-dir", str(tmp_path / "d")]) == 2
    _one_error_line(capsys.readouterr().err, f"Cannot read the init image {broken}")


def test_help_lists_every_flag() -> None:
    top = run_webui("--help", timeout=600)
    assert top.returncode == 0
    for flag in ("--listen", "--port", "--ckpt", "--ckpt-dir", "--data-dir", "--outdir", "--api", "--nowebui",
                 "--gradio-auth", "--api-auth", "--device", "--precision", "--no-half", "--no-half-vae",
                 "--medvram", "--lowvram", "--autolaunch", "--compile", "--skip-load-model-at-start",
                 "--threads", "txt2img", "img2img", "inpaint", "outpaint"):
        assert flag in top.stdout, flag
    assert "7860" in top.stdout
    common = ("--prompt", "--negative-prompt", "--sampler", "--schedule-type", "--steps", "--cfg-scale", "--seed",
              "--width", "--height", "--batch-size", "--batch-count", "--clip-skip", "--ckpt", "--outdir")
    per_mode = {
        "txt2img": (),
        "img2img": ("--init-image", "--denoising-strength", "--resize-mode", *P.RESIZE_MODES),
        "inpaint": ("--init-image", "--mask", "--mask-blur", "--masked-content", "--inpaint-area", "--invert-mask",
                    *P.MASKED_CONTENT, *P.INPAINT_AREAS),
        "outpaint": ("--outpaint-left", "--outpaint-right", "--outpaint-top", "--outpaint-bottom",
                     "--outpaint-fill", *P.OUTPAINT_FILLS),
    }
    for mode, extra in per_mode.items():
        sub = run_webui(mode, "--help", timeout=600)
        assert sub.returncode == 0
        text = " ".join(sub.stdout.split())  # argparse wraps long help lines
        for flag in (*common, *extra):
            assert flag in text, (mode, flag)


def test_help_defaults_match_the_params() -> None:
    from modules import cli

    defaults = P.InpaintParams()
    for flag in cli.FLAGS:
        if flag.default is not None and hasattr(defaults, flag.field) and flag.field != "fill":
            assert getattr(defaults, flag.field) == flag.default, flag.flag
    assert P.OutpaintParams().fill == "edge"
    assert (cli.RESIZE_MODES_HELP, cli.MASKED_CONTENT_HELP, cli.INPAINT_AREAS_HELP, cli.OUTPAINT_FILLS_HELP) == (
        P.RESIZE_MODES, P.MASKED_CONTENT, P.INPAINT_AREAS, P.OUTPAINT_FILLS)


def test_bad_auth_flag_is_refused_by_the_parser() -> None:
    result = run_webui("--gradio-auth", "nocolon", timeout=600)
    assert result.returncode == 2 and "'nocolon' must look like user:password" in result.stderr


_ENV_PROBE = r"""
import importlib.abc, os, sys
WATCH = ("gradio", "huggingface_hub", "transformers", "diffusers")
KEYS = ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
        "DISABLE_TELEMETRY", "DO_NOT_TRACK")
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in WATCH and name not in seen:
            seen[name] = {k: os.environ.get(k) for k in KEYS}
        return None
sys.meta_path.insert(0, Probe())
import webui
assert not any(m in sys.modules for m in WATCH), "webui imported a heavy library at import time"
import modules.context
try:
    import gradio
except ImportError:
    pass
import huggingface_hub.constants as c
assert c.HF_HUB_OFFLINE and c.HF_HUB_DISABLE_TELEMETRY
expected = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
assert {"huggingface_hub", "transformers", "diffusers"} <= set(seen), seen
for name, env in seen.items():
    assert env == expected, (name, env)
print("ok", sorted(seen))
"""


def test_offline_and_telemetry_env_set_before_library_imports() -> None:
    # A shell that asks for the hub (HF_HUB_OFFLINE=0) must not switch the program online.
    result = subprocess.run([sys.executable, "-c", _ENV_PROBE], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "0", "DO_NOT_TRACK": "0"}, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="unshare -n (a network namespace) is not allowed here")
def test_runs_without_a_network(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_webui("txt2img", "--data-dir", tmp_path / "data", "--ckpt", files["ckpt"], "--prompt", "offline",
                       *FAST, prefix=("unshare", "-n"))
    [path] = _listed(result)
    assert path.is_file()
