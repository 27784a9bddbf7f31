"""Where and how one request's pictures are written, from the Saving / Paths / Infotext settings.

A1111's folder rule: `outdir_samples`, when set, takes every generated picture; otherwise the tab's
own folder (`outdir_txt2img_samples`, `outdir_img2img_samples` for img2img, inpaint and outpaint);
grids likewise (`outdir_grids`, then the tab's). An empty folder setting means this program's
default, `<outputs>/<mode>-images` and `<outputs>/<mode>-grids`. Relative folders are in the data folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modules.images import DEFAULT_PATTERN, save_grid, save_image
from modules.options import Options

_IMG2IMG_TAB = ("img2img", "inpaint", "outpaint")


@dataclass(frozen=True)
class OutputSettings:
    samples_dir: Path
    grids_dir: Path
    image_format: str = "png"
    filename_pattern: str = DEFAULT_PATTERN
    add_number: bool = True
    jpeg_quality: int = 80
    pnginfo: bool = True
    model_hash_in_info: bool = True
    model_name_in_info: bool = True
    vae_hash_in_info: bool = True
    vae_name_in_info: bool = True

    def save(self, image: Image.Image, seed: int, infotext: str | None, pattern: str | None = None) -> Path:
        return save_image(image, self.samples_dir, seed, infotext, self.image_format,
                          self.filename_pattern if pattern is None else pattern, add_number=self.add_number,
                          quality=self.jpeg_quality, pnginfo=self.pnginfo)

    def save_grid(self, grid: Image.Image, infotext: str | None) -> Path:
        return save_grid(grid, self.grids_dir, infotext, self.image_format, quality=self.jpeg_quality,
                         pnginfo=self.pnginfo)


def _folder(value: str, data_dir: Path) -> Path | None:
    value = value.strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else data_dir / path


def samples_dir(options: Options, mode: str, outputs: Path, data_dir: Path) -> Path:
    tab = options.outdir_img2img_samples if mode in _IMG2IMG_TAB else options.outdir_txt2img_samples
    return (_folder(options.outdir_samples, data_dir) or _folder(tab, data_dir)
            or outputs / f"{mode}-images")


def grids_dir(options: Options, mode: str, outputs: Path, data_dir: Path) -> Path:
    tab = options.outdir_img2img_grids if mode in _IMG2IMG_TAB else options.outdir_txt2img_grids
    return _folder(options.outdir_grids, data_dir) or _folder(tab, data_dir) or outputs / f"{mode}-grids"


def save_dir(options: Options, data_dir: Path) -> Path:
    """Where the results' Save button puts pictures (A1111's outdir_save, default log/images)."""
    return _folder(options.outdir_save, data_dir) or data_dir / "log" / "images"


def extras_dir(options: Options, outputs: Path, data_dir: Path) -> Path:
    return _folder(options.outdir_extras_samples, data_dir) or outputs / "extras-images"


def output_settings(options: Options, mode: str, outputs: Path, data_dir: Path) -> OutputSettings:
    return OutputSettings(
        samples_dir=samples_dir(options, mode, outputs, data_dir), grids_dir=grids_dir(options, mode, outputs, data_dir),
        image_format=options.samples_format, filename_pattern=options.samples_filename_pattern,
        add_number=options.save_images_add_number, jpeg_quality=options.jpeg_quality, pnginfo=options.enable_pnginfo,
        model_hash_in_info=options.add_model_hash_to_info, model_name_in_info=options.add_model_name_to_info,
        vae_hash_in_info=options.add_vae_hash_to_info, vae_name_in_info=options.add_vae_name_to_info)
