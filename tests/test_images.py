"""Saving images: numbering, never overwriting, infotext inside, grids."""

from __future__ import annotations

import re
import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from modules.errors import UserError
from modules.images import (
    dated_folder,
    grid_rows,
    make_grid,
    next_sequence_number,
    read_infotext,
    save_grid,
    save_image,
)

INFOTEXT = 'a cat, "quoted"\nNegative prompt: blurry 猫\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 8x8'


def _image(color: str = "red", size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, color)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_layout_and_numbering(tmp_path: Path) -> None:
    first = save_image(_image(), tmp_path, 42, INFOTEXT)
    second = save_image(_image(), tmp_path, 43, INFOTEXT)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", first.parent.name)
    assert first.parent == dated_folder(tmp_path) and first.parent.parent == tmp_path
    assert (first.name, second.name) == ("00000-42.png", "00001-43.png")
    assert _no_temp_files(first.parent)


def test_continues_after_highest_existing_number(tmp_path: Path) -> None:
    folder = dated_folder(tmp_path)
    folder.mkdir(parents=True)
    for name in ("00003-1.png", "00011-2.jpg", "grid-0050.png", "notes.txt", "x-99.png"):
        (folder / name).write_bytes(b"old")
    path = save_image(_image(), tmp_path, 7, INFOTEXT)
    assert path.name == "00012-7.png"
    assert (folder / "00003-1.png").read_bytes() == b"old"
    assert next_sequence_number(folder, "grid-") == 51


def test_never_overwrites_a_taken_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process saved 00000-5.png after our scan: the scan result is stale, the name taken.
    folder = dated_folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "00000-5.png").write_bytes(b"theirs")
    monkeypatch.setattr("modules.images.next_sequence_number", lambda *_: 0)
    path = save_image(_image(), tmp_path, 5, INFOTEXT)
    assert path.name == "00001-5.png"
    assert (folder / "00000-5.png").read_bytes() == b"theirs"
    assert _no_temp_files(folder)


def test_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    folder = dated_folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "00000-5.png").write_bytes(b"theirs")
    monkeypatch.setattr("modules.images.os.link", no_link)
    monkeypatch.setattr("modules.images.next_sequence_number", lambda *_: 0)
    path = save_image(_image(), tmp_path, 5, INFOTEXT)
    assert path.name == "00001-5.png" and read_infotext(path) == INFOTEXT
    assert (folder / "00000-5.png").read_bytes() == b"theirs"
    assert _no_temp_files(folder)


def test_concurrent_saves_get_distinct_numbers(tmp_path: Path) -> None:
    paths: list[Path] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        paths.append(save_image(_image(), tmp_path, 1000 + i, INFOTEXT))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 8
    assert sorted(p.name[:5] for p in paths) == [f"{i:05}" for i in range(8)]
    folder = paths[0].parent
    assert len(list(folder.iterdir())) == 8 and _no_temp_files(folder)


def test_infotext_read_back(tmp_path: Path) -> None:
    path = save_image(_image(), tmp_path, 42, INFOTEXT)
    assert read_infotext(path) == INFOTEXT
    assert read_infotext(str(path)) == INFOTEXT
    with Image.open(path) as image:
        assert read_infotext(image) == INFOTEXT
        assert image.size == (8, 8)


@pytest.mark.parametrize("extension", ["jpg", "webp", "PNG"])
def test_other_formats_keep_infotext(tmp_path: Path, extension: str) -> None:
    path = save_image(Image.new("RGBA", (8, 8)), tmp_path, 1, INFOTEXT, extension=extension)
    assert path.suffix == "." + extension.lower()
    assert read_infotext(path) == INFOTEXT


def test_no_infotext(tmp_path: Path) -> None:
    assert read_infotext(save_image(_image(), tmp_path, 1, None)) is None


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="png, jpg, jpeg, webp"):
        save_image(_image(), tmp_path, 1, INFOTEXT, extension="bmp")


def test_patterns(tmp_path: Path) -> None:
    path = save_image(_image(), tmp_path, 42, INFOTEXT, pattern="[seed]-[prompt_words]-[sampler]-[width]x[height]")
    assert path.name == "00000-42-a cat quoted-Euler a-8x8.png"
    path = save_image(_image(), tmp_path, 42, INFOTEXT, pattern="[prompt]")
    assert path.name == "00001-a_cat,__quoted_.png"
    assert save_image(_image(), tmp_path, 42, INFOTEXT, pattern="").name == "00002.png"
    assert save_image(_image(), tmp_path, 9, INFOTEXT, pattern="[date]").name == (
        f"00003-{datetime.now():%Y-%m-%d}.png")
    with pytest.raises(UserError, match=r"\[seed\]"):
        save_image(_image(), tmp_path, 42, INFOTEXT, pattern="[nope]")


@pytest.mark.parametrize(("count", "rows", "cols"), [(1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 2, 2), (5, 2, 3),
                                                      (6, 2, 3), (8, 3, 3), (9, 3, 3), (10, 3, 4)])
def test_grid_shape(count: int, rows: int, cols: int) -> None:
    grid = make_grid([_image(size=(16, 8)) for _ in range(count)])
    assert grid.size == (cols * 16, rows * 8)


def test_grid_rows_and_placement() -> None:
    colors = ["red", "green", "blue"]
    grid = make_grid([_image(c) for c in colors], rows=1)
    assert grid.size == (24, 8)
    assert [grid.getpixel((x, 4)) for x in (4, 12, 20)] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    assert make_grid([_image()] * 2, rows=5).size == (8, 16)  # no more rows than images
    assert grid_rows(4, 4) == 4
    with pytest.raises(UserError, match="at least 1 row"):
        make_grid([_image()], rows=0)


def test_save_grid(tmp_path: Path) -> None:
    grid = make_grid([_image()] * 4)
    first = save_grid(grid, tmp_path, INFOTEXT)
    save_image(_image(), tmp_path, 1, INFOTEXT)
    second = save_grid(grid, tmp_path)
    assert (first.name, second.name) == ("grid-0000.png", "grid-0001.png")
    assert first.parent == dated_folder(tmp_path)
    assert read_infotext(first) == INFOTEXT
    assert sorted(p.name for p in first.parent.iterdir()) == ["00000-1.png", "grid-0000.png", "grid-0001.png"]


def test_the_file_naming_setting_names_generated_files(tmp_path: Path) -> None:
    from modules.context import AppContext, Paths
    from modules.processing.params import Txt2ImgParams
    from tests.tiny_models import CPU, write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion", "sd1", stem="tiny", seed=0)
    ctx = AppContext.create(Paths.make(data_dir=tmp_path), CPU)
    ctx.options.update({"samples_filename_pattern": "[seed]-[prompt_words]"})
    result = ctx.generate(Txt2ImgParams(prompt="red circle", seed=42, steps=2, width=64, height=64))
    assert [p.name for p in result.paths] == ["00000-42-red circle.png"]
    assert result.paths[0].parent.parent == tmp_path / "outputs" / "txt2img-images"
