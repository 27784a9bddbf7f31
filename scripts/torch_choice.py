"""Which PyTorch build the launchers install, and whether this Python can run the program.

Run by webui.bat / webui.sh (through scripts/ensure_venv.sh) with the Python that will create the
virtual environment, before anything is installed, so it uses the standard library only. It prints
the TORCH_COMMAND to use on stdout and says why on stderr; it exits with 1 and a message when the
Python version is outside the supported range.

The package index carries only CPU builds of PyTorch for Windows, so a Windows machine with an
NVIDIA GPU gets PyTorch's own CUDA wheel index (as the best-known web UI's launcher does); without
an NVIDIA GPU it keeps the CPU build. On Linux the index's default build is a CUDA build that also
runs on the CPU, and on macOS the index's build supports Apple GPUs, so both keep the default. A
TORCH_COMMAND set by the user always wins (ROCm and other builds are chosen that way).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

TORCH_PINS = "torch==2.14.1 torchvision==0.29.1"
DEFAULT_COMMAND = f"pip install {TORCH_PINS}"
# The CUDA version of the builds this project is tested with (torch 2.14.1+cu130).
CUDA_INDEX = "https://download.pytorch.org/whl/cu130"
SUPPORTED_PYTHON = ((3, 10), (3, 12))


@dataclass(frozen=True)
class Choice:
    command: str
    reason: str


def python_problem(version: tuple[int, int]) -> str | None:
    """A message when `version` is outside the supported range, else None."""
    low, high = SUPPORTED_PYTHON
    if low <= version <= high:
        return None
    shown = ".".join(map(str, version))
    return (f"Python {shown} is not supported: use Python {low[0]}.{low[1]} to {high[0]}.{high[1]} "
            f"(set PYTHON in webui-user.bat / webui-user.sh to its path, e.g. PYTHON=python3.11).")


def has_nvidia_gpu(platform: str, path_lookup=shutil.which, exists=os.path.exists) -> bool:
    """An NVIDIA driver is installed: `nvidia-smi` on PATH (or where Windows drivers put it)."""
    if path_lookup("nvidia-smi"):
        return True
    if platform == "win32":
        system = os.environ.get("SystemRoot", r"C:\Windows")
        return exists(os.path.join(system, "System32", "nvidia-smi.exe"))
    return False


def decide(platform: str, nvidia: bool, user_command: str | None) -> Choice:
    """The TORCH_COMMAND for this machine."""
    if user_command and user_command.strip():
        return Choice(user_command.strip(), "TORCH_COMMAND is set: using it as it is")
    if platform == "win32":
        if nvidia:
            return Choice(f"pip install {TORCH_PINS} --extra-index-url {CUDA_INDEX}",
                          "Windows with an NVIDIA GPU: installing the CUDA build of PyTorch")
        return Choice(DEFAULT_COMMAND, "Windows without an NVIDIA GPU (no nvidia-smi): installing the CPU build")
    if platform == "darwin":
        return Choice(DEFAULT_COMMAND, "macOS: installing PyTorch with Apple GPU (MPS) support")
    return Choice(DEFAULT_COMMAND, "Linux: installing the default PyTorch build (CUDA, also runs on the CPU; "
                                   "set TORCH_COMMAND for ROCm)")


def main() -> int:
    problem = python_problem(sys.version_info[:2])
    if problem:
        print(problem, file=sys.stderr)
        return 1
    choice = decide(sys.platform, has_nvidia_gpu(sys.platform), os.environ.get("TORCH_COMMAND"))
    print(f"PyTorch: {choice.reason}: {choice.command}", file=sys.stderr)
    print(choice.command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
