"""Example extension: "Caption stamp" writes a line of text on a bar at the bottom of each picture.

It shows the three kinds of hooks (see docs/extensions.md):
  * a setting (the text; empty = the prompt), shown in the Extensions tab;
  * a script: a checkbox in every generation tab that switches the stamp on for that generation;
  * an image hook: draws the bar on each finished picture, before it is saved.
Copy this folder into extensions/ under a new name to start your own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image, ImageDraw

EXTRA_KEY = "caption_stamp"  # our key in params.extra; other extensions use their own
BAR_COLOUR = (0, 0, 0)
TEXT_COLOUR = (255, 255, 255)


def stamp(image: Image.Image, text: str) -> Image.Image:
    """The picture with a black bar (1/8 of its height, at least 10 px) and `text` on it."""
    out = image.convert("RGB")
    bar = max(10, out.height // 8)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, out.height - bar, out.width, out.height), fill=BAR_COLOUR)
    draw.text((2, out.height - bar + 1), text, fill=TEXT_COLOUR)
    return out


def register(api: Any) -> None:
    """Called once at start-up with the program's ExtensionAPI."""
    text_setting = api.add_setting("text", default="", label="Caption stamp: text (empty = the prompt)")

    def build_script(mode: str) -> Any:
        # Gradio is imported here, not at the top: the command line loads extensions without a page.
        import gradio as gr

        from modules.ui.hooks import ScriptControls

        enabled = gr.Checkbox(False, label="Stamp a caption on the pictures", elem_id=f"{mode}_caption_stamp")

        def apply(params: Any, values: list[Any]) -> Any:
            return replace(params, extra={**params.extra, EXTRA_KEY: bool(values[0])})

        return ScriptControls(inputs=[enabled], apply=apply)

    def on_image(image: Image.Image, infotext: str, params: Any) -> Image.Image | None:
        if not params.extra.get(EXTRA_KEY):
            return None  # not asked for: keep the picture as it is
        return stamp(image, text_setting.value or params.prompt)

    api.add_script("Caption stamp", build_script)
    api.on_image(on_image)
