"""The normal random numbers `torch.randn(..., device="cuda")` gives, computed on any machine.

This is A1111's "NV" random number source: with it, a seed gives the pictures an NVIDIA GPU gives
with A1111's default ("GPU") source, also on a CPU or another GPU. CUDA's generator is Philox-4x32
with 10 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011): draw number i
of call k of a generator seeded with `seed` uses the counter (k, 0, i, 0) and the key (low and high
32 bits of the seed), and turns the first two of the four words it yields into one normal number by
the Box-Muller transform (sqrt(-2 ln u) * sin(2 pi v), u and v in (0, 1)).
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
# CUDA's uniform conversion, with its float32 constants: u = x * 2^-32 + 2^-33.
_SCALE = float(np.float32(2.3283064e-10))
_ANGLE_SCALE = float(np.float32(2.3283064e-10 * 6.2831855))


def philox_4x32(counter: list[np.ndarray], key: tuple[int, int], rounds: int = 10) -> list[np.ndarray]:
    """Philox-4x32 applied to counters given as four arrays of 32-bit words (held in uint64)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for done in range(rounds):
        if done:
            k0, k1 = (k0 + _KEY_STEPS[0]) & 0xFFFFFFFF, (k1 + _KEY_STEPS[1]) & 0xFFFFFFFF
        first, second = c0 * _MULTIPLIERS[0], c2 * _MULTIPLIERS[1]
        c0, c1, c2, c3 = ((second >> _SHIFT) ^ c1 ^ np.uint64(k0), second & _LOW32,
                          (first >> _SHIFT) ^ c3 ^ np.uint64(k1), first & _LOW32)
    return [c0, c1, c2, c3]


class PhiloxNormal:
    """A seeded stream of normal numbers equal to CUDA torch.randn's; each `randn` call is one draw
    (`torch.randn(shape, generator=g)` on a CUDA generator moves its offset the same way)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0
        # The samplers whose step noise only a torch generator can give draw from this one instead.
        self.fallback = torch.Generator("cpu").manual_seed(self.seed)

    def randn(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        count = math.prod(shape)
        index = np.arange(count, dtype=np.uint64)
        zeros = np.zeros(count, dtype=np.uint64)
        counter = [np.full(count, self.offset, dtype=np.uint64), zeros, index, zeros]
        self.offset += 1
        x, y, _, _ = philox_4x32(counter, (self.seed & 0xFFFFFFFF, self.seed >> 32))
        u = x.astype(np.float64) * _SCALE + _SCALE / 2
        v = y.astype(np.float64) * _ANGLE_SCALE + _ANGLE_SCALE / 2
        normal = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return torch.from_numpy(normal.astype(np.float32).reshape(tuple(shape)))
