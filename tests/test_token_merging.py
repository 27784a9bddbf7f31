"""Token merging (tomesd) as A1111 applies it: which ratio a pass uses, what the infotext says, and that the
UNet is merged only for the request that asks for it."""

from __future__ import annotations

import numpy as np
import pytest

from modules.context import AppContext, Paths
from modules.options import Options
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Img2ImgParams, Txt2ImgParams
from modules.processing.token_merging import token_merging_ratios
from tests.tiny_models import CPU, write_tiny_checkpoint


def test_which_ratio_a_pass_uses_follows_a1111() -> None:
    opts = Options(token_merging_ratio=0.3, token_merging_ratio_img2img=0.5, token_merging_ratio_hr=0.0)
    assert token_merging_ratios(opts, {}, img2img=False) == (0.3, 0.3)  # hires falls back to the main one
    assert token_merging_ratios(opts, {}, img2img=True) == (0.5, 0.3)  # img2img's own ratio when set
    # A request that overrides token_merging_ratio gets it in img2img too.
    assert token_merging_ratios(opts, {"token_merging_ratio": 0.3}, img2img=True) == (0.3, 0.3)
    assert token_merging_ratios(Options(token_merging_ratio_hr=0.6), {}, img2img=False) == (0.0, 0.6)
    assert token_merging_ratios(Options(token_merging_ratio=0.2), {}, img2img=True) == (0.2, 0.2)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    home = tmp_path_factory.mktemp("tome")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny")
    return AppContext.create(Paths.make(data_dir=home), CPU)


def _txt2img(ctx: AppContext, **overrides: object) -> tuple[np.ndarray, dict]:
    result = ctx.generate(Txt2ImgParams(prompt="a dot", steps=3, seed=2, width=64, height=64, save=False,
                                        sampler="Euler", override_settings=dict(overrides)))
    return np.asarray(result.images[0], dtype=np.int16), parse_infotext(result.infotexts[0])[2]


def test_a_request_merges_tokens_and_the_next_one_is_unmerged(ctx: AppContext) -> None:
    plain, fields = _txt2img(ctx)
    assert "Token merging ratio" not in fields
    merged, fields = _txt2img(ctx, token_merging_ratio=0.5)
    assert np.abs(merged - plain).max() > 2  # fewer tokens in self-attention: another picture
    assert float(fields["Token merging ratio"]) == 0.5
    assert infotext_to_params(fields)["token_merging_ratio"] == 0.5  # pasted back as the setting
    unet = ctx.registry.current().unet
    assert not any(type(m).__name__ == "ToMeBlock" for m in unet.modules())  # the patch is gone
    assert np.array_equal(_txt2img(ctx)[0], plain)
    _, hires = _txt2img(ctx, token_merging_ratio_hr=0.4)  # no hires. fix: nothing merged, nothing written
    assert "Token merging ratio hr" not in hires and "Token merging ratio" not in hires


def test_hires_pass_and_img2img_use_their_own_ratios(ctx: AppContext) -> None:
    result = ctx.generate(Txt2ImgParams(prompt="a dot", steps=2, seed=2, width=64, height=64, save=False,
                                        enable_hr=True, hr_scale=1.5, denoising_strength=0.5,
                                        override_settings={"token_merging_ratio_hr": 0.4}))
    fields = parse_infotext(result.infotexts[0])[2]
    assert float(fields["Token merging ratio hr"]) == 0.4 and "Token merging ratio" not in fields
    picture = result.images[0]
    img2img = ctx.generate(Img2ImgParams(prompt="a dot", steps=2, seed=2, init_image=picture, width=64, height=64,
                                         denoising_strength=0.6, save=False,
                                         override_settings={"token_merging_ratio_img2img": 0.5}))
    assert float(parse_infotext(img2img.infotexts[0])[2]["Token merging ratio"]) == 0.5
