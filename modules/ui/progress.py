"""Run one generation in a worker thread and report its progress to the page while it runs.

Gradio streams each value a generator yields to the browser, so the event handler is a generator:
it starts `ctx.generate` in a thread, then polls `ctx.control.state` a few times a second and
yields the progress line and the live preview, and finally the gallery (or the error).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
from PIL import Image

from modules.context import AppContext
from modules.processing.control import ProgressState
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult
from modules.ui.common import describe_exception, error_html, info_html

POLL_SECONDS = 0.4  # often enough to feel live, rare enough to cost nothing next to a UNet step


@dataclass
class ProgressOutputs:
    """The components one generation tab updates while and after it runs."""

    gallery: gr.Gallery
    preview: gr.Image
    progress: gr.HTML
    infotext: gr.Textbox
    message: gr.HTML
    result: gr.State


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def progress_html(state: ProgressState) -> str:
    """ "Batch 1/2 · step 5/20 · 25% · ETA 00:12" with a bar under it."""
    percent = int(state.fraction * 100)
    parts = []
    if state.job_count > 1:
        parts.append(f"Batch {state.job + 1}/{state.job_count}")
    parts.append(f"Step {state.step}/{state.steps}")
    parts.append(f"{percent}%")
    parts.append(f"ETA {format_eta(state.eta_seconds)}" if state.step else "ETA --:--")
    return (f'<div class="progress-line" id="progress-text">{" · ".join(parts)}</div>'
            f'<div class="progress-bar"><div style="width:{percent}%"></div></div>')


def _waiting_html() -> str:
    return '<div class="progress-line" id="progress-text">Waiting for the model…</div>'


def result_value(result: GenerationResult) -> dict[str, Any]:
    """What the tab keeps of its last run (per browser session): images, infotexts, seeds, selection."""
    return {"images": result.images, "infotexts": result.infotexts, "seeds": result.seeds, "index": 0}


def gallery_images(result: GenerationResult) -> list[Image.Image]:
    # The infotext rides along in the PNG gradio serves, so a picture downloaded from the gallery
    # (or dragged into PNG Info) keeps its parameters, as the saved file does.
    images = []
    for image, text in zip(result.images, result.infotexts, strict=False):
        copy = image.copy()
        copy.info["parameters"] = text
        images.append(copy)
    # ControlNet's detected maps beside the results (after them: the send-to buttons count pictures).
    return images + list(result.detected_maps)


def _done_html(result: GenerationResult, state: ProgressState, seconds: float) -> str:
    count = len(result.images)
    if result.interrupted:
        return info_html(f"Interrupted at step {state.step}/{state.steps} after {seconds:.1f}s; "
                         f"{count} image{'s' * (count != 1)} kept.")
    return info_html(f"Done: {count} image{'s' * (count != 1)} in {seconds:.1f}s.")


def run_with_progress(ctx: AppContext, make_params: Callable[[], GenerationParams],
                      out: ProgressOutputs,
                      run: Callable[[GenerationParams], GenerationResult] | None = None) -> Iterator[dict[Any, Any]]:
    """The body of a Generate click: yields dicts of component -> new value. `run` (a chosen
    script) replaces the plain `ctx.generate`."""
    started = time.monotonic()
    yield {out.message: "", out.progress: _waiting_html(), out.preview: gr.Image(value=None, visible=True)}
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = (run or ctx.generate)(make_params())
        except BaseException as exc:  # noqa: BLE001 - reported in the page, the server keeps running
            box["error"] = exc

    worker = threading.Thread(target=work, name="ui-generate", daemon=True)
    worker.start()
    shown_preview = -1
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        state = ctx.control.state
        # Another client's job may still be finishing; only report ours (it began after our click).
        if not state.active or state.started < started:
            continue
        update: dict[Any, Any] = {out.progress: progress_html(state)}
        if state.preview is not None and state.preview_step != shown_preview:
            shown_preview = state.preview_step
            update[out.preview] = _scaled_preview(state.preview)
        yield update

    seconds = time.monotonic() - started
    hide_preview = gr.Image(value=None, visible=False)
    if "error" in box:
        yield {out.progress: "", out.preview: hide_preview, out.message: error_html(describe_exception(box["error"]))}
        return
    result: GenerationResult = box["result"]
    if ctx.options.options.do_not_show_images:  # A1111's "Do not show any images in gallery": saved, not shown
        result = replace(result, images=[], detected_maps=[])
    yield {
        out.gallery: gr.Gallery(value=gallery_images(result), selected_index=0 if result.images else None),
        out.preview: hide_preview,
        out.progress: _done_html(result, ctx.control.state, seconds),
        out.infotext: result.infotexts[0] if result.infotexts else "",
        out.message: "",
        out.result: result_value(result),
    }


def _scaled_preview(image: Image.Image, side: int = 512) -> Image.Image:
    # Previews are latent-sized (1/8 of the picture); enlarge so the browser does not show a speck.
    scale = max(1, side // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image
