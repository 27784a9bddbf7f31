"""Prompt styles from styles.csv: merging rules, the file, unknown names, AppContext.generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.processing.params import Txt2ImgParams
from modules.styles import StyleStore, merge
from tests.tiny_models import CPU, write_tiny_checkpoint

CSV = ('name,prompt,negative_prompt\n'
       '"Oil","oil painting of {prompt}, thick paint","photo"\n'
       'Sharp,"sharp, detailed",blurry\n'
       'Empty,,\n')


def test_merge_rules() -> None:
    assert merge("oil painting of {prompt}", "a cat") == "oil painting of a cat"
    assert merge("sharp", "a cat") == "a cat, sharp"
    assert merge("sharp", "") == "sharp"
    assert merge("", "a cat") == "a cat"


def test_store_reads_applies_in_order_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    store = StyleStore(path)
    assert store.names() == ["Oil", "Sharp", "Empty"]
    assert store.apply(["Oil", "Sharp"], "a cat", "") == ("oil painting of a cat, thick paint, sharp, detailed",
                                                          "photo, blurry")
    assert store.apply(["Empty"], "a cat", "dog") == ("a cat", "dog")
    path.write_text(CSV + "New,neon,\n", encoding="utf-8")
    assert "New" in store.names()


def test_missing_file_and_unknown_style(tmp_path: Path) -> None:
    store = StyleStore(tmp_path / "styles.csv")
    assert store.styles() == []
    with pytest.raises(UserError, match="'Nope'"):
        store.apply(["Nope"], "a", "")


def test_generate_applies_styles(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion", "sd1", stem="tiny")
    (tmp_path / "styles.csv").write_text(CSV, encoding="utf-8")
    ctx = AppContext.create(Paths.make(data_dir=tmp_path), CPU)
    params = Txt2ImgParams(prompt="a dot", negative_prompt="noise", styles=("Sharp",), steps=1, width=64,
                           height=64, save=False, checkpoint="tiny")
    result = ctx.generate(params)
    assert result.params.prompt == "a dot, sharp, detailed" and result.params.negative_prompt == "noise, blurry"
    assert result.infotexts[0].startswith("a dot, sharp, detailed\nNegative prompt: noise, blurry\n")
    with pytest.raises(UserError, match="Unknown style 'Gone'"):
        ctx.generate(Txt2ImgParams(prompt="a", styles=("Gone",), save=False, checkpoint="tiny"))
