"""Command-line generation: `python webui.py txt2img|img2img|inpaint|outpaint [flags]`.

Each sub-command maps its flags onto the same params dataclass the UI and the API build, and calls
`ctx.generate`. The saved PNG paths are the only thing written to stdout (one per line), so the
command can be piped into other tools; logs and progress bars go to stderr.

This module is imported by webui.py before any flag is parsed, so it stays light at import time:
torch, diffusers and PIL are imported inside the functions that need them, and `--help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.sampling.schedule_types import SCHEDULE_LABELS

if TYPE_CHECKING:
    from PIL import Image

    from modules.context import AppContext
    from modules.models.discovery import CheckpointInfo
    from modules.models.registry import ModelRegistry
    from modules.processing.params import GenerationParams

log = logging.getLogger(__name__)

MODES = ("txt2img", "img2img", "inpaint", "outpaint")

# Choice lists as A1111 spells them in its UI. The processing layer's params module owns the
# canonical lists (tests check these match); they are repeated here only for --help, which must not
# import torch. Input is matched case-insensitively, and A1111's API indexes (0, 1, ...) work too.
RESIZE_MODES_HELP = ("just resize", "crop and resize", "resize and fill")
MASKED_CONTENT_HELP = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS_HELP = ("whole picture", "only masked")
OUTPAINT_FILLS_HELP = ("edge", "mean", "noise")


@dataclass(frozen=True)
class Flag:
    """One generation flag: where it goes in the params and which modes take it.

    `default` is only shown in --help: an omitted flag is left out of the params, so the
    dataclass default (one source of truth for the UI, API and CLI) applies.
    """

    flag: str
    field: str
    type: Callable[[str], Any] | None
    help: str
    modes: tuple[str, ...] = MODES
    default: Any = None
    short: str | None = None


_IMG = ("img2img", "inpaint")
_PIXELS = ("img2img", "inpaint", "outpaint")


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(f'"{v}"' for v in values)


FLAGS: tuple[Flag, ...] = (
    Flag("--prompt", "prompt", str, "what to draw (A1111 syntax: (word:1.2), [word], BREAK, <lora:name:1>)",
         default="", short="-p"),
    Flag("--negative-prompt", "negative_prompt", str, "what not to draw", default="", short="-n"),
    Flag("--sampler", "sampler", str, 'sampler name as in A1111, e.g. "Euler a", "DPM++ 2M", "DDIM"',
         default="DPM++ 2M"),
    Flag("--schedule-type", "schedule_type", str, "noise schedule as in A1111: " + ", ".join(SCHEDULE_LABELS),
         default="Automatic"),
    Flag("--steps", "steps", int, "sampling steps", default=20),
    Flag("--cfg-scale", "cfg_scale", float, "classifier-free guidance scale", default=7.0),
    Flag("--seed", "seed", int, "seed; -1 picks a random one (the one used is in the PNG's infotext)",
         default=-1),
    Flag("--subseed", "subseed", int, "variation seed; -1 picks a random one", default=-1),
    Flag("--subseed-strength", "subseed_strength", float, "variation strength, 0 to 1", default=0.0),
    Flag("--width", "width", int, "image width, a multiple of 8; 0 = the model's native size "
         "(img2img/inpaint: the init image's size)", default=0),
    Flag("--height", "height", int, "image height, a multiple of 8; 0 = as for --width", default=0),
    Flag("--batch-size", "batch_size", int, "images per batch (made together)", default=1),
    Flag("--batch-count", "batch_count", int, "number of batches (made one after another)", default=1),
    Flag("--clip-skip", "clip_skip", int, "CLIP skip: stop at the N-th last text-encoder layer (SD1)",
         default=1),
    Flag("--init-image", "init_image", str, "the starting picture (PNG, JPEG or WebP file); required",
         _PIXELS),
    Flag("--denoising-strength", "denoising_strength", float,
         "how much to change the picture, 0 (keep) to 1 (replace); default 0.75 (outpaint 0.9; txt2img: "
         "the hires. fix pass, 0.7)", MODES),
    Flag("--enable-hr", "enable_hr", None, "hires. fix: generate, upscale, then a second pass at the larger size",
         ("txt2img",)),
    Flag("--hr-scale", "hr_scale", float, "hires. fix upscale factor", ("txt2img",), default=2.0),
    Flag("--hr-upscaler", "hr_upscaler", str, 'hires. fix upscaler: "Latent", "Lanczos", or a model in '
         "models/ESRGAN", ("txt2img",), default="Latent"),
    Flag("--hr-second-pass-steps", "hr_second_pass_steps", int, "hires. fix steps; 0 = --steps", ("txt2img",),
         default=0),
    Flag("--hr-resize-x", "hr_resize_x", int, "hires. fix target width instead of --hr-scale", ("txt2img",),
         default=0),
    Flag("--hr-resize-y", "hr_resize_y", int, "hires. fix target height instead of --hr-scale", ("txt2img",),
         default=0),
    Flag("--tiling", "tiling", None, "seamless: the picture's edges continue each other"),
    Flag("--restore-faces", "restore_faces", None, "restore faces with GFPGAN or CodeFormer (files in models/GFPGAN, "
         "models/Codeformer, models/facedetection)"),
    Flag("--face-restorer", "face_restorer", str, '"CodeFormer" or "GFPGAN"; default: the face_restoration_model '
         "setting"),
    Flag("--codeformer-weight", "codeformer_weight", float, "CodeFormer weight, 0 (strongest) to 1 (weakest); "
         "default: the code_former_weight setting"),
    Flag("--styles", "styles", str, 'styles from styles.csv, comma-separated: "Sharp,Warm"'),
    Flag("--refiner-checkpoint", "refiner_checkpoint", str, "a second checkpoint for the last steps (SDXL refiner)"),
    Flag("--refiner-switch-at", "refiner_switch_at", float, "fraction of the steps after which the refiner takes over",
         default=0.8),
    Flag("--resize-mode", "resize_mode", str, f"how the init image is fitted to --width/--height: "
         f"{_choices(RESIZE_MODES_HELP)}", _IMG, default=RESIZE_MODES_HELP[0]),
    Flag("--mask", "mask", str, "the mask picture, same size as the init image: white = repaint; "
         "required", ("inpaint",)),
    Flag("--mask-blur", "mask_blur", int, "mask blur in pixels", ("inpaint", "outpaint"), default=4),
    Flag("--masked-content", "masked_content", str, f"what the masked area starts from: "
         f"{_choices(MASKED_CONTENT_HELP)}", ("inpaint",), default="original"),
    Flag("--inpaint-area", "inpaint_area", str, f"{_choices(INPAINT_AREAS_HELP)}", ("inpaint",),
         default=INPAINT_AREAS_HELP[0]),
    Flag("--only-masked-padding", "only_masked_padding", int, 'padding in pixels around the mask for '
         '--inpaint-area "only masked"', ("inpaint",), default=32),
    Flag("--invert-mask", "invert_mask", None, "repaint what is black in the mask instead", ("inpaint",)),
    Flag("--outpaint-left", "left", int, "pixels to add on the left", ("outpaint",), default=0),
    Flag("--outpaint-right", "right", int, "pixels to add on the right", ("outpaint",), default=0),
    Flag("--outpaint-top", "top", int, "pixels to add at the top", ("outpaint",), default=0),
    Flag("--outpaint-bottom", "bottom", int, "pixels to add at the bottom", ("outpaint",), default=0),
    Flag("--outpaint-fill", "fill", str, f"how the new area starts: {_choices(OUTPAINT_FILLS_HELP)}",
         ("outpaint",), default=OUTPAINT_FILLS_HELP[0]),
)

_MODE_HELP = {
    "txt2img": "make pictures from a prompt",
    "img2img": "change a picture guided by a prompt (--init-image)",
    "inpaint": "repaint the white area of --mask in --init-image",
    "outpaint": "extend --init-image by --outpaint-left/right/top/bottom pixels",
}

# Fields given as a choice name; A1111's API passes them as indexes into these lists.
_CHOICE_FIELDS = ("resize_mode", "masked_content", "inpaint_area", "fill")


def add_subcommands(subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = (),
                    ) -> None:
    """Add txt2img / img2img / inpaint / outpaint; `parents` carry the global flags (--ckpt, --outdir...)."""
    for mode in MODES:
        parser = subparsers.add_parser(mode, help=_MODE_HELP[mode], description=_MODE_HELP[mode],
                                       parents=list(parents))
        group = parser.add_argument_group(f"{mode} options")
        for flag in FLAGS:
            if mode not in flag.modes:
                continue
            names = [flag.short, flag.flag] if flag.short else [flag.flag]
            if flag.type is None:
                group.add_argument(*names, dest=flag.field, action="store_true", default=None, help=flag.help)
                continue
            shown = "" if flag.default is None else f" (default: {flag.default})"
            required = flag.field in ("init_image", "mask")
            group.add_argument(*names, dest=flag.field, type=flag.type, default=None, required=required,
                               metavar=_metavar(flag), help=flag.help + shown)
        group.add_argument("--override-settings", dest="override_settings", action="append", default=[],
                           metavar="KEY=VALUE",
                           help="a setting for this run only, as A1111's override_settings; VALUE is JSON "
                                "(true, 31337, 0.5, \"text\"; plain text also works); repeatable, e.g. "
                                "--override-settings sgm_noise_multiplier=true --override-settings "
                                "eta_noise_seed_delta=31337")
        group.add_argument("--script", metavar="NAME", default=None,
                           help="run a script as the tab's Script menu does: \"X/Y/Z plot\", \"Prompt matrix\""
                                + (", \"SD upscale\"" if mode != "txt2img" else ""))
        group.add_argument("--script-arg", dest="script_args", action="append", default=[], metavar="KEY=VALUE",
                           help="a value of the script, by the names of A1111's API (/sdapi/v1/script-info), "
                                "repeatable, e.g. --script-arg x_type=Steps --script-arg x_values=10,20,30")
        parser.set_defaults(mode=mode)
    from modules.models.merge_cli import add_merge_parser
    from modules.training.lora.cli import add_train_lora_parser  # light: torch loads when it runs

    add_train_lora_parser(subparsers, parents)
    add_merge_parser(subparsers, parents)


def _metavar(flag: Flag) -> str:
    if flag.field in ("init_image", "mask"):
        return "FILE"
    if flag.field in _CHOICE_FIELDS:
        return "NAME"
    return {int: "N", float: "X"}.get(flag.type, "TEXT")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ inputs

def load_image(path: str | Path, what: str) -> Image.Image:
    """An image file fully read into memory and turned upright (EXIF), or a UserError naming the file."""
    from PIL import Image, ImageOps

    from modules.errors import UserError

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"The {what} file {file} does not exist.")
    try:
        with Image.open(file) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return upright if upright is not image else image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"Cannot read the {what} {file}: {exc}. Use a PNG, JPEG or WebP picture.") from exc


def _choice(value: str, allowed: tuple[str, ...]) -> str:
    text = value.strip()
    if text.isdigit() and int(text) < len(allowed):
        return allowed[int(text)]
    return text.lower()  # anything else is checked (and refused with the list) by validate()


def _key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` strings to a dict; VALUE is JSON where it parses (true, 3, 0.5), else plain text."""
    import json

    from modules.errors import UserError

    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} "
                            + ("sgm_noise_multiplier=true." if flag == "--override-settings" else "x_type=Steps."))
        try:
            value = json.loads(text)
        except ValueError:
            value = text  # plain text for string values, e.g. sd_vae=my.safetensors
        values[key.strip()] = value
    return values


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to checked settings (a UserError names a malformed item, an unknown key
    or a value of the wrong type)."""
    from modules.options import checked_changes

    return checked_changes(_key_values(items, "--override-settings"))


def build_params(args: argparse.Namespace) -> GenerationParams:
    """The params dataclass for `args.mode` from the flags that were given; images are loaded here."""
    from modules.processing import params as P

    cls = {"txt2img": P.Txt2ImgParams, "img2img": P.Img2ImgParams, "inpaint": P.InpaintParams,
           "outpaint": P.OutpaintParams}[args.mode]
    allowed = {"resize_mode": P.RESIZE_MODES, "masked_content": P.MASKED_CONTENT,
               "inpaint_area": P.INPAINT_AREAS, "fill": P.OUTPAINT_FILLS}
    values: dict[str, Any] = {}
    for flag in FLAGS:
        value = getattr(args, flag.field, None)
        if args.mode not in flag.modes or value is None:
            continue
        if flag.field == "init_image":
            value = load_image(value, "init image")
            value = value if value.mode == "RGB" else value.convert("RGB")
        elif flag.field == "mask":
            value = load_image(value, "mask")  # its mode is kept: an alpha channel can be the mask
        elif flag.field in _CHOICE_FIELDS:
            value = _choice(value, allowed[flag.field])
        elif flag.field == "styles":
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        values[flag.field] = value
    return cls(**values, override_settings=parse_overrides(getattr(args, "override_settings", None) or []))


def resolve_checkpoint(registry: ModelRegistry, value: str) -> CheckpointInfo:
    """`--ckpt` as A1111 takes it (a file path) or a name from the model folders; it becomes the
    model loaded first."""
    from modules.errors import CheckpointError, UserError

    path = Path(value).expanduser()
    if path.is_file():
        return registry.add_file(path, prefer=True)
    try:
        info = registry.find(value)
    except UserError as exc:
        if path.is_absolute() or len(path.parts) > 1 or path.suffix.lower() in (".safetensors", ".ckpt"):
            raise CheckpointError(f"Checkpoint file not found: {path}. Give the path of a .safetensors or "
                                  ".ckpt file, or the name of one in the models/Stable-diffusion folder.") from exc
        raise
    registry.preferred = info
    return info


# ------------------------------------------------------------------------------------------ running

def run(ctx: AppContext, args: argparse.Namespace) -> int:
    """Generate for a sub-command; prints the saved paths on stdout and returns the exit code."""
    from modules.errors import UserError

    if args.mode == "train-lora":
        from modules.training.lora.cli import run_train_lora

        return run_train_lora(ctx, args)
    if args.mode == "merge":
        from modules.models.merge_cli import run_merge

        return run_merge(ctx, args)

    # Libraries sometimes print; keep stdout for the file list so scripts can trust it.
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        params = build_params(args).validate()  # bad flags fail here, before any model is loaded
        outdir = getattr(args, "outdir", None)
        if outdir:
            # The flag wins over the Settings' output folders for this run only (never saved): the
            # pictures go to <outdir>/<mode>-images.
            ctx.options.update({key: "" for key in ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples",
                                                     "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids")},
                               save=False)
        start = time.perf_counter()
        if getattr(args, "script", None):
            from modules.scripts.registry import find_script, run_script

            script = find_script(args.script, args.mode)
            result = run_script(ctx, script, params, script.parse_args(_key_values(args.script_args, "--script-arg")))
        else:
            if getattr(args, "script_args", None):
                raise UserError("--script-arg needs --script NAME (e.g. --script \"X/Y/Z plot\").")
            result = ctx.generate(params)
        if not result.paths and result.grid_path is None:
            raise UserError("No image was made." if not result.interrupted else "Interrupted before any image was made.")
        log.info("%d image(s) in %.1fs, seeds %s, saved under %s", len(result.paths), time.perf_counter() - start,
                 ", ".join(map(str, result.seeds)), ctx.outdir)
    for path in ([result.grid_path] if result.grid_path else []) + result.paths:
        print(path, file=real_stdout)
    real_stdout.flush()
    return 0
