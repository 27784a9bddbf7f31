"""Runs the durable queue's jobs one after another on a worker thread.

The runner owns no generation code: `execute(job, on_saved)` (given by the API layer) turns a job's
request into pictures, calls `on_saved(path, infotext)` for each picture as soon as it is on disk, and
returns a `JobOutcome`. The runner records every step in the store first, so that after a crash each
job either finished with all its files recorded, or runs again from its recorded request and seeds.
A client waiting for its job (a synchronous API call) gets the outcome's `payload` from memory.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.errors import UserError
from modules.queue.store import Job, JobStore

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    files: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    payload: Any = None  # what a waiting client gets (the API's answer)
    interrupted: bool = False
    worker: str = ""  # which worker ran it (a Ray replica's host:pid), for the log and the task's record


class WorkerLost(Exception):  # noqa: N818 - the name says what happened
    """The worker running a job went away (a Ray replica died): the job goes back to the queue."""


SavedHook = Callable[[Path, str], None]
Execute = Callable[[Job, SavedHook], JobOutcome]
Finished = Callable[[Job], None]


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    outcome: JobOutcome | None = None
    error: BaseException | None = None


class QueueRunner:
    """`workers` threads over a `JobStore`, each running one job at a time through `execute` (one thread
    for this machine's device; one per Ray Serve replica). `on_interrupt(job_id)` reaches a running job."""

    def __init__(self, store: JobStore, execute: Execute, *, max_attempts: int = 3, paused_after_crash: bool = False,
                 on_interrupt: Callable[[str], None] | None = None, on_finished: Finished | None = None,
                 workers: int = 1, on_skip: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.execute = execute
        self.max_attempts = max_attempts
        self.on_interrupt = on_interrupt
        self.on_finished = on_finished
        self.on_skip = on_skip
        self.workers = max(1, workers)
        self.running: dict[str, Job] = {}
        self._wake = threading.Condition()
        self._waiters: dict[str, _Waiter] = {}
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._cancelled: set[str] = set()
        self.owner = uuid.uuid4().hex  # marks the jobs whose clients wait on this runner
        self.recovered = self._recover(paused_after_crash)

    # ------------------------------------------------------------------ start and stop
    def _recover(self, paused_after_crash: bool) -> list[Job]:
        if not self.store.first_in_process:
            return []
        unclean = self.store.get_meta("clean_shutdown", "1") == "0"
        recovered = self.store.recover(self.max_attempts)
        for job in recovered:
            if job.durable and job.attempts < self.max_attempts:
                # The retry makes these pictures again (same request, same seeds): the attempt's copies go.
                for name in job.files:
                    Path(name).unlink(missing_ok=True)
        if recovered:
            log.warning("Queue: %d job(s) were running when the server stopped; queued again or closed.", len(recovered))
        if unclean and paused_after_crash:
            self.store.set_meta("paused", "1")
        self.store.set_meta("clean_shutdown", "0")
        return recovered

    @property
    def current(self) -> Job | None:
        """The running job that started first (the one this machine's progress reports), or None."""
        jobs = list(self.running.values())
        return min(jobs, key=lambda j: j.started or 0) if jobs else None

    def start(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._loop, name=f"queue-worker-{i}", daemon=True)
                             for i in range(self.workers)]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new job, let the running ones finish (up to `timeout`), mark the stop clean."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        if not self.running:
            self.store.set_meta("clean_shutdown", "1")

    def interrupt_running(self) -> None:
        for job_id in list(self.running):
            self.cancel(job_id)

    def skip_running(self) -> None:
        """Skip the picture being made by each running job (reaches Ray replicas through `on_skip`)."""
        for job_id in list(self.running):
            if self.on_skip is not None:
                self.on_skip(job_id)

    # ------------------------------------------------------------------ pause
    @property
    def paused(self) -> bool:
        return self.store.get_meta("paused", "0") == "1"

    def pause(self) -> None:
        self.store.set_meta("paused", "1")

    def resume(self) -> None:
        self.store.set_meta("paused", "0")
        self.wake()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # ------------------------------------------------------------------ jobs
    def submit(self, kind: str, request: dict[str, Any], *, job_id: str | None = None, durable: bool = True,
               wait: bool = False, **extra: Any) -> Job:
        """Queue a job; with `wait`, register for its outcome before it can start (see `wait_for`)."""
        owner = None if durable else self.owner  # only this runner can answer its waiting client
        job = self.store.add(kind, request, job_id=job_id, durable=durable, owner=owner, **extra)
        if wait:
            self._waiters[job.id] = _Waiter()
        self.start()
        self.wake()
        return job

    def wait_for(self, job_id: str, timeout: float | None = None) -> JobOutcome:
        """The outcome of a job submitted with `wait=True`; its error is raised here."""
        waiter = self._waiters[job_id]
        if not waiter.event.wait(timeout):
            raise TimeoutError(f"job {job_id} still running after {timeout} s")
        self._waiters.pop(job_id, None)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.outcome is not None
        return waiter.outcome

    def cancel(self, job_id: str) -> str:
        """Interrupt the running job, or remove a queued one; what was done."""
        if job_id in self.running:
            self._cancelled.add(job_id)
            if self.on_interrupt:
                self.on_interrupt(job_id)
            return "interrupted"
        if self.store.delete(job_id):
            waiter = self._waiters.get(job_id)
            if waiter is not None:
                waiter.error = UserError(f"Job {job_id} was removed from the queue.")
                waiter.event.set()
            return "deleted"
        raise UserError(f"No queued or running job {job_id!r}.")

    # ------------------------------------------------------------------ the worker
    def _next(self) -> Job | None:
        with self._wake:
            while not self._stop:
                if not self.paused:
                    job = self.store.claim_next(self.owner)
                    if job is not None:
                        self.running[job.id] = job
                        return job
                self._wake.wait(1.0)
        return None

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                self.running.pop(job.id, None)
                self.wake()

    def _run(self, job: Job) -> None:
        waiter = self._waiters.get(job.id)
        started = time.perf_counter()

        def on_saved(path: Path, infotext: str) -> None:
            self.store.add_file(job.id, str(path), infotext)

        try:
            outcome = self.execute(job, on_saved)
        except WorkerLost as exc:  # nothing of it was saved: it runs again, elsewhere
            log.warning("Queue: job %s lost its worker (%s); queued again", job.id, exc)
            if self.store.release(job.id, self.max_attempts, str(exc)) != "queued":
                self._close(job, "failed", f"its worker died during each of its {job.attempts} attempts ({exc})",
                            waiter, error=UserError(str(exc)))
            return
        except UserError as exc:  # the request is wrong: no retry, the message says what to change
            self._close(job, "failed", str(exc), waiter, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug: logged, the job failed, the queue goes on
            log.exception("Queue: job %s failed", job.id)
            self._close(job, "failed", f"{type(exc).__name__}: {exc}", waiter, error=exc)
            return
        interrupted = outcome.interrupted or job.id in self._cancelled
        self._cancelled.discard(job.id)
        # The pictures are on disk; only now is the job marked done (with every file it wrote).
        self.store.finish(job.id, "interrupted" if interrupted else "done", None, outcome.files, outcome.infotexts,
                          outcome.worker or None)
        log.info("Queue: job %s %s in %.1f s (%d file(s))", job.id, "interrupted" if interrupted else "done",
                 time.perf_counter() - started, len(outcome.files))
        if waiter is not None:
            waiter.outcome = outcome
            waiter.event.set()
        self._notify(job.id)

    def _close(self, job: Job, status: str, message: str, waiter: _Waiter | None, error: BaseException) -> None:
        self.store.finish(job.id, status, message)
        if waiter is not None:
            waiter.error = error
            waiter.event.set()
        self._notify(job.id)

    def _notify(self, job_id: str) -> None:
        if self.on_finished is None:
            return
        finished = self.store.get(job_id)
        if finished is not None:
            try:
                self.on_finished(finished)
            except Exception:  # noqa: BLE001 - a failing callback must not stop the queue
                log.exception("Queue: the finish hook failed for job %s", job_id)
