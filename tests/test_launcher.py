"""The launchers' choice of PyTorch build and their Python version check (scripts/torch_choice.py),
run with the machine faked: Windows with and without an NVIDIA GPU, macOS, Linux, a user's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.torch_choice import CUDA_INDEX, DEFAULT_COMMAND, decide, has_nvidia_gpu, python_problem

REPO = Path(__file__).resolve().parents[1]


def test_windows_with_nvidia_gets_the_cuda_wheel_index() -> None:
    choice = decide("win32", nvidia=True, user_command=None)
    assert choice.command == f"pip install torch==2.14.1 torchvision==0.29.1 --extra-index-url {CUDA_INDEX}"
    assert "NVIDIA" in choice.reason


def test_windows_without_nvidia_keeps_the_cpu_build() -> None:
    choice = decide("win32", nvidia=False, user_command="")
    assert choice.command == DEFAULT_COMMAND and "CPU" in choice.reason


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_linux_and_macos_keep_the_default(platform: str) -> None:
    assert decide(platform, nvidia=True, user_command=None).command == DEFAULT_COMMAND


def test_a_users_torch_command_wins() -> None:
    rocm = "pip install torch --index-url https://example.invalid/rocm6.2"
    for platform in ("win32", "linux"):
        assert decide(platform, nvidia=True, user_command=rocm).command == rocm


def test_nvidia_detection() -> None:
    assert has_nvidia_gpu("linux", path_lookup=lambda name: "/usr/bin/nvidia-smi")
    assert not has_nvidia_gpu("linux", path_lookup=lambda name: None)
    # Windows drivers put nvidia-smi into System32, which is not always on PATH.
    assert has_nvidia_gpu("win32", path_lookup=lambda name: None, exists=lambda p: p.endswith("nvidia-smi.exe"))
    assert not has_nvidia_gpu("win32", path_lookup=lambda name: None, exists=lambda p: False)


@pytest.mark.parametrize(("version", "ok"), [((3, 9), False), ((3, 10), True), ((3, 12), True), ((3, 13), False)])
def test_python_version_range(version: tuple[int, int], ok: bool) -> None:
    problem = python_problem(version)
    assert (problem is None) == ok
    if not ok:
        assert f"Python {version[0]}.{version[1]} is not supported" in problem and "3.10 to 3.12" in problem


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "torch_choice.py")], capture_output=True,
                          text=True, env=env, timeout=60)


def test_script_prints_the_command_and_why(tmp_path: Path) -> None:
    # A fake nvidia-smi on PATH: on Linux the default build stays (it is a CUDA build already).
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_COMMAND"}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env.get('PATH', '')}"
    result = _run(env)
    assert result.returncode == 0 and result.stdout.strip() == DEFAULT_COMMAND
    assert result.stderr.startswith("PyTorch: Linux")
    chosen = _run({**env, "TORCH_COMMAND": "pip install torch==2.14.1+cpu"})
    assert chosen.stdout.strip() == "pip install torch==2.14.1+cpu" and "TORCH_COMMAND is set" in chosen.stderr


def test_launchers_use_the_choice() -> None:
    assert "scripts/torch_choice.py" in (REPO / "scripts" / "ensure_venv.sh").read_text()
    bat = (REPO / "webui.bat").read_text()
    assert "scripts\\torch_choice.py" in bat and "|| goto :error" in bat.split("torch_choice.py", 1)[1].splitlines()[0]
