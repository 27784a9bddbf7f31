"""Where the ControlNet's training shapes go, and the places and sizes kept out of training.

Training draws shapes all over the picture at many sizes (circumradius 16-44% of the side, far smaller
than the base model ever drew: it only saw 26-44%). Two things are held out so that the evaluation
measures following a map rather than recalling one:
- a band of sizes: no training shape has a circumradius in HELD_OUT_RADIUS (fractions of the side);
- four places: no training shape is centred within HELD_OUT_SPOT_RADIUS of a HELD_OUT_SPOTS point.
The evaluation draws only shapes that are held out in both ways (a held-out size at a held-out place).
The spots are symmetric under the square's eight symmetries, so rotating and mirroring training
pictures (the trainer's augmentation) never moves a training shape into them.
"""

from __future__ import annotations

import math

import numpy as np

from modules.training.default_model.data import HEART_TILT, ROTATION_PERIOD

TRAIN_RADIUS = (0.16, 0.44)
HELD_OUT_RADIUS = (0.22, 0.28)
HELD_OUT_SPOTS: tuple[tuple[float, float], ...] = ((0.36, 0.36), (0.64, 0.36), (0.36, 0.64), (0.64, 0.64))
HELD_OUT_SPOT_RADIUS = 0.05


def _margin(size: int) -> float:
    # As data.random_placement: the outermost pixels stay pure background.
    return max(1.5, 0.02 * size)


def _angle(rng: np.random.Generator, shape: str) -> float:
    if shape == "heart":
        return float(rng.uniform(-HEART_TILT, HEART_TILT))
    return float(rng.uniform(0.0, ROTATION_PERIOD[shape]))


def near_held_out_spot(cx: float, cy: float, size: int) -> bool:
    """Whether a centre (pixels) lies within HELD_OUT_SPOT_RADIUS of a held-out spot."""
    return any(math.hypot(cx / size - x, cy / size - y) <= HELD_OUT_SPOT_RADIUS for x, y in HELD_OUT_SPOTS)


def held_out_radius(radius: float, size: int) -> bool:
    lo, hi = HELD_OUT_RADIUS
    return lo <= radius / size <= hi


def train_placement(rng: np.random.Generator, size: int, shape: str) -> tuple[float, float, float, float]:
    """(cx, cy, radius, angle) for a training picture: never a held-out size, never at a held-out spot."""
    lo, hi = TRAIN_RADIUS
    band_lo, band_hi = HELD_OUT_RADIUS
    # Uniform over [lo, hi] minus the band: draw on the shortened interval and skip over the band.
    r = float(rng.uniform(lo, hi - (band_hi - band_lo)))
    r = r + (band_hi - band_lo) if r >= band_lo else r
    radius = r * size
    low, high = radius + _margin(size), size - radius - _margin(size)
    while True:  # rejection: the spots cover a small share of the possible centres
        cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
        if not near_held_out_spot(cx, cy, size):
            break
    return cx, cy, radius, _angle(rng, shape)


def held_out_placement(rng: np.random.Generator, size: int, shape: str) -> tuple[float, float, float, float]:
    """(cx, cy, radius, angle) that training never draws: a held-out size centred near a held-out spot."""
    radius = float(rng.uniform(*HELD_OUT_RADIUS)) * size
    x, y = HELD_OUT_SPOTS[int(rng.integers(len(HELD_OUT_SPOTS)))]
    # Uniform in the spot's disc (square root: uniform by area, not crowded at the middle).
    rho = HELD_OUT_SPOT_RADIUS * math.sqrt(float(rng.uniform(0.0, 1.0)))
    phi = float(rng.uniform(0.0, 2.0 * math.pi))
    cx, cy = (x + rho * math.cos(phi)) * size, (y + rho * math.sin(phi)) * size
    # Every spot disc lies where a held-out size fits: the largest (0.28) needs 0.30 from each edge.
    return cx, cy, radius, _angle(rng, shape)
