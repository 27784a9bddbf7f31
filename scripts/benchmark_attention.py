"""The attention kernels torch offers on this machine, on the shapes Stable Diffusion's UNets use.

    ./venv/bin/python scripts/benchmark_attention.py [--dtypes fp32,bf16] [--repeat 5] [--threads N]

For each self-attention shape (batch 2 = the CFG pair, heads × head size × tokens as SD 1.x, 2.x and
SDXL have them at 512 to 1024 pixels) and each dtype it times torch's own choice
(scaled_dot_product_attention as the product calls it), the flash kernel and the math kernel forced, a
plain matrix-product attention (softmax in fp32), and the flash kernel with the head size padded to 64,
then prints milliseconds per call and which is fastest. The math kernel and the plain one are skipped
where their attention matrix would not fit in a few GB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.devices import configure_threads  # noqa: E402

# (label, heads, head size, tokens): SD 1.x at 512 (64×64 latents), 768 and 1024; SD 2.x; SDXL at 1024.
SHAPES = [
    ("SD1 512 level 0", 8, 40, 4096), ("SD1 512 level 1", 8, 80, 1024), ("SD1 512 level 2", 8, 160, 256),
    ("SD1 768 level 0", 8, 40, 9216), ("SD1 1024 level 0", 8, 40, 16384),
    ("SD2 768 level 0", 5, 64, 9216), ("SD2 768 level 1", 10, 64, 2304),
    ("SDXL 1024 level 1", 10, 64, 4096), ("SDXL 1024 level 2", 20, 64, 1024),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MATRIX_LIMIT = 3 * 2**30  # bytes of attention matrix the math and plain kernels may allocate


def builtin(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def forced(backend: SDPBackend) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)
    return run


def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(-1).to(q.dtype), v)


def padded64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    size = q.shape[-1]
    if size % 64 == 0:
        return F.scaled_dot_product_attention(q, k, v)
    pad = 64 - size % 64
    q, k, v = (F.pad(x, (0, pad)) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, scale=size**-0.5)[..., :size]


KERNELS = {"torch's choice": builtin, "flash": forced(SDPBackend.FLASH_ATTENTION), "math": forced(SDPBackend.MATH),
           "plain matmul": plain, "flash, head 64": padded64}


def milliseconds(kernel: Callable[..., torch.Tensor], q: torch.Tensor, repeat: int) -> float:
    with torch.no_grad():
        kernel(q, q, q)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            kernel(q, q, q)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", default="", help="only shapes whose label contains this")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {threads} threads\n")
    print("| shape | heads×size×tokens | dtype | " + " | ".join(KERNELS) + " | fastest |")
    print("|---" * (len(KERNELS) + 4) + "|")
    for label, heads, size, tokens in SHAPES:
        if args.shapes not in label:
            continue
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            q = torch.randn(2, heads, tokens, size, generator=torch.Generator().manual_seed(0)).to(dtype)
            matrix = 2 * heads * tokens * tokens * 4
            row = {}
            for kernel_name, kernel in KERNELS.items():
                if kernel_name in ("math", "plain matmul") and matrix > MATRIX_LIMIT:
                    continue
                row[kernel_name] = milliseconds(kernel, q, args.repeat)
            best = min(row, key=row.__getitem__)
            cells = " | ".join(f"{row[k]:.1f}" if k in row else "–" for k in KERNELS)
            print(f"| {label} | {heads}×{size}×{tokens} | {name} | {cells} | {best} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
