"""Progress and control of a running generation, shared between the worker and the UI / API.

The worker reports each step; the UI and the API read the state (step, ETA, preview) and may ask
to interrupt (stop now, keep what is done) or skip (finish the current batch early, go on).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image


@dataclass
class ProgressState:
    job: int = 0  # current batch (0-based)
    job_count: int = 0
    step: int = 0  # steps done in the current batch
    steps: int = 0
    started: float = 0.0
    preview: Image.Image | None = None
    preview_step: int = -1
    active: bool = False

    @property
    def fraction(self) -> float:
        if not self.active or self.job_count == 0 or self.steps == 0:
            return 0.0
        return min(1.0, (self.job + self.step / self.steps) / self.job_count)

    @property
    def eta_seconds(self) -> float:
        done = self.fraction
        if done <= 0:
            return 0.0
        elapsed = time.monotonic() - self.started
        return elapsed / done - elapsed


class GenerationControl:
    """One per worker. `preview_every` N > 0 renders a cheap preview every N steps."""

    def __init__(self, preview_every: int = 0,
                 on_step: Callable[[ProgressState], None] | None = None) -> None:
        self.preview_every = preview_every
        self.on_step = on_step
        self.state = ProgressState()
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._lock = threading.Lock()

    # requests from outside
    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def should_stop_batch(self) -> bool:
        return self._interrupt.is_set() or self._skip.is_set()

    # reports from the worker
    def begin(self, job_count: int, steps: int) -> None:
        with self._lock:
            self._interrupt.clear()
            self._skip.clear()
            self.state = ProgressState(job_count=job_count, steps=steps, started=time.monotonic(), active=True)

    def begin_batch(self, job: int, steps: int) -> None:
        self._skip.clear()
        with self._lock:
            self.state.job, self.state.step, self.state.steps = job, 0, steps

    def wants_preview(self, step: int) -> bool:
        return self.preview_every > 0 and step % self.preview_every == 0

    def report_step(self, step: int, preview: Image.Image | None = None) -> None:
        with self._lock:
            self.state.step = step
            if preview is not None:
                self.state.preview, self.state.preview_step = preview, step
        if self.on_step:
            self.on_step(self.state)

    def end(self) -> None:
        with self._lock:
            self.state.active = False
