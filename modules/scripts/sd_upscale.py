"""SD upscale (img2img): upscale the picture with an upscaler, then redraw it tile by tile with
img2img at the tab's size; tiles overlap and are blended with linear ramps, so no seams show.

Arguments (A1111's order): info (a label, ignored), overlap, upscaler (name or index into the
upscaler list), scale_factor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from modules.errors import UserError
from modules.processing.params import GenerationParams, Img2ImgParams, InpaintParams
from modules.processing.run import GenerationResult
from modules.sampling.noise import resolve_seed
from modules.scripts.base import Script, ScriptArg

if TYPE_CHECKING:
    from modules.context import AppContext


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours sharing >= `overlap` pixels."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(size: int, start: int, tile: int, length: int, overlap: int) -> np.ndarray:
    """Weights along one side of a tile: rising over `overlap` pixels where a neighbour overlaps it."""
    w = np.ones(tile, dtype=np.float64)
    ramp = np.linspace(0, 1, overlap + 2)[1:-1] if overlap > 0 else np.array([])
    if start > 0 and len(ramp):
        w[:len(ramp)] = ramp
    if start + tile < length and len(ramp):
        w[-len(ramp):] = np.minimum(w[-len(ramp):], ramp[::-1])
    return w[:size]


def blend_tiles(size: tuple[int, int], tiles: list[tuple[int, int, Image.Image]], overlap: int) -> Image.Image:
    """Tiles at (x, y) joined into one picture of `size`, weighted averages where they overlap."""
    width, height = size
    total = np.zeros((height, width, 3))
    weight = np.zeros((height, width, 1))
    for x, y, tile in tiles:
        pixels = np.asarray(tile.convert("RGB"), dtype=np.float64)
        th, tw = pixels.shape[:2]
        w = np.outer(_ramp(th, y, th, height, overlap), _ramp(tw, x, tw, width, overlap))[..., None]
        total[y:y + th, x:x + tw] += pixels * w
        weight[y:y + th, x:x + tw] += w
    return Image.fromarray(np.clip(total / np.maximum(weight, 1e-8), 0, 255).round().astype(np.uint8))


class SDUpscale(Script):
    title = "SD upscale"
    modes = ("img2img",)
    args = (
        ScriptArg("info", "Info", "str", ""),
        ScriptArg("overlap", "Tile overlap", "int", 64, minimum=0, maximum=256, step=16),
        ScriptArg("upscaler", "Upscaler", "str", "Lanczos"),
        ScriptArg("scale_factor", "Scale Factor", "float", 2.0, minimum=1.0, maximum=4.0, step=0.05),
    )

    def parse_args(self, raw: Any) -> dict[str, Any]:
        # A1111 sends the upscaler as an index into its list; names are accepted too.
        if isinstance(raw, list) and len(raw) > 2 and isinstance(raw[2], int) and not isinstance(raw[2], bool):
            raw = [*raw[:2], str(raw[2]), *raw[3:]]
        return super().parse_args(raw)

    def run(self, ctx: AppContext, params: GenerationParams, args: dict[str, Any]) -> GenerationResult:
        if not isinstance(params, Img2ImgParams) or isinstance(params, InpaintParams) or params.init_image is None:
            raise UserError("SD upscale works on img2img with a picture and no mask.")
        name = args["upscaler"]
        upscalers = [u.name for u in ctx.upscalers.pixel_upscalers()]
        if name.isdigit() and name not in upscalers:
            index = int(name)
            if index >= len(upscalers):
                raise UserError(f"SD upscale: upscaler index {index} is out of range; upscalers: {', '.join(upscalers)}.")
            name = upscalers[index]
        if name == "None":
            name = "Lanczos"  # "None" upscales nothing in A1111 either: a plain resize
        source = params.init_image.convert("RGB")
        size = (_round8(source.width * args["scale_factor"]), _round8(source.height * args["scale_factor"]))
        big = ctx.upscalers.upscale_image(source, size, name)
        tile_w = params.width or min(size[0], 512)
        tile_h = params.height or min(size[1], 512)
        tile_w, tile_h = min(tile_w, size[0]), min(tile_h, size[1])
        overlap = min(args["overlap"], tile_w // 2, tile_h // 2)
        seed = resolve_seed(params.seed)
        tiles: list[tuple[int, int, Image.Image]] = []
        texts: list[str] = []
        interrupted = False
        for y in tile_starts(size[1], tile_h, overlap):
            for x in tile_starts(size[0], tile_w, overlap):
                crop = big.crop((x, y, x + tile_w, y + tile_h))
                done = ctx.generate(replace(params, init_image=crop, width=tile_w, height=tile_h, seed=seed,
                                            batch_size=1, batch_count=1, save=False, save_grid=False))
                if not done.images:
                    interrupted = True
                    break
                tiles.append((x, y, done.images[0]))
                texts.append(done.infotexts[0])
                interrupted = done.interrupted
            if interrupted:
                break
        if interrupted:  # keep what is done: the upscaled picture with the finished tiles on it
            tiles = [(0, 0, big), *tiles]
        image = blend_tiles(size, tiles, overlap)
        text = texts[0].replace(f"Size: {tile_w}x{tile_h}", f"Size: {size[0]}x{size[1]}") if texts else ""
        if texts:
            text += f", SD upscale overlap: {overlap}, SD upscale upscaler: {name}"
        result = GenerationResult(images=[image], infotexts=[text], seeds=[seed], params=params,
                                  interrupted=interrupted)
        if params.save and ctx.options.options.samples_save:
            result.paths.append(ctx.output(params.mode).save(image, seed, text))
        return result


def _round8(value: float) -> int:
    return max(64, int(round(value / 8)) * 8)
