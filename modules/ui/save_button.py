"""The results' Save button (A1111's 💾): the selected picture into the "save" folder, with a log.csv line.

The folder is the setting outdir_save (default log/images in the data folder); each saved picture keeps
its infotext, in the format and name pattern of the saving settings, and log.csv beside it gets a row
with A1111's columns, so a list of kept pictures and their parameters builds up there.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.images import save_image
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.output import save_dir
from modules.ui.common import error_html, info_html

LOG_COLUMNS = ("prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
               "sd_model_name", "sd_model_hash")


def save_selected(ctx: AppContext, state: dict[str, Any] | None) -> tuple[str, Path]:
    """Save the selected result; (message, path). A ValueError when there is nothing to save."""
    if not state or not state.get("images"):
        raise ValueError("Nothing to save yet: generate first.")
    index = min(state.get("index") or 0, len(state["images"]) - 1)
    image, text, seed = state["images"][index], state["infotexts"][index], state["seeds"][index]
    options = ctx.options.options
    folder = save_dir(options, ctx.paths.data_dir)
    path = save_image(image, folder, seed, text, options.samples_format, options.samples_filename_pattern,
                      add_number=options.save_images_add_number, quality=options.jpeg_quality,
                      pnginfo=options.enable_pnginfo)
    _log(folder / "log.csv", text, path)
    return f"Saved: {path.name}", path


def _log(file: Path, infotext: str, path: Path) -> None:
    prompt, negative, fields = parse_infotext(infotext)
    values = infotext_to_params(fields)
    new = not file.exists()
    with open(file, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(LOG_COLUMNS)
        writer.writerow([prompt, values.get("seed", ""), values.get("width", ""), values.get("height", ""),
                         values.get("sampler_name", ""), values.get("cfg_scale", ""), values.get("steps", ""),
                         path.name, negative, fields.get("Model", ""), fields.get("Model hash", "")])


def wire_save_button(ctx: AppContext, button: gr.Button, state: gr.State, message: gr.HTML, file: gr.File) -> None:
    def on_save(current: dict[str, Any] | None) -> tuple[str, Any]:
        try:
            text, path = save_selected(ctx, current)
        except (ValueError, OSError) as exc:
            return error_html(str(exc)), gr.File(visible=False)
        return info_html(text), gr.File(value=str(path), visible=True)

    button.click(on_save, inputs=state, outputs=[message, file], concurrency_limit=None, show_progress="hidden",
                 api_visibility="undocumented")
