"""Generation requests as jobs of the durable queue (modules/queue/).

`/sdapi/v1/txt2img` and `/img2img` check a request, resolve its random seeds, queue it and wait for
it (a job that is not retried after a restart: its client is gone by then); the agent-scheduler routes
queue it and answer at once. Either way the queue's worker runs `execute_job`, the one place where a
request becomes pictures, and records each picture as it is written.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modules.api import mapping
from modules.api.models import GenerationRequest, ImageResponse, Img2ImgRequest, Txt2ImgRequest
from modules.api.scripts import take_script
from modules.context import AppContext
from modules.errors import UserError
from modules.images import make_grid
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult
from modules.queue.params_codec import PREFIX as PARAMS_PREFIX
from modules.queue.params_codec import decode_params
from modules.queue.runner import Execute, JobOutcome, QueueRunner, SavedHook
from modules.queue.store import Job, JobStore
from modules.sampling.noise import resolve_seed
from modules.scripts.registry import run_script

log = logging.getLogger(__name__)

REQUESTS: dict[str, type[GenerationRequest]] = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest}
QUEUE_FILE = "queue.sqlite3"
_open_lock = threading.Lock()


def open_queue(ctx: AppContext, execute: Execute | None = None, workers: int = 1,
               on_interrupt: Callable[[str], None] | None = None,
               on_skip: Callable[[str], None] | None = None) -> QueueRunner:
    """The app's queue (data folder's queue.sqlite3), opened once: recovers after a crash, starts its
    workers. By default one worker runs jobs on this machine (`execute_job`); Ray Serve replicas come
    with their own `execute` and `on_interrupt` (modules/workers/ray_serve.py)."""
    with _open_lock:
        if ctx.queue is None:
            options = ctx.options.options
            store = JobStore(ctx.paths.data_dir / QUEUE_FILE)
            runner = QueueRunner(store, execute or (lambda job, saved: execute_job(ctx, job, saved)),
                                 max_attempts=options.queue_max_attempts,
                                 paused_after_crash=options.queue_paused_after_crash,
                                 on_interrupt=on_interrupt or (lambda _job_id: ctx.control.interrupt()),
                                 on_finished=send_callback, workers=workers, on_skip=on_skip)
            runner.start()
            ctx.queue = runner
        return ctx.queue


def _params(ctx: AppContext, kind: str, req: GenerationRequest) -> tuple[GenerationRequest, Any, dict[str, Any],
                                                                            GenerationParams]:
    req = mapping.apply_infotext(req)
    plain, script, args = take_script(req, kind)
    params = mapping.txt2img_params(ctx, plain) if kind == "txt2img" else mapping.img2img_params(ctx, plain)
    return req, script, args, params


def prepared_request(ctx: AppContext, kind: str, req: GenerationRequest) -> dict[str, Any]:
    """The request as the job stores it: checked now (a mistake is a 4xx before anything is queued), with
    its random seeds drawn, so that the job, and a retry of it, makes the pictures the client was told of."""
    req, _, _, params = _params(ctx, kind, req)
    params.validate()
    data = req.model_dump(mode="json", exclude_unset=True)
    data.pop("force_task_id", None)
    if req.seed == -1:
        data["seed"] = resolve_seed(-1)
    if req.subseed == -1 and req.subseed_strength > 0:
        data["subseed"] = resolve_seed(-1)
    return data


def job_request(ctx: AppContext, job: Job, here: bool = True) -> tuple[GenerationRequest, Any, dict[str, Any],
                                                                      GenerationParams]:
    """(request, script, script arguments, params) of a queued job, on whichever machine runs it. Not
    `here`: for the entry point saving what a worker made, which need not have the job's checkpoint."""
    req = REQUESTS[job.kind].model_validate(job.request)
    overrides = dict(req.override_settings or {})
    if job.checkpoint:  # agent-scheduler's `checkpoint`: this job's model
        overrides["sd_model_checkpoint"] = job.checkpoint
    if not here:
        overrides.pop("sd_model_checkpoint", None)
    req = req.model_copy(update={"override_settings": overrides or req.override_settings})
    return _params(ctx, job.kind, req)


@dataclass(frozen=True)
class ParsedJob:
    """A job's request made into params once: `req` and `script` are None for a UI tab's job."""

    params: GenerationParams
    req: GenerationRequest | None = None
    script: Any = None
    args: dict[str, Any] = field(default_factory=dict)


def parse_job(ctx: AppContext, job: Job, here: bool = True) -> ParsedJob:
    """The job's params (and API request and script), built once per machine that handles it."""
    if job.kind.startswith(PARAMS_PREFIX):  # from the UI's Enqueue button
        return ParsedJob(decode_params(job.kind, job.request))
    req, script, args, params = job_request(ctx, job, here)
    return ParsedJob(params, req, script, args)


