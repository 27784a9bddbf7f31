"""The generation tabs' everyday controls: Hires. fix (txt2img), Tiling, Restore faces, Styles and the
Refiner.

Every control is keyed by its params field name, so the tab hands the values straight to the params
dataclass (and paste fills them from an infotext by the same names).
"""

from __future__ import annotations

import gradio as gr

from modules.context import AppContext
from modules.errors import UserError
from modules.processing.params import MAX_STEPS
from modules.sampling.samplers import list_samplers
from modules.styles import StyleStore

SAME_SAMPLER = "Use same sampler"
NO_REFINER = "None"
# Infotext / API parameter name -> the control's params name, where they differ.
PASTE_NAMES = {"hr_sampler_name": "hr_sampler"}


def build_hires(ctx: AppContext) -> dict[str, gr.components.Component]:
    """The Hires. fix accordion (txt2img only)."""
    controls: dict[str, gr.components.Component] = {}
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        controls["enable_hr"] = gr.Checkbox(False, label="Enable", elem_id="txt2img_enable_hr")
        with gr.Row():
            controls["hr_upscaler"] = gr.Dropdown(ctx.upscalers.names(), value="Latent", label="Upscaler",
                                                  elem_id="txt2img_hr_upscaler")
            controls["hr_second_pass_steps"] = gr.Slider(0, MAX_STEPS, value=0, step=1, precision=0,
                                                         label="Hires steps", info="0 = same as sampling steps",
                                                         elem_id="txt2img_hires_steps")
            controls["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                       elem_id="txt2img_denoising_strength")
        with gr.Row():
            controls["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by",
                                             elem_id="txt2img_hr_scale")
            controls["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, precision=0, label="Resize width to",
                                                info="0 = use Upscale by", elem_id="txt2img_hr_resize_x")
            controls["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, precision=0, label="Resize height to",
                                                elem_id="txt2img_hr_resize_y")
        controls["hr_sampler"] = gr.Dropdown([(SAME_SAMPLER, ""), *[(s.name, s.name) for s in list_samplers()]],
                                             value="", label="Hires sampling method", elem_id="txt2img_hr_sampler")
        controls["hr_prompt"] = gr.Textbox("", label="Hires prompt", lines=2, placeholder="empty = the prompt",
                                           elem_id="txt2img_hr_prompt")
        controls["hr_negative_prompt"] = gr.Textbox("", label="Hires negative prompt", lines=2,
                                                    placeholder="empty = the negative prompt",
                                                    elem_id="txt2img_hr_neg_prompt")
    return controls


def build_common(ctx: AppContext, mode: str, prompt: gr.Textbox,
                 negative: gr.Textbox) -> dict[str, gr.components.Component]:
    """Tiling, Styles (with a button writing them into `prompt`/`negative`) and the Refiner accordion."""
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        controls["tiling"] = gr.Checkbox(False, label="Tiling", info="seamless: the edges continue each other",
                                         elem_id=f"{mode}_tiling")
        controls["restore_faces"] = gr.Checkbox(ctx.options.options.face_restoration, label="Restore faces",
                                                info=_faces_info(ctx), elem_id=f"{mode}_restore_faces")
        controls["face_restorer"] = gr.Dropdown([("Setting", ""), ("CodeFormer", "CodeFormer"), ("GFPGAN", "GFPGAN")],
                                                value="", label="Face restorer", elem_id=f"{mode}_face_restorer",
                                                info="Setting: face_restoration_model")
        controls["styles"] = gr.Dropdown(ctx.styles.names(), value=[], multiselect=True, label="Styles",
                                         info="from styles.csv in the data folder", elem_id=f"{mode}_styles")
        # Styles are data, not controls: the button writes them into the prompts (A1111's 📋).
        apply = gr.Button("\U0001f4cb Apply styles to prompt", size="sm", elem_id=f"{mode}_apply_styles",
                          min_width=60)
    controls["styles"].focus(lambda: style_choices(ctx.styles), inputs=None, outputs=controls["styles"],
                             concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")
    _wire_apply_styles(ctx, apply, prompt, negative, controls["styles"])
    with gr.Accordion("Refiner", open=False, elem_id=f"{mode}_refiner"):
        with gr.Row():
            controls["refiner_checkpoint"] = gr.Dropdown(
                [NO_REFINER, *(info.name for info in ctx.registry.checkpoints)], value=NO_REFINER,
                label="Checkpoint", allow_custom_value=True, elem_id=f"{mode}_refiner_checkpoint")
            controls["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                                      elem_id=f"{mode}_refiner_switch_at")
    # A1111's "Override settings": pasting an infotext that records a setting (ENSD, SGM noise
    # multiplier, ...) puts it here, so the pasted parameters give the same picture.
    controls["override_settings"] = gr.Textbox(
        "", label="Override settings", elem_id=f"{mode}_override_settings", max_lines=3,
        placeholder='{"eta_noise_seed_delta": 31337}',
        info="settings for this generation only, as JSON; filled when pasting an infotext that records one")
    return controls


def _faces_info(ctx: AppContext) -> str:
    ready = [f.name for f in ctx.faces.listing() if f.available]
    return f"ready: {', '.join(ready)}" if ready else "needs GFPGAN or CodeFormer files (see the Extras tab)"


def style_choices(store: StyleStore) -> gr.Dropdown:
    """The styles dropdown refreshed from the file (styles.csv may have been edited)."""
    return gr.Dropdown(choices=store.names())


def apply_styles(store: StyleStore, prompt: str | None, negative: str | None,
                 names: list[str] | None) -> tuple[str, str, list[str]]:
    """The prompts with the selected styles written into them, and the selection emptied."""
    new_prompt, new_negative = store.apply(list(names or []), prompt or "", negative or "")
    return new_prompt, new_negative, []


def _wire_apply_styles(ctx: AppContext, button: gr.Button, prompt: gr.Textbox, negative: gr.Textbox,
                       styles: gr.Dropdown) -> None:
    def on_click(p: str | None, n: str | None, names: list[str] | None) -> tuple[object, object, object]:
        try:
            return apply_styles(ctx.styles, p, n, names)
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), gr.skip()

    button.click(on_click, inputs=[prompt, negative, styles], outputs=[prompt, negative, styles],
                 concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")
