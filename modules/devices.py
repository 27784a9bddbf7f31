"""The one place that decides where models run and in which precision.

Everything else asks a `DevicePolicy` (made once from the command-line flags in webui.py and kept in
the app context); nothing else looks at torch.cuda or picks dtypes on its own.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, replace
from typing import Literal

import torch

from modules.errors import UserError

Offload = Literal["none", "medvram", "lowvram"]
PRECISIONS = ("auto", "full", "half", "bf16")
# "auto" precision on a bf16 CPU keeps models below this many parameters in fp32: for them (the
# embedded default model has ~4M) a step is dominated by per-operator overhead, not by matmuls, so
# bf16 gains little, and fp32 keeps their images exactly those of the reference path.
SMALL_MODEL_PARAMS = 50_000_000


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
    small_model_fp32: bool = False  # see SMALL_MODEL_PARAMS; set by "auto" on a bf16 CPU
    channels_last: bool = False  # NHWC weights for the UNet and VAE convolutions
    compile: bool = False  # torch.compile the UNet (opt-in: the first generation pays the compile)
    vae_tiling: bool = False  # decode in tiles at every size (always done above a size; placement.py)

    @classmethod
    def from_flags(
        cls,
        device: str | None = None,
        precision: str = "auto",
        no_half: bool = False,
        no_half_vae: bool = False,
        medvram: bool = False,
        lowvram: bool = False,
        compile: bool = False,
        vae_tiling: bool = False,
    ) -> DevicePolicy:
        """CUDA when available, else MPS, else CPU; half precision on GPUs, bf16 on CPUs that do bf16
        natively (fp32 on the others).

        precision: "auto" (fp16 on GPUs; bf16 on a bf16-capable CPU for full-size models, fp32 for
        small ones; fp32 on other CPUs), "full" (fp32 everywhere), "half" (fp16), "bf16". `no_half`
        forces fp32; `no_half_vae` keeps only the VAE in fp32 (fp16 VAEs can overflow into black images).
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
        auto_cpu_bf16 = False
        if no_half or precision == "full":
            dtype = torch.float32
        elif precision == "bf16":
            dtype = torch.bfloat16
        elif precision == "half" or (precision == "auto" and dev.type != "cpu"):
            dtype = torch.float16
        elif cpu_has_bf16():
            # Measured on an AVX512-BF16 CPU: full-size SD 1.5 steps run several times faster in bf16.
            dtype, auto_cpu_bf16 = torch.bfloat16, True
        else:
            dtype = torch.float32
        vae_dtype = torch.float32 if no_half_vae else dtype
        offload: Offload = "lowvram" if lowvram else "medvram" if medvram else "none"
        # Channels-last pays off where convolutions run through cuDNN / oneDNN in reduced precision;
        # for fp32 on the CPU it was measured no faster (scripts/benchmark.py).
        channels_last = dev.type == "cuda" or (dev.type == "cpu" and dtype == torch.bfloat16)
        return cls(device=dev, dtype=dtype, vae_dtype=vae_dtype, offload=offload, small_model_fp32=auto_cpu_bf16,
                   channels_last=channels_last, compile=compile, vae_tiling=vae_tiling)

    @classmethod
    def cpu(cls, dtype: torch.dtype = torch.float32) -> DevicePolicy:
        return cls(device=torch.device("cpu"), dtype=dtype, vae_dtype=dtype)

    def for_model(self, parameters: int) -> DevicePolicy:
        """The policy for one model of `parameters` weights (small models may stay in fp32)."""
        if self.small_model_fp32 and parameters < SMALL_MODEL_PARAMS:
            return replace(self, dtype=torch.float32, vae_dtype=torch.float32, small_model_fp32=False,
                           channels_last=self.device.type == "cuda")
        return self

    @property
    def offload_device(self) -> torch.device:
        """Where offloaded weights wait between uses (--medvram / --lowvram)."""
        return torch.device("cpu")

    def describe(self) -> str:
        return f"{self.device} ({str(self.dtype).removeprefix('torch.')}, VAE {str(self.vae_dtype).removeprefix('torch.')})"


def default_threads() -> int:
    """Intra-op threads for the CPU: the cores this process may use (torch's own default counts
    physical cores of the whole machine, which oversubscribes a CPU set limited by a container)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, torch.get_num_threads()))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread count (`--threads`, else `default_threads()`); returns the count."""
    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: its parameters' device, or, when accelerate's offloading hooks move
    it there only while it runs (--medvram / --lowvram), the hooks' execution device."""
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next(module.parameters()).device


def free_memory() -> None:
    """Return freed tensors' memory to the system / driver (after unloading a model)."""
    gc.collect()
    if _cuda_ok():
        torch.cuda.empty_cache()
