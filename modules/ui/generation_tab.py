"""One generation tab (txt2img, img2img, inpaint or outpaint): prompts, settings, Generate, results.

The layout follows A1111: prompts with the Generate / Interrupt / Skip buttons on top, the
settings on the left, the gallery with its send-to buttons and the infotext on the right.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gradio as gr

from modules.context import AppContext
from modules.controlnet.units import unit_count
from modules.errors import UserError
from modules.processing.params import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_STEPS
from modules.sampling.samplers import SCHEDULE_TYPES, list_samplers, sampler_info
from modules.ui import everyday, modes
from modules.ui.common import build_seed_row, error_html, info_html, loaded_native_size
from modules.ui.controlnet_ui import ControlNetPanel, build_controlnet
from modules.ui.hooks import ScriptControls, ScriptHook, apply_scripts
from modules.ui.networks import build_networks_panel
from modules.ui.progress import ProgressOutputs, run_with_progress
from modules.ui.save_button import wire_save_button
from modules.ui.scripts_ui import ScriptSelector, build_script_selector

SIZE_SLIDER_MAX = 2048  # A1111's slider range


@dataclass
class GenerationTab:
    """The components of one tab that other parts of the page read or fill (paste, send-to, settings)."""

    mode: str
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule_type: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    width: gr.Slider | None
    height: gr.Slider | None
    batch_size: gr.Slider
    batch_count: gr.Slider
    image: gr.components.Component | None
    extras: dict[str, gr.components.Component]
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    outputs: ProgressOutputs
    send_to: dict[str, gr.Button] = field(default_factory=dict)  # target mode -> button
    controlnet: ControlNetPanel | None = None  # the ControlNet accordion's units (modules/ui/controlnet_ui.py)

    def page_defaults(self, ctx: AppContext) -> dict[gr.components.Component, Any]:
        """Values a newly opened page starts from: the Settings defaults (and, for txt2img, the
        loaded model's size), which may have changed since the page was built."""
        opts = ctx.options.options
        values: dict[gr.components.Component, Any] = {
            self.sampler: opts.default_sampler, self.schedule_type: opts.default_scheduler,
            self.steps: opts.default_steps}
        native = loaded_native_size(ctx)
        if self.mode == "txt2img" and native and self.width is not None and self.height is not None:
            values.update({self.width: native, self.height: native})
        return values

    def paste_fields(self) -> dict[str, gr.components.Component]:
        """Infotext parameter name (A1111 API names) -> the component it fills in this tab."""
        fields: dict[str, gr.components.Component] = {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "steps": self.steps,
            "sampler_name": self.sampler, "scheduler": self.schedule_type, "cfg_scale": self.cfg_scale,
            "seed": self.seed,
        }
        if self.width is not None and self.height is not None:
            fields.update(width=self.width, height=self.height)
        if "denoising_strength" in self.extras:
            fields["denoising_strength"] = self.extras["denoising_strength"]
        for name, component in self.extras.items():  # hires. fix, tiling, refiner: same names as infotext's
            if name not in fields and name != "styles":
                fields[name] = component
        for paste_name, name in everyday.PASTE_NAMES.items():
            if name in self.extras:
                fields[paste_name] = self.extras[name]
        return fields


def _int_slider(label: str, low: int, high: int, value: int, elem_id: str, step: int = 1,
                info: str | None = None) -> gr.Slider:
    return gr.Slider(low, high, value=value, step=step, precision=0, label=label, elem_id=elem_id, info=info)


def build_generation_tab(ctx: AppContext, mode: str, default_size: int,
                         scripts: Sequence[ScriptHook] = ()) -> GenerationTab:
    """Build the tab's components inside the open `gr.Tab` and wire Generate / Interrupt / Skip.

    `default_size` is the width/height shown at first (0 = native / the input picture's size)."""
    opts = ctx.options.options
    with gr.Row(elem_id=f"{mode}_toprow"):
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{mode}_prompt",
                                placeholder="Prompt (what to draw)")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{mode}_neg_prompt",
                                  placeholder="Negative prompt (what to avoid)")
        with gr.Column(scale=1, min_width=200, elem_classes="generate-box"):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{mode}_generate",
                                 elem_classes="generate-button")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{mode}_interrupt", size="sm", min_width=60)
                skip = gr.Button("Skip", elem_id=f"{mode}_skip", size="sm", min_width=60)
                enqueue = gr.Button("Enqueue", elem_id=f"{mode}_enqueue", size="sm", min_width=60)
    with gr.Accordion("LoRA / Embeddings", open=False, elem_id=f"{mode}_networks"):
        build_networks_panel(ctx, prompt, elem_prefix=f"{mode}_networks")

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id=f"{mode}_settings"):
            image = modes.build_image_input(mode)
            extras = modes.build_extras(mode)
            with gr.Row():
                sampler = gr.Dropdown([s.name for s in list_samplers()], value=opts.default_sampler,
                                      label="Sampling method", elem_id=f"{mode}_sampling")
                schedule = gr.Dropdown(list(SCHEDULE_TYPES), value=opts.default_scheduler,
                                       label="Schedule type", elem_id=f"{mode}_scheduler")
            steps = _int_slider("Sampling steps", 1, MAX_STEPS, opts.default_steps, f"{mode}_steps")
            width = height = None
            if mode != "outpaint":  # outpaint's size is the picture plus the added pixels
                info = "0 = the model's native size" if mode == "txt2img" else "0 = the input picture's size"
                with gr.Row():
                    width = _int_slider("Width", 0, SIZE_SLIDER_MAX, default_size, f"{mode}_width", 8, info)
                    height = _int_slider("Height", 0, SIZE_SLIDER_MAX, default_size, f"{mode}_height", 8, info)
            with gr.Row():
                batch_count = _int_slider("Batch count", 1, min(MAX_BATCH_COUNT, 100), 1, f"{mode}_batch_count")
                batch_size = _int_slider("Batch size", 1, min(MAX_BATCH_SIZE, 8), 1, f"{mode}_batch_size")
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{mode}_cfg_scale")
            seed_row = build_seed_row(mode)
            if mode == "txt2img":
                extras.update(everyday.build_hires(ctx))
            extras.update(everyday.build_common(ctx, mode, prompt, negative))
            controlnet = build_controlnet(ctx, mode, width, height, image, unit_count(ctx.options.options))
            script_controls = _build_scripts(mode, scripts)
            script_selector = build_script_selector(ctx, mode)

        with gr.Column(scale=1, elem_id=f"{mode}_results"):
            progress = gr.HTML("", elem_id=f"{mode}_progress")
            preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{mode}_preview",
                               height=320)
            gallery = gr.Gallery(label="Output", elem_id=f"{mode}_gallery", columns=4, height=420,
                                 format="png", interactive=False, object_fit="contain", preview=True)
            with gr.Row():
                save = gr.Button("💾 Save", size="sm", elem_id=f"{mode}_save", min_width=60)
                send_to = {target: gr.Button(f"Send to {modes.MODE_LABELS[target]}", size="sm",
                                             elem_id=f"{mode}_send_to_{target}")
                           for target in ("img2img", "inpaint", "outpaint")}
            saved_file = gr.File(label="Saved file", visible=False, interactive=False, elem_id=f"{mode}_saved_file")
            infotext = gr.Textbox(label="Generation info", interactive=False, lines=4, elem_id=f"{mode}_info",
                                  buttons=["copy"])
            message = gr.HTML("", elem_id=f"{mode}_message")
            result = gr.State(None)

    out = ProgressOutputs(gallery=gallery, preview=preview, progress=progress, infotext=infotext,
                          message=message, result=result)
    tab = GenerationTab(mode=mode, prompt=prompt, negative_prompt=negative, sampler=sampler,
                        schedule_type=schedule, steps=steps, cfg_scale=cfg, seed=seed_row.seed, width=width,
                        height=height, batch_size=batch_size, batch_count=batch_count, image=image,
                        extras=extras, generate=generate, interrupt=interrupt, skip=skip, outputs=out,
                        send_to=send_to, controlnet=controlnet)
    _wire(ctx, tab, script_controls, seed_row.reuse, script_selector)
    _wire_enqueue(ctx, tab, enqueue, script_controls, script_selector)
    wire_save_button(ctx, save, result, message, saved_file)
    return tab


