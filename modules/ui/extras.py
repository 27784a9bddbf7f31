"""The Extras tab: upscale a finished picture with one or two upscalers (model files included), then
restore its faces with GFPGAN and/or CodeFormer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.context import AppContext
from modules.images import save_image
from modules.postprocessing import ExtrasParams, postprocess
from modules.ui.common import REFRESH, describe_exception, error_html, info_html

MODES = ("Scale by", "Scale to")


@dataclass
class ExtrasTab:
    image: gr.Image
    result: gr.Image
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    run: gr.Button
    message: gr.HTML


def run_extras(ctx: AppContext, image: Image.Image | None, mode: str, scale: float, width: float, height: float,
               crop: bool, upscaler_1: str, upscaler_2: str, visibility: float, gfpgan_visibility: float = 0.0,
               codeformer_visibility: float = 0.0, codeformer_weight: float = 0.0) -> tuple[Image.Image | None, str, str]:
    """(processed picture, info line, message html) for the Upscale button; errors become the message."""
    if image is None:
        return None, "", error_html("Drop a picture into Source first.")
    params = ExtrasParams(resize_mode=MODES.index(mode), scale=float(scale), width=int(width), height=int(height),
                          crop=bool(crop), upscaler_1=upscaler_1 or "None", upscaler_2=upscaler_2 or "None",
                          upscaler_2_visibility=float(visibility), gfpgan_visibility=float(gfpgan_visibility),
                          codeformer_visibility=float(codeformer_visibility), codeformer_weight=float(codeformer_weight))
    try:
        with ctx.registry.lock:  # the device is shared with generation
            result, info = postprocess(ctx.upscalers, ctx.faces, image, params)
        saved = save_image(result, ctx.extras_dir, 0, info or None, pattern="")
    except Exception as exc:  # noqa: BLE001 - shown in the page, the server keeps running
        return None, "", error_html(describe_exception(exc))
    return result, info, info_html(f"Saved {saved.name} ({result.width}x{result.height}).")


def _faces_note(ctx: AppContext) -> str:
    """Which restorers can run; for the others, which file to put where."""
    return "  \n".join(f"**{f.name}**: ready" if f.available else f.missing for f in ctx.faces.listing())


def build_extras_tab(ctx: AppContext) -> ExtrasTab:
    names = [u.name for u in ctx.upscalers.pixel_upscalers()]
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(label="Source", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                             elem_id="extras_image", height=360)
            mode = gr.Radio(list(MODES), value=MODES[0], label="Resize", elem_id="extras_resize_mode")
            scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
            with gr.Row():
                width = gr.Number(512, label="Width", precision=0, minimum=1, elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, label="Height", precision=0, minimum=1, elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                refresh = gr.Button(REFRESH, size="sm", min_width=40, elem_id="extras_refresh_upscalers")
            visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                   elem_id="extras_upscaler_2_visibility")
            with gr.Accordion("Face restoration", open=False, elem_id="extras_face_restoration"):
                faces_note = gr.Markdown(_faces_note(ctx), elem_id="extras_faces_note")
                gfpgan = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                                   elem_id="extras_gfpgan_visibility")
                codeformer = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                       elem_id="extras_codeformer_visibility")
                codeformer_weight = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                              label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                              elem_id="extras_codeformer_weight")
            run = gr.Button("Upscale", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Image(label="Result", type="pil", interactive=False, elem_id="extras_result", height=420,
                              format="png")
            info = gr.Textbox(label="Info", interactive=False, elem_id="extras_info")
            message = gr.HTML("", elem_id="extras_message")

    def on_run(*values: Any) -> tuple[Any, str, str]:
        return run_extras(ctx, *values)

    run.click(on_run, inputs=[image, mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility, gfpgan,
                              codeformer, codeformer_weight],
              outputs=[result, info, message], concurrency_id="generate", concurrency_limit=1,
              api_name="extras", show_progress="minimal")

    def on_refresh(first: str, second: str) -> tuple[gr.Dropdown, gr.Dropdown, str]:
        ctx.upscalers.refresh()
        fresh = [u.name for u in ctx.upscalers.pixel_upscalers()]
        return (gr.Dropdown(choices=fresh, value=first if first in fresh else "None"),
                gr.Dropdown(choices=fresh, value=second if second in fresh else "None"), _faces_note(ctx))

    refresh.click(on_refresh, inputs=[upscaler_1, upscaler_2], outputs=[upscaler_1, upscaler_2, faces_note],
                  concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")
    return ExtrasTab(image=image, result=result, upscaler_1=upscaler_1, upscaler_2=upscaler_2, run=run,
                     message=message)
