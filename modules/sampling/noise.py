"""Reproducible noise, from the random number source A1111's setting `randn_source` names.

Each image's noise comes from a generator seeded with its seed, in float32, then moved to the device
and dtype. "CPU" draws on the CPU, so a seed means the same picture on any device; "GPU" (A1111's
default) draws on the device when it is a CUDA GPU (and on the CPU elsewhere, as A1111 does for the
CPU and MPS); "NV" computes CUDA's numbers on any machine (`philox.py`), so pictures made on an NVIDIA
GPU with the default source come out the same here.

Image i of a batch uses seeds[i]; the caller gives seed + i for the i-th image as A1111 does,
so image i of a batch equals a single run with that seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from modules.errors import UserError
from modules.sampling.philox import PhiloxNormal

# torch.Generator.manual_seed accepts 0..2**64-1 (and negatives, which A1111 never writes).
SEED_MAX = 2**64 - 1
# A1111 draws random seeds below 2**32 so that they stay short and fit every UI field.
RANDOM_SEED_MAX = 2**32 - 1


def _check_seed(seed: object, what: str = "Seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | float) or int(seed) != seed:
        raise UserError(f"{what} must be a whole number, got {seed!r}.")
    seed = int(seed)
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"{what} {seed} is out of range: use -1 for a random seed or 0 to {SEED_MAX}.")
    return seed


def resolve_seed(seed: int) -> int:
    """The seed to use: -1 (A1111's "random") becomes a random seed in [0, 2**32-1]."""
    if seed == -1 and not isinstance(seed, bool):
        return random.randint(0, RANDOM_SEED_MAX)
    return _check_seed(seed)


RANDN_SOURCES = ("GPU", "CPU", "NV")
NoiseGenerator = torch.Generator | PhiloxNormal


def _generator(seed: int, source: str = "CPU", device: torch.device | str = "cpu") -> NoiseGenerator:
    if source == "NV":
        return PhiloxNormal(seed)
    if source == "GPU" and torch.device(device).type == "cuda":
        return torch.Generator(torch.device(device)).manual_seed(seed)
    if source not in RANDN_SOURCES:
        raise UserError(f"Unknown random number source {source!r}; use one of {', '.join(RANDN_SOURCES)}.")
    return torch.Generator("cpu").manual_seed(seed)


def _draw(generator: NoiseGenerator, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(generator, PhiloxNormal):
        return generator.randn(shape)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def _randn(seed: int, shape: tuple[int, ...], source: str = "CPU", device: torch.device | str = "cpu") -> torch.Tensor:
    return _draw(_generator(seed, source, device), shape)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (t=0) to `high` (t=1), as A1111 does it.

    A1111 normalises along dim 1 of a [C, H, W] noise tensor, i.e. it interpolates every
    (channel, column) vector separately; doing the same keeps variation seeds identical.
    Mixing two Gaussian noises this way (unlike a plain lerp) keeps the noise's variance.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        # Nearly parallel: the angle is too small for sin() to divide by. (A1111 swaps the
        # weights here; this is the intended lerp. Independent noises never get here.)
        return low * (1.0 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def initial_noise(
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    device: torch.device | str,
    dtype: torch.dtype,
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    source: str = "CPU",
) -> torch.Tensor:
    """Starting latent noise [len(seeds), *shape], one independently seeded draw per image.

    With `subseeds` and a `subseed_strength` > 0 (A1111's "Variation seed"), each image's noise
    is slerped towards the noise of its subseed: 0 keeps the seed's image, 1 gives the subseed's.
    A missing subseed for an image counts as 0, as in A1111. `source`: the random number source.
    """
    if len(seeds) == 0:
        raise ValueError("initial_noise needs at least one seed")
    if len(shape) != 3:
        raise ValueError(f"shape must be (channels, height, width), got {shape}")
    strength = float(subseed_strength)
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"Variation strength must be between 0 and 1, got {subseed_strength}.")
    use_subseeds = subseeds is not None and strength > 0.0

    noises = []
    for i, seed in enumerate(seeds):
        noise = _randn(_check_seed(seed), shape, source, device)
        if use_subseeds:
            assert subseeds is not None
            subseed = _check_seed(subseeds[i], "Variation seed") if i < len(subseeds) else 0
            noise = slerp(strength, noise, _randn(subseed, shape, source, device))
        noises.append(noise)
    return torch.stack(noises).to(device=device, dtype=dtype)


def step_generators(
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    eta_noise_seed_delta: int = 0,
    source: str = "CPU",
    device: torch.device | str = "cpu",
) -> list[NoiseGenerator]:
    """Per-image CPU generators for the noise ancestral / SDE samplers add at every step.

    Like A1111 with the CPU generator source, image i's generator is seeded with seeds[i] and
    has already drawn that image's initial noise of `shape`, so the step noise continues the
    same random stream instead of repeating the initial noise (a generator merely reseeded with
    the seed would hand the sampler the starting noise again). With A1111's
    `eta_noise_seed_delta` (ENSD, e.g. 31337) each generator is instead freshly seeded with
    seeds[i] + delta, as A1111 does. With the "NV" source they are `PhiloxNormal` streams.
    """
    generators = []
    for seed in seeds:
        seed = _check_seed(seed)
        if eta_noise_seed_delta:
            generators.append(_generator(_check_seed(seed + int(eta_noise_seed_delta)), source, device))
            continue
        generator = _generator(seed, source, device)
        _draw(generator, shape)  # past the initial noise, exactly as initial_noise drew it
        generators.append(generator)
    return generators