def _build_scripts(mode: str, scripts: Sequence[ScriptHook]) -> list[ScriptControls]:
    built = []
    for script in scripts:
        with gr.Accordion(script.title, open=False):
            controls = script.build(mode)
        if controls is not None:
            built.append(controls)
    return built


def _common(tab: GenerationTab) -> dict[str, gr.components.Component]:
    common = {"prompt": tab.prompt, "negative_prompt": tab.negative_prompt, "sampler": tab.sampler,
              "schedule_type": tab.schedule_type, "steps": tab.steps, "cfg_scale": tab.cfg_scale, "seed": tab.seed,
              "batch_size": tab.batch_size, "batch_count": tab.batch_count}
    if tab.width is not None and tab.height is not None:
        common.update(width=tab.width, height=tab.height)
    return common


def _inputs(tab: GenerationTab, scripts: list[ScriptControls], selector: ScriptSelector) -> set[Any]:
    inputs = {*_common(tab).values(), *tab.extras.values(), *(c for s in scripts for c in s.inputs), *selector.inputs}
    if tab.image is not None:
        inputs.add(tab.image)
    if tab.controlnet is not None:
        inputs.update(tab.controlnet.inputs)
    return inputs


def _make_params(ctx: AppContext, tab: GenerationTab, scripts: list[ScriptControls], data: dict[Any, Any]) -> Any:
    """The tab's params from the form's values (what Generate and Enqueue run)."""
    values = {name: data[c] for name, c in _common(tab).items()}
    values["seed"] = int(values["seed"]) if values["seed"] is not None else -1
    for name in ("prompt", "negative_prompt"):  # an empty box may arrive as None
        values[name] = values[name] or ""
    # A1111 keeps the grid switch in Settings; the tab only reads it.
    values["save_grid"] = bool(ctx.options.options.grid_save)
    params = modes.make_params(tab.mode, values, data[tab.image] if tab.image is not None else None,
                               {name: data[c] for name, c in tab.extras.items()})
    if tab.controlnet is not None:
        params = tab.controlnet.apply(params, data)
    return apply_scripts(params, scripts, data)


