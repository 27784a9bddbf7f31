"""The one place that decides where models run and in which precision.

Everything else asks a `DevicePolicy` (made once from the command-line flags in webui.py and kept in
the app context); nothing else looks at torch.cuda or picks dtypes on its own.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Literal

import torch

from modules.errors import UserError

Offload = Literal["none", "medvram", "lowvram"]
PRECISIONS = ("auto", "full", "half", "bf16")


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


def _mps_ok() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def cpu_has_bf16() -> bool:
    """Whether the CPU does bf16 arithmetic natively (AVX512-BF16 or AMX), per torch's own check."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    dtype: torch.dtype  # UNet and text encoders
    vae_dtype: torch.dtype
    offload: Offload = "none"

    @classmethod
    def from_flags(
        cls,
        device: str | None = None,
        precision: str = "auto",
        no_half: bool = False,
        no_half_vae: bool = False,
        medvram: bool = False,
        lowvram: bool = False,
    ) -> DevicePolicy:
        """CUDA when available, else MPS, else CPU; half precision on GPUs, fp32 on the CPU.

        precision: "auto" (fp16 on GPUs, fp32 on the CPU), "full" (fp32 everywhere), "half" (fp16),
        "bf16". `no_half` forces fp32; `no_half_vae` keeps only the VAE in fp32 (fp16 VAEs can
        overflow into black images).
        """
        if precision not in PRECISIONS:
            raise UserError(f"Unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
        if device in (None, "", "auto"):
            device = "cuda" if _cuda_ok() else "mps" if _mps_ok() else "cpu"
        if device.startswith("cuda") and not _cuda_ok():
            raise UserError("--device cuda was asked for, but torch sees no CUDA GPU. "
                            "Install a CUDA build of torch (TORCH_COMMAND) or use --device cpu.")
        if device == "mps" and not _mps_ok():
            raise UserError("--device mps was asked for, but this torch has no MPS support.")
        if device != "cpu" and not device.startswith(("cuda", "mps")):
            raise UserError(f"Unknown --device {device!r}; use cpu, cuda (or cuda:N) or mps.")
        dev = torch.device(device)
        if no_half or precision == "full":
            dtype = torch.float32
        elif precision == "bf16":
            dtype = torch.bfloat16
        elif precision == "half" or (precision == "auto" and dev.type != "cpu"):
            dtype = torch.float16
        else:
            dtype = torch.float32
        vae_dtype = torch.float32 if no_half_vae else dtype
        offload: Offload = "lowvram" if lowvram else "medvram" if medvram else "none"
        return cls(device=dev, dtype=dtype, vae_dtype=vae_dtype, offload=offload)

    @classmethod
    def cpu(cls, dtype: torch.dtype = torch.float32) -> DevicePolicy:
        return cls(device=torch.device("cpu"), dtype=dtype, vae_dtype=dtype)

    def describe(self) -> str:
        return f"{self.device} ({str(self.dtype).removeprefix('torch.')}, VAE {str(self.vae_dtype).removeprefix('torch.')})"


def free_memory() -> None:
    """Return freed tensors' memory to the system / driver (after unloading a model)."""
    gc.collect()
    if _cuda_ok():
        torch.cuda.empty_cache()