class Recorder:
    """An `on_saved` hook that also keeps the files and infotexts, for the job's outcome."""

    def __init__(self, on_saved: SavedHook | None = None) -> None:
        self.on_saved = on_saved
        self.files: list[str] = []
        self.infotexts: list[str] = []

    def __call__(self, path: Path, infotext: str) -> None:
        self.files.append(str(path))
        self.infotexts.append(infotext)
        if self.on_saved is not None:
            self.on_saved(path, infotext)


def compute(ctx: AppContext, job: ParsedJob, on_saved: SavedHook | None = None, save: bool = True) -> GenerationResult:
    """Generate a job's pictures; with `save` they are written here as they come (`on_saved` told of each),
    without (a Ray replica) the machine that owns the queue writes them (`save_result`)."""
    params = job.params if save else replace(job.params, save=False)
    if job.script is not None:
        return run_script(ctx, job.script, params, job.args)
    return ctx.generate(params, on_saved=on_saved)


def save_result(ctx: AppContext, params: GenerationParams, result: GenerationResult, on_saved: SavedHook) -> None:
    """Write a result computed elsewhere as this machine's settings say (grids first, as scripts return them)."""
    if not params.save:
        return
    options = ctx.options.effective(params.override_settings)
    if not options.samples_save:
        return
    output = ctx.output(params.mode, options)
    for index, (image, text) in enumerate(zip(result.images, result.infotexts, strict=False)):
        seed = result.seeds[index] if index < len(result.seeds) else 0
        path = output.save_grid(image, text) if index < result.grids else output.save(image, seed, text)
        result.paths.append(path)
        on_saved(path, text)
    if params.save_grid and len(result.images) - result.grids > 1:
        result.grid_path = output.save_grid(make_grid(result.images[result.grids:]), result.infotexts[result.grids])


def answer(ctx: AppContext, job: ParsedJob, result: GenerationResult) -> ImageResponse | GenerationResult:
    """The /sdapi/v1 answer for a job's result; a UI job's is its result."""
    if job.req is None:
        return result
    mapping.after_generation(ctx, job.req, result.params)
    return_grid = ctx.options.effective(job.params.override_settings).return_grid
    req = job.req.model_copy(update={"do_not_save_grid": True}) if job.script else job.req
    built = mapping.build_answer(req, result, return_grid)
    return ImageResponse(images=built.images, parameters=mapping.echo_parameters(job.req), info=built.info)


def execute_job(ctx: AppContext, job: Job, on_saved: SavedHook) -> JobOutcome:
    """Run one queued generation request on this machine; the outcome's payload is the API's answer
    (for a job from the UI's Enqueue button, the generation result)."""
    parsed = parse_job(ctx, job)
    saved = Recorder(on_saved)
    result = compute(ctx, parsed, saved)
    if parsed.script is not None:  # scripts save through their own paths: record what they report
        for path, text in zip(result.paths, result.infotexts, strict=False):
            saved(path, text)
        if result.grid_path is not None:
            saved(result.grid_path, result.infotexts[0] if result.infotexts else "")
    return JobOutcome(files=saved.files, infotexts=saved.infotexts, payload=answer(ctx, parsed, result),
                      interrupted=result.interrupted)


def run_and_wait(ctx: AppContext, kind: str, req: GenerationRequest) -> ImageResponse:
    """A synchronous /sdapi/v1 call: queued behind the jobs before it, answered when it is done."""
    data = prepared_request(ctx, kind, req)
    queue = open_queue(ctx)
    job = queue.submit(kind, data, job_id=req.force_task_id or None, durable=False, wait=True)
    return queue.wait_for(job.id).payload


def send_callback(job: Job) -> None:
    """agent-scheduler's callback: POST multipart/form-data {task_id, status, files} to the job's URL, in the
    background (a slow or absent receiver never holds the queue up); failures are logged."""
    if not job.callback_url:
        return

    def post() -> None:
        import httpx

        files = []
        for name in job.files:
            path = Path(name)
            if path.is_file():
                files.append(("files", (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/png")))
        try:
            httpx.post(job.callback_url, data={"task_id": job.id, "status": job.status}, files=files or None,
                       timeout=10).raise_for_status()
        except Exception as exc:  # noqa: BLE001 - the receiver's problem, not the queue's
            log.warning("Queue: callback to %s for job %s failed: %s", job.callback_url, job.id, exc)

    threading.Thread(target=post, name=f"callback-{job.id}", daemon=True).start()


def check_kind(kind: str) -> str:
    if kind not in REQUESTS:
        raise UserError(f"Unknown job kind {kind!r}; use txt2img or img2img.")
    return kind
