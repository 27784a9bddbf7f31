"""The Queue tab: the running job with its progress and live preview, the pending jobs (reorder, cancel,
pause / resume), and the history (pictures, status, errors, requeue, settings back to their tab).

It reads the durable queue (modules/queue/) on a timer, so a reloaded page shows the running job's
progress again. Jobs come from the API, the agent-scheduler routes and the tabs' Enqueue buttons.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.context import AppContext
from modules.errors import UserError
from modules.queue.runner import QueueRunner
from modules.queue.store import Job
from modules.ui.common import error_html, info_html

PENDING_COLUMNS = ["position", "task id", "type", "prompt", "seed", "queued at"]
HISTORY_COLUMNS = ["task id", "type", "status", "prompt", "pictures", "finished at", "error"]


@dataclass
class QueueTab:
    task_id: gr.Textbox
    send_to: dict[str, gr.Button]


def _queue(ctx: AppContext) -> QueueRunner:
    if ctx.queue is None:
        raise UserError("The job queue is not open in this process.")
    return ctx.queue


def _time(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%H:%M:%S") if stamp else ""


def _prompt(job: Job) -> str:
    return str(job.request.get("prompt", ""))[:80]


def status_html(ctx: AppContext) -> str:
    """One line: paused or running, the running job and its progress."""
    queue = _queue(ctx)
    state = "paused" if queue.paused else "running"
    current = queue.current
    if current is None:
        return info_html(f"Queue {state}; {queue.store.count('queued')} waiting; no job running.")
    progress = ctx.control.state
    fraction = progress.fraction if progress.active else 0.0
    return info_html(f"Queue {state}; running {current.id} ({current.kind}: {_prompt(current)!r}) "
                     f"{fraction * 100:.0f}%, step {progress.step}/{progress.steps}; "
                     f"{queue.store.count('queued')} waiting.")


def pending_rows(ctx: AppContext) -> list[list[Any]]:
    return [[i, job.id, job.kind, _prompt(job), job.request.get("seed", ""), _time(job.created)]
            for i, job in enumerate(_queue(ctx).store.pending(200))]


def history_rows(ctx: AppContext) -> list[list[Any]]:
    jobs, _ = _queue(ctx).store.history(limit=50)
    return [[job.id, job.kind, job.status, _prompt(job), len(job.files), _time(job.finished), job.error or ""]
            for job in jobs]


def job_pictures(ctx: AppContext, task_id: str) -> list[tuple[str, str]]:
    job = _queue(ctx).store.get((task_id or "").strip())
    if job is None:
        return []
    return [(name, text.split("\n", 1)[0]) for name, text in zip(job.files, job.infotexts, strict=False)
            if Path(name).is_file()]


def job_source(ctx: AppContext, task_id: str) -> tuple[Image.Image | None, str | None]:
    """The first picture and infotext of a finished job, for "send to" (its settings into a tab)."""
    job = _queue(ctx).store.get((task_id or "").strip())
    if job is None or not job.infotexts:
        return None, None
    picture = Image.open(job.files[0]) if job.files and Path(job.files[0]).is_file() else None
    return picture, job.infotexts[0]


def act(ctx: AppContext, action: str, task_id: str) -> str:
    """Cancel / move to top / move to bottom / requeue one job; the message to show."""
    queue = _queue(ctx)
    task_id = (task_id or "").strip()
    try:
        if action != "pause" and action != "resume" and not task_id:
            raise UserError("Enter a task id (click a row to fill it in).")
        if action == "cancel":
            return info_html(f"Task {task_id} {queue.cancel(task_id)}.")
        if action in ("top", "bottom"):
            queue.store.move(task_id, action)
            return info_html(f"Task {task_id} moved to the {action}.")
        if action == "requeue":
            job = queue.store.requeue(task_id)
            queue.wake()
            return info_html(f"Queued again as {job.id}.")
        if action == "pause":
            queue.pause()
            return info_html("Queue paused: the running job finishes, no new one starts.")
        queue.resume()
        return info_html("Queue resumed.")
    except UserError as exc:
        return error_html(str(exc))


def build_queue_tab(ctx: AppContext) -> QueueTab:
    with gr.Column(elem_id="queue"):
        status = gr.HTML("", elem_id="queue_status")
        preview = gr.Image(label="Live preview", interactive=False, height=256, elem_id="queue_preview")
        with gr.Row():
            pause = gr.Button("Pause", size="sm", elem_id="queue_pause")
            resume = gr.Button("Resume", size="sm", elem_id="queue_resume")
            refresh = gr.Button("Refresh", size="sm", elem_id="queue_refresh")
        with gr.Row():
            task_id = gr.Textbox(label="Task id", max_lines=1, elem_id="queue_task_id",
                                 placeholder="click a row in the lists below")
            cancel = gr.Button("Cancel / interrupt", size="sm", elem_id="queue_cancel")
            top = gr.Button("Move to top", size="sm", elem_id="queue_top")
            bottom = gr.Button("Move to bottom", size="sm", elem_id="queue_bottom")
            requeue = gr.Button("Requeue", size="sm", elem_id="queue_requeue")
        message = gr.HTML("", elem_id="queue_message")
        pending = gr.Dataframe(headers=PENDING_COLUMNS, interactive=False, label="Pending", elem_id="queue_pending",
                               wrap=True)
        history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, label="History", elem_id="queue_history",
                               wrap=True)
        pictures = gr.Gallery(label="Pictures of the task", columns=4, height=300, elem_id="queue_pictures")
        with gr.Row():
            send_to = {mode: gr.Button(f"Send settings to {mode}", size="sm", elem_id=f"queue_send_to_{mode}")
                       for mode in ("txt2img", "img2img")}
        timer = gr.Timer(1.0)

    def on_refresh() -> tuple[Any, ...]:
        try:
            state = ctx.control.state
            shown = state.preview if state.active and state.preview is not None else None
            return status_html(ctx), pending_rows(ctx), history_rows(ctx), shown
        except UserError as exc:
            return error_html(str(exc)), [], [], None

    outputs = [status, pending, history, preview]
    timer.tick(on_refresh, inputs=None, outputs=outputs, concurrency_limit=None, show_progress="hidden",
               api_visibility="undocumented")
    refresh.click(on_refresh, inputs=None, outputs=outputs, concurrency_limit=None, api_visibility="undocumented")
    for button, action in ((cancel, "cancel"), (top, "top"), (bottom, "bottom"), (requeue, "requeue"),
                           (pause, "pause"), (resume, "resume")):
        button.click(lambda tid, a=action: act(ctx, a, tid), inputs=task_id, outputs=message,
                     concurrency_limit=None, api_visibility="undocumented").then(
            on_refresh, inputs=None, outputs=outputs, api_visibility="undocumented")

    def on_select(evt: gr.SelectData, table: Any) -> tuple[str, list[tuple[str, str]]]:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        values = table.values.tolist() if hasattr(table, "values") else table
        column = 1 if len(values[row]) == len(PENDING_COLUMNS) else 0
        chosen = str(values[row][column])
        return chosen, job_pictures(ctx, chosen)

    for table in (pending, history):
        table.select(on_select, inputs=table, outputs=[task_id, pictures], concurrency_limit=None,
                     api_visibility="undocumented")
    task_id.submit(lambda tid: job_pictures(ctx, tid), inputs=task_id, outputs=pictures, concurrency_limit=None,
                   api_visibility="undocumented")
    return QueueTab(task_id=task_id, send_to=send_to)
