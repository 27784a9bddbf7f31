"""Labelled grids: cells in rows and columns, column labels above, row labels on the left.

Labels use PIL's built-in font, so no font file is needed; the margins grow to fit the text.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

PAD = 6  # pixels around label text
FONT_SIZE = 14


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(FONT_SIZE)


def text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=_font())
    return right - left, bottom - top


def label_margins(col_labels: Sequence[str], row_labels: Sequence[str]) -> tuple[int, int]:
    """(left, top) margins: room for the widest row label and the tallest column label; 0 without labels."""
    left = max((text_size(t)[0] for t in row_labels if t), default=0)
    top = max((text_size(t)[1] for t in col_labels if t), default=0)
    return (left + 2 * PAD if left else 0), (top + 2 * PAD if top else 0)


def labelled_grid(cells: Sequence[Sequence[Image.Image]], col_labels: Sequence[str] = (),
                  row_labels: Sequence[str] = (), margin: int = 0) -> Image.Image:
    """`cells[row][col]` on a white canvas, `margin` pixels between cells, labels drawn in black."""
    rows, cols = len(cells), max(len(r) for r in cells)
    cell_w = max(im.width for r in cells for im in r)
    cell_h = max(im.height for r in cells for im in r)
    left, top = label_margins(col_labels, row_labels)
    grid = Image.new("RGB", (left + cols * cell_w + (cols - 1) * margin, top + rows * cell_h + (rows - 1) * margin),
                     "white")
    draw = ImageDraw.Draw(grid)
    font = _font()
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (left + c * (cell_w + margin), top + r * (cell_h + margin)))
    for c, text in enumerate(col_labels):
        x = left + c * (cell_w + margin) + cell_w // 2
        draw.multiline_text((x, top // 2), text, fill="black", font=font, anchor="mm", align="center")
    for r, text in enumerate(row_labels):
        y = top + r * (cell_h + margin) + cell_h // 2
        draw.multiline_text((left // 2, y), text, fill="black", font=font, anchor="mm", align="center")
    return grid