def _through_queue(ctx: AppContext, params: Any) -> Any:
    """Generate as a job of the queue and wait for it (its client is this page: not retried after a restart)."""
    from modules.queue.params_codec import encode_params

    assert ctx.queue is not None
    kind, request = encode_params(params.validate())
    job = ctx.queue.submit(kind, request, durable=False, wait=True, name=params.prompt[:60] or None)
    return ctx.queue.wait_for(job.id).payload


def _interrupt(ctx: AppContext) -> None:
    ctx.control.interrupt()
    if ctx.queue is not None:  # a job on a Ray Serve replica too (A1111's Interrupt stops what runs)
        ctx.queue.interrupt_running()


def _skip(ctx: AppContext) -> None:
    ctx.control.skip()
    if ctx.queue is not None:
        ctx.queue.skip_running()


def _wire_enqueue(ctx: AppContext, tab: GenerationTab, button: gr.Button, scripts: list[ScriptControls],
                  selector: ScriptSelector) -> None:
    """Enqueue: the tab's settings become a job of the durable queue (see the Queue tab); no waiting."""
    from modules.queue.params_codec import encode_params

    def on_enqueue(data: dict[Any, Any]) -> str:
        try:
            if selector.runner(ctx, data) != ctx.generate:  # a script is chosen
                raise UserError("Scripts run with Generate only; choose None in Script to enqueue.")
            if ctx.queue is None:
                raise UserError("The job queue is not open in this process.")
            params = _make_params(ctx, tab, scripts, data).validate()
            kind, request = encode_params(params)
            job = ctx.queue.submit(kind, request, name=params.prompt[:60] or None)
        except UserError as exc:
            return error_html(str(exc))
        position = ctx.queue.store.position(job.id)
        where = f"position {position}" if position is not None else "running"
        return info_html(f"Queued as task {job.id} ({where}, seed {request['seed']}); see the Queue tab.")

    button.click(on_enqueue, inputs=_inputs(tab, scripts, selector), outputs=tab.outputs.message,
                 concurrency_limit=None, api_visibility="undocumented")


