"""Seamless tiling: circular padding in every convolution of the UNet and the VAE, for one generation.

A convolution that pads circularly sees the opposite edge beyond each border, so the picture is
drawn on a torus and its left/right and top/bottom edges continue each other (A1111's "Tiling").
`nn.Conv2d` pads by `padding_mode` at every call, so switching the attribute is enough; the
context manager puts every module's own value back, also when the generation fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def circular_padding(modules: Iterable[torch.nn.Module], enabled: bool = True) -> Iterator[None]:
    """While the block runs, every `nn.Conv2d` inside `modules` pads circularly."""
    if not enabled:
        yield
        return
    saved: list[tuple[torch.nn.Conv2d, str]] = []
    try:
        for module in modules:
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    saved.append((conv, conv.padding_mode))
                    conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in saved:
            conv.padding_mode = mode
