"""PNG Info: drop a picture, read the parameters stored in it, send them to a generation tab."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from modules.images import read_infotext
from modules.ui.paste import Source

NO_PARAMETERS = "This picture has no generation parameters (no 'parameters' text chunk or EXIF comment)."


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    send_to: dict[str, gr.Button]


def read_picture(path: str | None) -> Source:
    """(picture, infotext) of an uploaded file; the infotext is None when the file has none."""
    if not path:
        return None, None
    with Image.open(path) as image:
        text = read_infotext(image)
        picture = image.convert("RGB")
    return picture, text


def build_png_info_tab() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            # A file path, not a decoded picture: gradio hands over the uploaded file untouched,
            # so the text chunk / EXIF with the parameters is still in it.
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=420)
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_parameters",
                                    buttons=["copy"])
            with gr.Row():
                send_to = {mode: gr.Button(f"Send to {label}", size="sm", elem_id=f"pnginfo_send_to_{mode}")
                           for mode, label in (("txt2img", "txt2img"), ("img2img", "img2img"),
                                               ("inpaint", "inpaint"), ("outpaint", "outpaint"))}

    def show(path: str | None) -> str:
        if not path:
            return ""
        _, text = read_picture(path)
        return text if text is not None else NO_PARAMETERS

    image.change(show, inputs=image, outputs=parameters, concurrency_limit=None, show_progress="hidden",
                 api_visibility="undocumented")
    return PngInfoTab(image=image, parameters=parameters, send_to=send_to)
