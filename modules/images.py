"""Saving images and grids the way A1111 lays them out, with the infotext inside the file.

    outputs/txt2img-images/2024-05-01/00000-1234.png
    outputs/txt2img-images/2024-05-01/00001-1235.png
    outputs/txt2img-images/2024-05-01/grid-0000.png

Each file's number is one more than the highest number already in its folder (A1111 counts
images and grids separately). A file is written under a temporary name in the same folder and
then linked to its final name, which fails instead of overwriting when the name is taken; the
writer then takes the next number. So a crash never leaves a half-written image under a real
name and two writers never replace each other's images.
"""

from __future__ import annotations

import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from modules.errors import UserError

# File type -> PIL format. PNG keeps the infotext in a text chunk; JPEG and WebP in EXIF.
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
INFOTEXT_KEY = "parameters"
DEFAULT_PATTERN = "[seed]"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_MAX_PROMPT_IN_NAME = 128

# Serialises choosing + claiming numbers between the threads of this process, so concurrent
# saves get distinct numbers, not only distinct names. Other processes are kept from
# overwriting by the exclusive link alone.
_claim_lock = threading.Lock()


def _extension(extension: str) -> tuple[str, str]:
    ext = extension.lower().lstrip(".")
    if ext not in FORMATS:
        raise UserError(f"Cannot save images as {extension!r}; allowed: {', '.join(FORMATS)}.")
    return ext, FORMATS[ext]


def next_sequence_number(folder: Path, prefix: str = "") -> int:
    """One more than the highest number of the files named `<prefix>NUMBER...` in `folder`.

    As A1111: for images (no prefix) the leading digits of any name count ("00012-42.png"),
    for grids those after "grid-"; names without a leading number are skipped.
    """
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        if first.isdigit():
            highest = max(highest, int(first))
    return highest + 1


def _sanitize(text: str, max_length: int = _MAX_PROMPT_IN_NAME) -> str:
    # Characters Windows or POSIX refuse in names, and control characters, become "_".
    text = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", text)
    return text[:max_length].strip(" .")


def _pattern_values(seed: int, infotext: str | None) -> dict[str, Callable[[], str]]:
    from modules.processing.infotext import parse_infotext

    parsed = parse_infotext(infotext) if infotext else ("", "", {})
    prompt, _, fields = parsed
    size = fields.get("Size", "x").split("x")
    return {
        "seed": lambda: str(seed),
        "date": lambda: datetime.now().strftime("%Y-%m-%d"),
        "datetime": lambda: datetime.now().strftime("%Y%m%d%H%M%S"),
        "prompt": lambda: _sanitize(re.sub(r"\s+", "_", prompt.strip())),
        "prompt_spaces": lambda: _sanitize(prompt.replace("\n", " ")),
        "prompt_words": lambda: _sanitize(" ".join(re.findall(r"\w+", prompt)[:8])),
        "model_name": lambda: _sanitize(fields.get("Model", "")),
        "model_hash": lambda: _sanitize(fields.get("Model hash", "")),
        "sampler": lambda: _sanitize(fields.get("Sampler", "")),
        "steps": lambda: _sanitize(fields.get("Steps", "")),
        "cfg": lambda: _sanitize(fields.get("CFG scale", "")),
        "width": lambda: _sanitize(size[0]),
        "height": lambda: _sanitize(size[-1]),
    }


def expand_pattern(pattern: str, seed: int, infotext: str | None = None) -> str:
    """The name part after the number, from A1111-style tags such as "[seed]-[prompt_words]"."""
    values = _pattern_values(seed, infotext)

    def replace(match: re.Match[str]) -> str:
        tag = match[1].lower()
        if tag not in values:
            raise UserError(f"Unknown filename tag [{match[1]}]; allowed: {', '.join(f'[{t}]' for t in values)}.")
        return values[tag]()

    return _sanitize(re.sub(r"\[([^\[\]]+)\]", replace, pattern), 200)


def _pnginfo(infotext: str | None) -> PngImagePlugin.PngInfo | None:
    if infotext is None:
        return None
    info = PngImagePlugin.PngInfo()
    # add_text switches to an iTXt chunk by itself when the text is not Latin-1.
    info.add_text(INFOTEXT_KEY, infotext)
    return info


def _exif(infotext: str) -> Image.Exif:
    exif = Image.Exif()
    # EXIF UserComment with the "UNICODE" charset marker and UTF-16 text, as A1111 (piexif) writes it.
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
    return exif


def _write(image: Image.Image, fileobj: BinaryIO, pil_format: str, infotext: str | None, quality: int = 80,
           pnginfo: bool = True) -> None:
    if pil_format == "PNG":
        # A1111's enable_pnginfo: off, PNGs carry no parameters (JPEG/WebP keep their EXIF comment, as there).
        image.save(fileobj, format="PNG", pnginfo=_pnginfo(infotext) if pnginfo else None)
        return
    if pil_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    kwargs = {"quality": int(quality)} if pil_format in ("JPEG", "WEBP") else {}
    if infotext is not None:
        kwargs["exif"] = _exif(infotext)
    image.save(fileobj, format=pil_format, **kwargs)


