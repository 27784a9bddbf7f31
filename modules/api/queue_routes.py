"""The queue over HTTP with the routes and shapes of the agent-scheduler extension, so its clients work,
and A1111's `/internal/progress` for a task id.

    POST /agent-scheduler/v1/queue/txt2img | img2img   A1111's body + checkpoint, callback_url -> {task_id}
    GET  /agent-scheduler/v1/queue                     pending (with positions) and the running task
    GET  /agent-scheduler/v1/task/{id}                 {success, data: task}; .../position
    GET  /agent-scheduler/v1/task/{id}/results         {success, data: [{image, infotext}]} (?zip=true)
    GET  /agent-scheduler/v1/history                   finished tasks, newest first
    POST /agent-scheduler/v1/task/{id}/requeue | run | bookmark | unbookmark | rename, .../move/{over_id}
    POST /agent-scheduler/v1/queue/pause | resume | clear; /history/clear; /task/requeue-failed
    DELETE /agent-scheduler/v1/task/{id}               removes a queued task, interrupts the running one

Statuses as agent-scheduler names them: pending, running, done, failed, interrupted (and cancelled).
Answers that find nothing are agent-scheduler's {"success": false, "message": ...} with status 200.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from modules.api.auth import Credentials, auth_dependency
from modules.api.jobs import open_queue, prepared_request
from modules.api.models import Img2ImgRequest, Txt2ImgRequest
from modules.api.routes import ApiRoute
from modules.context import AppContext
from modules.queue.store import Job

PREFIX = "/agent-scheduler/v1"


class QueueTxt2Img(Txt2ImgRequest):
    checkpoint: str | None = Field(default=None, description="Checkpoint for this task (title or name).")
    callback_url: str | None = Field(default=None, description="Receives the result (multipart POST) when done.")
    name: str | None = None


class QueueImg2Img(Img2ImgRequest):
    checkpoint: str | None = None
    callback_url: str | None = None
    name: str | None = None


class ProgressRequest(BaseModel):
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


def _status(job: Job) -> str:
    return "pending" if job.status == "queued" else job.status


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def task_model(job: Job, position: int | None = None, progress: float | None = None) -> dict[str, Any]:
    """agent-scheduler's TaskModel, with this queue's attempts, times, progress and error added."""
    params = {k: v for k, v in job.request.items() if k not in ("init_images", "mask", "alwayson_scripts", "script_args")}
    params["checkpoint"] = job.checkpoint
    result = {"images": job.files, "infotexts": job.infotexts} if job.status == "done" else None
    return {
        "id": job.id, "api_task_id": None, "api_task_callback": job.callback_url, "name": job.name,
        "type": job.kind, "status": _status(job), "params": params, "priority": int(job.priority * 1000),
        "position": position, "result": None if result is None else json.dumps(result),
        "bookmarked": job.bookmarked, "created_at": _iso(job.created), "updated_at": _iso(job.finished or job.started),
        "attempts": job.attempts, "started_at": _iso(job.started), "finished_at": _iso(job.finished),
        "progress": job.progress if progress is None else progress, "error": job.error, "worker": job.worker,
    }


def _image_data_url(path: Path) -> str:
    kind = path.suffix.lower().lstrip(".").replace("jpg", "jpeg")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def build_queue_router(ctx: AppContext, credentials: Credentials) -> APIRouter:
    dependencies = [Depends(auth_dependency(credentials))] if credentials else []
    router = APIRouter(route_class=ApiRoute, dependencies=dependencies, tags=["queue"])

    def queue():  # noqa: ANN202 - the app's QueueRunner, opened on first use
        return open_queue(ctx)

    def running_progress(job: Job) -> float:
        current = queue().current
        if current is not None and current.id == job.id and ctx.control.state.active:
            return ctx.control.state.fraction
        return job.progress

    def enqueue(kind: str, body: QueueTxt2Img | QueueImg2Img) -> dict[str, str]:
        extra = {"checkpoint": body.checkpoint, "callback_url": body.callback_url, "name": body.name}
        request = Txt2ImgRequest if kind == "txt2img" else Img2ImgRequest
        req = request.model_validate(body.model_dump(exclude_unset=True, exclude=set(extra)))
        # Results must outlive the request: queued tasks always save their pictures (agent-scheduler does too).
        req = req.model_copy(update={"save_images": True})
        data = prepared_request(ctx, kind, req)
        data["save_images"] = True
        job = queue().submit(kind, data, job_id=req.force_task_id or None, **extra)
        return {"task_id": job.id}

    @router.post(f"{PREFIX}/queue/txt2img")
    def queue_txt2img(body: QueueTxt2Img) -> dict[str, str]:
        return enqueue("txt2img", body)

    @router.post(f"{PREFIX}/queue/img2img")
    def queue_img2img(body: QueueImg2Img) -> dict[str, str]:
        return enqueue("img2img", body)

    @router.get(f"{PREFIX}/queue")
    def queue_status(limit: int = 20, offset: int = 0) -> dict[str, Any]:
        runner = queue()
        current = runner.current
        pending = runner.store.pending(limit, offset)
        tasks = [task_model(job, offset + i) for i, job in enumerate(pending)]
        if current is not None:
            running = runner.store.get(current.id)
            if running is not None:
                tasks.insert(0, task_model(running, None, running_progress(running)))
        return {"current_task_id": current.id if current else None, "pending_tasks": tasks,
                "total_pending_tasks": runner.store.count("queued"), "paused": runner.paused}

    @router.get(f"{PREFIX}/history")
    def history(status: str | None = None, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        statuses = ("done", "failed", "interrupted", "cancelled") if status in (None, "", "all", "bookmarked") \
            else (status,)
        jobs, total = queue().store.history(statuses, limit, offset)
        if status == "bookmarked":
            jobs = [j for j in jobs if j.bookmarked]
        return {"tasks": [task_model(j) for j in jobs], "total": total}

    def found(task_id: str) -> Job | None:
        return queue().store.get(task_id)

    @router.get(PREFIX + "/task/{task_id}")
    def get_task(task_id: str) -> dict[str, Any]:
        job = found(task_id)
        if job is None:
            return {"success": False, "message": "Task not found"}
        return {"success": True, "data": task_model(job, queue().store.position(task_id), running_progress(job))}

    @router.get(PREFIX + "/task/{task_id}/position")
    def get_position(task_id: str) -> dict[str, Any]:
        job = found(task_id)
        if job is None:
            return {"success": False, "message": "Task not found"}
        return {"success": True, "data": {"status": _status(job), "position": queue().store.position(task_id)}}

    @router.get(PREFIX + "/task/{task_id}/results", response_model=None)
    def get_results(task_id: str, as_zip: bool = Query(False, alias="zip")) -> Any:  # noqa: B008
        job = found(task_id)
        if job is None:
            return {"success": False, "message": "Task not found"}
        if job.status != "done":
            return {"success": False, "message": f"Task is {_status(job)}"}
        texts = job.infotexts + [""] * (len(job.files) - len(job.infotexts))
        files = [(Path(f), t) for f, t in zip(job.files, texts, strict=True) if Path(f).is_file()]
        if as_zip:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for path, _ in files:
                    archive.write(path, path.name)
            buffer.seek(0)
            return StreamingResponse(buffer, media_type="application/zip",
                                     headers={"Content-Disposition": f"attachment; filename=results-{task_id}.zip"})
        return {"success": True, "data": [{"image": _image_data_url(p), "infotext": t or ""} for p, t in files]}

    @router.post(PREFIX + "/task/{task_id}/requeue")
    def requeue(task_id: str) -> dict[str, Any]:
        if found(task_id) is None:
            return {"success": False, "message": "Task not found"}
        job = queue().store.requeue(task_id)
        queue().wake()
        return {"success": True, "message": "Task requeued", "task_id": job.id}

    @router.post(PREFIX + "/task/requeue-failed")
    def requeue_failed() -> dict[str, Any]:
        failed, _ = queue().store.history(("failed",), limit=100000)
        for job in failed:
            queue().store.requeue(job.id)
        queue().wake()
        if not failed:
            return {"success": False, "message": "No failed tasks"}
        return {"success": True, "message": f"Requeued {len(failed)} failed tasks"}

    @router.post(PREFIX + "/task/{task_id}/run")
    def run_now(task_id: str) -> dict[str, Any]:
        job = found(task_id)
        if job is None or job.status != "queued":
            return {"success": False, "message": "Task not found" if job is None else f"Task is {_status(job)}"}
        queue().store.move(task_id, "top")
        queue().wake()
        return {"success": True, "message": "Task is executing" if not queue().paused else "Task moved to the top"}

    @router.delete(PREFIX + "/task/{task_id}")
    def delete_task(task_id: str) -> dict[str, Any]:
        job = found(task_id)
        if job is None:
            return {"success": False, "message": "Task not found"}
        done = queue().cancel(task_id) if job.status in ("queued", "running") else \
            ("deleted" if queue().store.delete(task_id) else "kept")
        return {"success": True, "message": "Task interrupted" if done == "interrupted" else "Task deleted"}

    @router.post(PREFIX + "/task/{task_id}/move/{over_id}")
    def move(task_id: str, over_id: str) -> dict[str, Any]:
        if found(task_id) is None or (over_id not in ("top", "bottom") and found(over_id) is None):
            return {"success": False, "message": "Task not found"}
        queue().store.move(task_id, over_id)
        return {"success": True, "message": {"top": "Task moved to top", "bottom": "Task moved to bottom"}.get(
            over_id, "Task moved")}

    @router.post(PREFIX + "/task/{task_id}/bookmark")
    def bookmark(task_id: str) -> dict[str, Any]:
        ok = queue().store.set_bookmark(task_id, True)
        return {"success": ok, "message": "Task bookmarked" if ok else "Task not found"}

    @router.post(PREFIX + "/task/{task_id}/unbookmark")
    def unbookmark(task_id: str) -> dict[str, Any]:
        ok = queue().store.set_bookmark(task_id, False)
        return {"success": ok, "message": "Task unbookmarked" if ok else "Task not found"}

    @router.post(PREFIX + "/task/{task_id}/rename")
    def rename(task_id: str, name: str) -> dict[str, Any]:
        ok = queue().store.rename(task_id, name)
        return {"success": ok, "message": "Task renamed." if ok else "Task not found"}

    @router.post(f"{PREFIX}/queue/pause")
    def pause() -> dict[str, Any]:
        queue().pause()
        return {"success": True, "message": "Queue paused."}

    @router.post(f"{PREFIX}/queue/resume")
    def resume() -> dict[str, Any]:
        queue().resume()
        return {"success": True, "message": "Queue resumed."}

    @router.post(f"{PREFIX}/queue/clear")
    def clear_queue() -> dict[str, Any]:
        queue().store.clear_pending()
        return {"success": True, "message": "Queue cleared."}

    @router.post(f"{PREFIX}/history/clear")
    def clear_history() -> dict[str, Any]:
        queue().store.clear_history()
        return {"success": True, "message": "History cleared."}

    @router.post("/internal/progress")
    def internal_progress(req: ProgressRequest = Body(default_factory=ProgressRequest)) -> dict[str, Any]:  # noqa: B008
        """A1111's progress of one task: active / queued / completed, progress, eta, live preview."""
        runner = queue()
        job = runner.store.get(req.id_task) if req.id_task else None
        current = runner.current
        active = job is not None and current is not None and current.id == job.id
        queued = job is not None and job.status == "queued"
        completed = job is not None and job.status in ("done", "failed", "interrupted", "cancelled")
        if not active:
            text = "Waiting..." if not queued else f"In queue... ({runner.store.position(job.id) or 0} ahead)"
            return {"active": False, "queued": queued, "completed": completed, "progress": None, "eta": None,
                    "live_preview": None, "id_live_preview": -1, "textinfo": text}
        state = ctx.control.state
        preview, preview_id = None, req.id_live_preview
        if req.live_preview and state.preview is not None:
            buffer = io.BytesIO()
            state.preview.save(buffer, format="PNG")
            preview = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            preview_id = state.step
        return {"active": True, "queued": False, "completed": False, "progress": state.fraction,
                "eta": state.eta_seconds, "live_preview": preview, "id_live_preview": preview_id,
                "textinfo": f"Step {state.step}/{state.steps}"}

    return router