def _wire(ctx: AppContext, tab: GenerationTab, scripts: list[ScriptControls], reuse: gr.Button,
          selector: ScriptSelector) -> None:
    out = tab.outputs
    inputs = _inputs(tab, scripts, selector)

    def on_generate(data: dict[Any, Any]) -> Iterator[dict[Any, Any]]:
        def make() -> Any:
            return _make_params(ctx, tab, scripts, data)

        try:
            run = selector.runner(ctx, data)
        except UserError as exc:
            yield {out.message: error_html(str(exc))}
            return
        if run == ctx.generate and ctx.queue is not None:
            run = partial(_through_queue, ctx)  # a job like every other: in line, recorded, in the history
        yield from run_with_progress(ctx, make, out, run)

    # One generation at a time from the UI, shared by all tabs: a second click (another browser
    # tab, another mode) waits in gradio's queue instead of fighting for the device.
    tab.generate.click(on_generate, inputs=inputs, outputs=[out.gallery, out.preview, out.progress, out.infotext,
                                                           out.message, out.result],
                       concurrency_id="generate", concurrency_limit=1, api_name=tab.mode, show_progress="minimal")
    # Interrupt / Skip must run while the generation holds the queue slot: no limit for them.
    def on_interrupt() -> None:
        _interrupt(ctx)

    def on_skip() -> None:
        _skip(ctx)

    tab.interrupt.click(on_interrupt, inputs=None, outputs=None, concurrency_limit=None,
                        show_progress="hidden", api_visibility="undocumented")
    tab.skip.click(on_skip, inputs=None, outputs=None, concurrency_limit=None,
                   show_progress="hidden", api_visibility="undocumented")

    def on_select(state: dict[str, Any] | None, evt: gr.SelectData) -> tuple[Any, Any]:
        if not state or not isinstance(evt.index, int) or evt.index >= len(state["infotexts"]):
            return gr.skip(), gr.skip()
        return state["infotexts"][evt.index], {**state, "index": evt.index}

    out.gallery.select(on_select, inputs=out.result, outputs=[out.infotext, out.result], concurrency_limit=None,
                       show_progress="hidden", api_visibility="undocumented")

    def on_reuse(state: dict[str, Any] | None) -> Any:
        if not state or not state["seeds"]:
            gr.Warning("No image yet: generate one, then ♻️ reuses its seed.")
            return gr.skip()
        return state["seeds"][state["index"]]

    reuse.click(on_reuse, inputs=out.result, outputs=tab.seed, concurrency_limit=None, show_progress="hidden",
                api_visibility="undocumented")

    def on_sampler(name: str, schedule: str) -> gr.Dropdown:
        # Offer only the schedule types this sampler supports (DDIM has no Karras, ...).
        try:
            allowed = list(sampler_info(name).schedule_types)
        except Exception:  # noqa: BLE001 - an unknown name is reported when generating
            return gr.Dropdown(choices=list(SCHEDULE_TYPES))
        return gr.Dropdown(choices=allowed, value=schedule if schedule in allowed else "Automatic")

    tab.sampler.change(on_sampler, inputs=[tab.sampler, tab.schedule_type], outputs=tab.schedule_type,
                       concurrency_limit=None, show_progress="hidden", api_visibility="undocumented")

