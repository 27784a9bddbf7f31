"""Token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023) through tomesd, as A1111 applies it.

Within the UNet's full-resolution transformer blocks, similar image tokens are merged before
self-attention and unmerged after it, so attention works on fewer tokens: faster, at some cost in
detail. A1111's choices: no random perturbation of the destination tokens (it upsets some samplers),
merging for self-attention only, the blocks without downsampling (tomesd's max_downsample 1).
Which ratio a pass uses follows A1111's `get_token_merging_ratio`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def token_merging_ratios(options: Any, overrides: dict[str, Any], img2img: bool) -> tuple[float, float]:
    """(first pass, hires. fix pass) ratios: `token_merging_ratio`, for img2img `token_merging_ratio_img2img`
    unless the request overrides `token_merging_ratio`; the hires pass `token_merging_ratio_hr`, else the
    first pass's setting (A1111's rule; 0 = off)."""
    first = options.token_merging_ratio
    if img2img and "token_merging_ratio" not in overrides:
        first = options.token_merging_ratio_img2img or options.token_merging_ratio
    return first, options.token_merging_ratio_hr or options.token_merging_ratio


@contextmanager
def token_merging(unets: Iterable[torch.nn.Module], ratio: float) -> Iterator[None]:
    """The UNets merge tokens at `ratio` inside the block (nothing happens at 0)."""
    if ratio <= 0:
        yield
        return
    import tomesd

    patched = list(dict.fromkeys(unets))
    for unet in patched:
        tomesd.apply_patch(unet, ratio=ratio, max_downsample=1, sx=2, sy=2, use_rand=False, merge_attn=True,
                           merge_crossattn=False, merge_mlp=False)
    try:
        yield
    finally:
        for unet in patched:
            tomesd.remove_patch(unet)