def _claim(temp: Path, folder: Path, make_name: Callable[[int], str], prefix: str | None) -> Path:
    """Give `temp` the first free numbered name, never replacing an existing file (`prefix` None: start
    at 0 rather than after the highest number in the folder)."""
    with _claim_lock:
        number = next_sequence_number(folder, prefix) if prefix is not None else 0
        while True:
            target = folder / make_name(number)
            try:
                os.link(temp, target)
            except FileExistsError:
                number += 1  # taken by another process since the scan
                continue
            except OSError:
                # File systems without hard links (FAT, some shares): claim the name with an
                # exclusive create, then atomically put the finished file over the placeholder.
                # (A real I/O problem fails again below and is raised from there.)
                try:
                    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    number += 1
                    continue
                os.replace(temp, target)
                return target
            os.unlink(temp)
            return target


def _save_numbered(
    image: Image.Image,
    folder: Path,
    extension: str,
    infotext: str | None,
    make_name: Callable[[int], str],
    prefix: str | None,
    quality: int = 80,
    pnginfo: bool = True,
) -> Path:
    ext, pil_format = _extension(extension)
    folder.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would stay on the image; this one follows the umask.
    temp = folder / f".saving-{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fileobj:
            _write(image, fileobj, pil_format, infotext, quality, pnginfo)
            fileobj.flush()
            os.fsync(fileobj.fileno())
        return _claim(temp, folder, lambda n: f"{make_name(n)}.{ext}", prefix)
    finally:
        if temp.exists():
            temp.unlink()


def dated_folder(outdir: Path, now: datetime | None = None) -> Path:
    """outdir/YYYY-MM-DD, A1111's default "save to a subdirectory" layout."""
    return Path(outdir) / (now or datetime.now()).strftime("%Y-%m-%d")


def save_image(
    image: Image.Image,
    outdir: Path,
    seed: int,
    infotext: str | None,
    extension: str = "png",
    pattern: str = DEFAULT_PATTERN,
    *,
    add_number: bool = True,
    quality: int = 80,
    pnginfo: bool = True,
) -> Path:
    """Save as outdir/YYYY-MM-DD/NNNNN-<pattern>.<ext> (00000-1234.png) with the infotext inside.

    `pattern` takes A1111 filename tags ([seed], [prompt_words], [model_name], [sampler], [steps],
    [cfg], [width], [height], [date], [datetime], ...), filled from `seed` and the infotext.
    Without `add_number` the name is the pattern alone, and a name already taken gets "-1", "-2"...
    (A1111 would overwrite it). `quality`: JPEG/WebP; `pnginfo` off: no parameters in a PNG.
    """
    decoration = expand_pattern(pattern, seed, infotext)
    if not add_number and decoration:
        return _save_numbered(image, dated_folder(outdir), extension, infotext,
                              lambda n: decoration if n == 0 else f"{decoration}-{n}", None, quality, pnginfo)
    suffix = f"-{decoration}" if decoration else ""
    return _save_numbered(image, dated_folder(outdir), extension, infotext, lambda n: f"{n:05}{suffix}", "",
                          quality, pnginfo)


def save_grid(grid: Image.Image, outdir: Path, infotext: str | None = None, extension: str = "png", *,
              quality: int = 80, pnginfo: bool = True) -> Path:
    """Save a grid (see `make_grid`) as outdir/YYYY-MM-DD/grid-NNNN.<ext>."""
    return _save_numbered(grid, dated_folder(outdir), extension, infotext, lambda n: f"grid-{n:04}", "grid-",
                          quality, pnginfo)


def _decode_user_comment(raw: bytes | str) -> str | None:
    if isinstance(raw, str):
        return raw
    head, body = raw[:8], raw[8:]
    if head == b"UNICODE\0":
        # piexif writes big-endian; some tools write little-endian with a BOM.
        if body.startswith(b"\xff\xfe"):
            return body[2:].decode("utf-16-le", errors="replace")
        return body.decode("utf-16-be", errors="replace")
    if head in (b"ASCII\0\0\0", b"\0" * 8):
        return body.decode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


def read_infotext(source: str | os.PathLike[str] | Image.Image) -> str | None:
    """The infotext stored in an image file or an opened PIL image, or None when it has none."""
    if isinstance(source, Image.Image):
        return _infotext_of(source)
    with Image.open(source) as image:
        return _infotext_of(image)


def _infotext_of(image: Image.Image) -> str | None:
    text = image.info.get(INFOTEXT_KEY)
    if isinstance(text, str):
        return text
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if comment:
        return _decode_user_comment(comment)
    return None


def grid_rows(count: int, rows: int | None = None) -> int:
    """A1111's default: round(sqrt(count)) rows, so the grid comes out near-square."""
    if rows is None:
        rows = max(1, round(math.sqrt(count)))
    elif rows < 1:
        raise UserError(f"A grid needs at least 1 row, got {rows}.")
    return min(rows, count)


def make_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Images left to right, top to bottom on a black RGB canvas; cells take the largest size."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    rows = grid_rows(len(images), rows)
    cols = math.ceil(len(images) / rows)
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (i % cols * width, i // cols * height))
    return grid
