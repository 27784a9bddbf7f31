"""Several generation workers on Ray Serve: GPUs of one machine, or machines of a Ray cluster, behind
one UI/API process that keeps the queue and the output folder.

    python webui.py --nowebui --workers 2                      # a local Ray with 2 replicas
    python webui.py --nowebui --ray 10.0.0.5:6379 --workers 4  # an existing cluster (ray start --head ...)

Each replica (`GenerationReplica`) holds its own app context and checkpoint registry (the data folder
given to the entry point, at the same path on every machine) and computes pictures without saving them;
the entry point saves them and answers. A request goes to a replica that has its checkpoint loaded
(Ray Serve's model multiplexing, the checkpoint's name as the model id), else to the least busy one.
A replica that dies mid-job raises `WorkerLost`: the queue runs the job again on another replica, and
as nothing of it was saved, no picture is lost or written twice. Interrupts reach the replica through
a small named actor that replicas watch while a job runs. Ray's usage statistics are switched off
before Ray is imported, its dashboard is not started, and Serve runs without an HTTP proxy: nothing is
listening or sending beyond what Ray needs between its own processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before `import ray`, wherever this runs

from modules.errors import UserError  # noqa: E402
from modules.queue.runner import JobOutcome, SavedHook, WorkerLost  # noqa: E402
from modules.queue.store import Job  # noqa: E402

log = logging.getLogger(__name__)

NAMESPACE = "sd-webui"
APP_NAME = "sd-webui-workers"
BOARD_NAME = "sd-webui-interrupts"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UserError("Several workers run on Ray, an optional part: pip install -e .[ray] "
                        "(or: pip install 'ray[serve]').") from exc
    return ray


class InterruptBoard:
    """Job ids asked to stop ("interrupt") or to skip their current picture ("skip"); replicas look here
    while they run a job."""

    def __init__(self) -> None:
        self._asks: dict[str, str] = {}

    def interrupt(self, job_id: str) -> None:
        self._asks[job_id] = "interrupt"

    def skip(self, job_id: str) -> None:
        self._asks.setdefault(job_id, "skip")

    def clear(self, job_id: str) -> None:
        self._asks.pop(job_id, None)

    def take(self, job_id: str) -> str | None:
        """What was asked for the job (a skip is taken once; an interrupt stays)."""
        ask = self._asks.get(job_id)
        if ask == "skip":
            del self._asks[job_id]
        return ask


class GenerationReplica:
    """One worker: an app context of its own, generation without saving."""

    def __init__(self, data_dir: str, threads: int, device: str | None, precision: str) -> None:
        from modules.context import AppContext, Paths
        from modules.devices import DevicePolicy, configure_threads

        configure_threads(threads or None)
        self.ctx = AppContext.create(Paths.make(Path(data_dir)), DevicePolicy.from_flags(device, precision))
        node = _ray().get_runtime_context().get_node_id()[:8]
        self.name = f"{socket.gethostname()}:{os.getpid()}@{node}"  # host, process, Ray node
        self._board: Any = None

    def _watch(self, job_id: str, done: threading.Event) -> None:
        ray = _ray()
        if self._board is None:
            self._board = ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
        while not done.wait(0.25):
            try:
                ask = ray.get(self._board.take.remote(job_id))
            except Exception:  # noqa: BLE001 - the board is gone: nobody can interrupt any more
                return
            if ask == "interrupt":
                self.ctx.control.interrupt()
                return
            if ask == "skip":
                self.ctx.control.skip()

    def _load(self, checkpoint: str) -> str:
        registry = self.ctx.registry
        if checkpoint:
            try:
                info = registry.find(checkpoint)
            except UserError as exc:
                raise UserError(f"The worker {self.name} has no checkpoint {checkpoint!r} ({exc}); copy it into "
                                f"{self.ctx.paths.ckpt_dirs[0]} on that machine.") from exc
            registry.load(info)
        else:
            registry.current()
        return checkpoint

    async def get_model(self, checkpoint: str) -> str:  # wrapped by serve.multiplexed in `deployment`
        return await asyncio.to_thread(self._load, checkpoint)

    async def run(self, job: Job) -> dict[str, Any]:
        from ray import serve

        from modules.api.jobs import compute, parse_job

        await self.get_model(serve.get_multiplexed_model_id())
        done = threading.Event()
        threading.Thread(target=self._watch, args=(job.id, done), daemon=True).start()
        try:
            result = await asyncio.to_thread(lambda: compute(self.ctx, parse_job(self.ctx, job), None, False))
        finally:
            done.set()
        return {"result": result, "worker": self.name}


def deployment(replicas: int, gpus: float, cpus: float) -> Any:
    from ray import serve

    cls = type("GenerationReplica", (GenerationReplica,), {})
    cls.get_model = serve.multiplexed(max_num_models_per_replica=1)(GenerationReplica.get_model)
    options: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        options["num_gpus"] = gpus
    # One job per replica at a time: the queue sends no more than there are replicas.
    return serve.deployment(num_replicas=replicas, ray_actor_options=options, max_ongoing_requests=1,
                            name="generation")(cls)


@dataclass
class RayWorkers:
    """The entry point's side: Ray started or joined, the replicas deployed, jobs sent to them."""

    ctx: Any  # AppContext
    count: int
    handle: Any = None
    board: Any = None

    @classmethod
    def start(cls, ctx: Any, count: int, address: str | None = None, threads: int = 0, device: str | None = None,
              precision: str = "auto") -> RayWorkers:
        ray = _ray()
        from ray import serve

        cuda = (device or "").startswith("cuda")
        if ray.is_initialized():
            pass  # a second entry point in this process (tests) shares the running Ray
        elif address:
            ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
        else:  # a private Ray on loopback only: nothing of it is reachable from, or talks to, the network
            ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                     num_cpus=max(count * max(threads, 1), os.cpu_count() or 1))
        serve.start(proxy_location="Disabled")  # no HTTP proxy: jobs come only through this process's queue
        board = ray.remote(InterruptBoard).options(name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True,
                                                   lifetime="detached").remote()
        app = deployment(count, 1 if cuda else 0, max(threads, 1)).bind(
            str(ctx.paths.data_dir), threads, "cuda" if cuda else device, precision)
        handle = serve.run(app, name=APP_NAME, route_prefix=None)
        log.info("Ray Serve: %d generation replica(s) ready (%s)", count, address or "local Ray")
        return cls(ctx=ctx, count=count, handle=handle, board=board)

    def checkpoint_of(self, job: Job) -> str:
        """The checkpoint a job runs on, as this entry point decides it (the replicas' model id): the job's,
        its override, the selected one, else the entry point's default."""
        overrides = job.request.get("override_settings") or {}
        chosen = job.checkpoint or overrides.get("sd_model_checkpoint") or self.ctx.options.options.sd_model_checkpoint
        if chosen:
            return chosen
        registry = self.ctx.registry
        info = registry.current_info or registry.default_checkpoint()
        if info is None:
            raise UserError("No checkpoint found for the workers; put one into models/Stable-diffusion.")
        return info.name

    def execute(self, job: Job, on_saved: SavedHook) -> JobOutcome:
        """Run `job` on a replica, then save its pictures here and build the answer."""
        from ray import exceptions as ray_errors

        from modules.api.jobs import Recorder, answer, parse_job, save_result

        try:
            reply = self.handle.options(multiplexed_model_id=self.checkpoint_of(job)).run.remote(job).result()
        except ray_errors.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from exc
            if isinstance(cause, ray_errors.RayActorError):
                raise WorkerLost(str(cause)) from exc
            raise
        except (ray_errors.RayActorError, ray_errors.ActorDiedError, ray_errors.ActorUnavailableError) as exc:
            raise WorkerLost(str(exc)) from exc
        finally:
            self.board.clear.remote(job.id)
        result = reply["result"]
        parsed = parse_job(self.ctx, job, here=False)  # this machine need not have the job's checkpoint
        saved = Recorder(on_saved)
        save_result(self.ctx, parsed.params, result, saved)
        log.info("Ray Serve: job %s ran on %s", job.id, reply["worker"])
        return JobOutcome(files=saved.files, infotexts=saved.infotexts, payload=answer(self.ctx, parsed, result),
                          interrupted=result.interrupted, worker=reply["worker"])

    def interrupt(self, job_id: str) -> None:
        self.board.interrupt.remote(job_id)

    def skip(self, job_id: str) -> None:
        self.board.skip.remote(job_id)

    def shutdown(self) -> None:
        from ray import serve

        try:
            serve.delete(APP_NAME)
        finally:
            _ray().shutdown()
