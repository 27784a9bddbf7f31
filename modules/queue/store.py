"""The durable job queue: one SQLite file in the data folder (WAL mode), nothing to install or start.

Every generation request becomes a job row: its kind, the request as JSON (seeds already resolved,
so a retried job makes the same pictures), its status, place in the queue (`priority`, lower runs
first), attempts, times, progress, the files it wrote with their infotexts, and the error. The file
carries a schema version (`PRAGMA user_version`) and is upgraded in place when opened by a newer
program. A file that cannot be read, or is locked by another process, gives a `QueueError` that says
what to do; nothing is overwritten.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")

_SCHEMA = [
    # version 1
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT,
        request TEXT NOT NULL,
        status TEXT NOT NULL,
        priority REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        durable INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        progress REAL NOT NULL DEFAULT 0,
        files TEXT NOT NULL DEFAULT '[]',
        infotexts TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        callback_url TEXT,
        checkpoint TEXT,
        bookmarked INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        worker TEXT
    );
    CREATE INDEX jobs_status_priority ON jobs (status, priority);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]


class QueueError(UserError):
    """The queue's file cannot be used; the message names it and says what to do."""


@dataclass
class Job:
    id: str
    kind: str
    request: dict[str, Any]
    status: str = "queued"
    priority: float = 0.0
    name: str | None = None
    attempts: int = 0
    durable: bool = True  # a synchronous API call whose client waits is not retried after a restart
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    progress: float = 0.0
    files: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    error: str | None = None
    callback_url: str | None = None
    checkpoint: str | None = None
    bookmarked: bool = False
    owner: str | None = None  # the runner that waits for it (a synchronous call's job), else None
    worker: str | None = None  # where it ran (a Ray replica's host:pid); None for this machine

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in ("request", "files", "infotexts"):
            data[key] = json.loads(data[key])
        data["durable"], data["bookmarked"] = bool(data["durable"]), bool(data["bookmarked"])
        return cls(**data)


_process_locks: dict[Path, Any] = {}  # queue file -> the open lock file this process holds
_process_locks_guard = threading.Lock()


def _lock_for_this_process(path: Path) -> bool:
    """One server per queue file: the first store in a process takes an exclusive OS lock on
    `<file>.lock` (held until the process ends; True), later ones in the same process share it (False);
    another process asking for it gets a QueueError."""
    key = path.resolve()
    with _process_locks_guard:
        if key in _process_locks:
            return False
        handle = open(f"{path}.lock", "a+b")  # noqa: SIM115 - held open for the life of the process
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise QueueError(f"The queue file {path} is in use by another server on this data folder. Stop that "
                             "one first, or give this one another --data-dir.") from exc
        _process_locks[key] = handle
        return True


class JobStore:
    """The jobs table behind a lock; every method is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Only the first store of a file in this process recovers jobs after a crash: the others would
        # take that store's running job for an abandoned one.
        self.first_in_process = _lock_for_this_process(path)
        try:
            self._db = sqlite3.connect(str(path), timeout=5, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a job marked done survives a power cut
            self._upgrade()
            self._db.execute("SELECT count(*) FROM jobs").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise QueueError(f"The queue file {path} is locked by another process (is another server running "
                                 "on this data folder?). Stop it, or use another --data-dir.") from exc
            raise QueueError(f"The queue file {path} cannot be opened ({exc}). Move it away to start with an "
                             "empty queue (its jobs are lost; pictures already made stay in outputs/).") from exc
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"The queue file {path} is not a readable queue ({exc}). Move it away to start with "
                             "an empty queue (its jobs are lost; pictures already made stay in outputs/).") from exc

    def _upgrade(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(f"The queue file {self.path} was written by a newer version of this program "
                             f"(schema {version}, this one knows {SCHEMA_VERSION}); update the program.")
        for number in range(version, SCHEMA_VERSION):
            with self._transaction() as db:  # each step whole or not at all (executescript would commit)
                for statement in filter(str.strip, _SCHEMA[number].split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                       (key, value, value))

    # ------------------------------------------------------------------ jobs
    def add(self, kind: str, request: dict[str, Any], *, job_id: str | None = None, name: str | None = None,
            durable: bool = True, callback_url: str | None = None, checkpoint: str | None = None,
            owner: str | None = None) -> Job:
        now = time.time()
        job = Job(id=job_id or str(uuid.uuid4()), kind=kind, request=request, priority=now, name=name,
                  durable=durable, created=now, callback_url=callback_url, checkpoint=checkpoint, owner=owner)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                raise UserError(f"A job with the id {job.id!r} exists already; use another task id.")
            last = db.execute("SELECT max(priority) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if last is not None and last >= job.priority:  # after every queued job, moved ones included
                job.priority = last + 0.001
            db.execute("INSERT INTO jobs (id, kind, name, request, status, priority, durable, created, callback_url, "
                       "checkpoint, owner) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                       (job.id, kind, name, json.dumps(request), job.priority, int(durable), now, callback_url,
                        checkpoint, owner))
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def pending(self, limit: int = 1000, offset: int = 0) -> list[Job]:
        """Queued jobs in the order they will run."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY priority, created "
                                    "LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [Job.from_row(r) for r in rows]

    def running(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY started").fetchall()
        return [Job.from_row(r) for r in rows]

    def history(self, statuses: tuple[str, ...] = FINISHED, limit: int = 20, offset: int = 0) -> tuple[list[Job], int]:
        """Finished jobs, the newest first, and how many there are in all."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM jobs WHERE status IN ({marks})", statuses).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY finished DESC, created DESC "
                                    "LIMIT ? OFFSET ?", (*statuses, limit, offset)).fetchall()
        return [Job.from_row(r) for r in rows], total

    def count(self, status: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    def position(self, job_id: str) -> int | None:
        """0 for the next job to run; None when the job is not queued."""
        with self._lock:
            row = self._db.execute("SELECT priority, created, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != "queued":
                return None
            return self._db.execute("SELECT count(*) FROM jobs WHERE status = 'queued' AND (priority < ? OR "
                                    "(priority = ? AND created < ?))",
                                    (row["priority"], row["priority"], row["created"])).fetchone()[0]

    def claim_next(self, owner: str | None = None) -> Job | None:
        """The first queued job this runner may take (any without an owner, and its own), now marked running
        with its attempt counted (atomically)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' AND (owner IS NULL OR owner = ?) "
                             "ORDER BY priority, created LIMIT 1", (owner,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1, progress = 0, "
                       "error = NULL WHERE id = ?", (time.time(), row["id"]))
        return self.get(row["id"])

    def set_progress(self, job_id: str, progress: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'", (progress, job_id))

    def add_file(self, job_id: str, path: str, infotext: str) -> None:
        """Record a picture as soon as it is on disk: a crash after this never loses track of it."""
        with self._transaction() as db:
            row = db.execute("SELECT files, infotexts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            files, texts = json.loads(row["files"]) + [path], json.loads(row["infotexts"]) + [infotext]
            db.execute("UPDATE jobs SET files = ?, infotexts = ? WHERE id = ?", (json.dumps(files), json.dumps(texts),
                                                                                 job_id))

    def finish(self, job_id: str, status: str, error: str | None = None, files: list[str] | None = None,
               infotexts: list[str] | None = None, worker: str | None = None) -> None:
        if status not in FINISHED:
            raise ValueError(f"not a finished status: {status}")
        with self._transaction() as db:
            if worker:
                db.execute("UPDATE jobs SET worker = ? WHERE id = ?", (worker, job_id))
            if files is None:
                db.execute("UPDATE jobs SET status = ?, finished = ?, error = ?, progress = CASE WHEN ? = 'done' "
                           "THEN 1 ELSE progress END WHERE id = ?", (status, time.time(), error, status, job_id))
            else:
                db.execute("UPDATE jobs SET status = ?, finished = ?, error = ?, files = ?, infotexts = ?, "
                           "progress = CASE WHEN ? = 'done' THEN 1 ELSE progress END WHERE id = ?",
                           (status, time.time(), error, json.dumps(files), json.dumps(infotexts or []), status,
                            job_id))

    def release(self, job_id: str, max_attempts: int, reason: str) -> str:
        """A running job whose worker went away: queued again at the front (or failed after `max_attempts`)."""
        with self._transaction() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "gone"
            if row["attempts"] >= max_attempts:
                return "failed"
            first = db.execute("SELECT min(priority) FROM jobs WHERE status = 'queued'").fetchone()[0]
            db.execute("UPDATE jobs SET status = 'queued', files = '[]', infotexts = '[]', progress = 0, error = ?, "
                       "priority = min(priority, ?) WHERE id = ?",
                       (reason, (first - 1) if first is not None else 0, job_id))
            return "queued"

    def recover(self, max_attempts: int) -> list[Job]:
        """After an unclean stop: jobs left running go back to the queue (the files their attempt wrote
        are forgotten and returned, so the caller removes them: the retry makes them again, identically),
        or fail when they had `max_attempts` already; a synchronous call's job, whose client is gone, is
        marked interrupted. Returns the jobs that were running."""
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
            for row in rows:
                if not row["durable"]:
                    db.execute("UPDATE jobs SET status = 'interrupted', finished = ?, error = ? WHERE id = ?",
                               (time.time(), "the server stopped while this job ran", row["id"]))
                elif row["attempts"] >= max_attempts:
                    db.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                               (time.time(), f"the server stopped during each of its {row['attempts']} attempts "
                                             f"(the limit, setting queue_max_attempts)", row["id"]))
                else:
                    db.execute("UPDATE jobs SET status = 'queued', progress = 0, files = '[]', infotexts = '[]' "
                               "WHERE id = ?", (row["id"],))
            db.execute("UPDATE jobs SET status = 'interrupted', finished = ?, error = ? WHERE status = 'queued' "
                       "AND durable = 0", (time.time(), "the server stopped before this job ran"))
        return [Job.from_row(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE id = ? AND status != 'running'", (job_id,)).rowcount > 0

    def requeue(self, job_id: str) -> Job:
        """A new queued job with the same request (agent-scheduler's requeue)."""
        job = self.get(job_id)
        if job is None:
            raise UserError(f"No job {job_id!r}.")
        return self.add(job.kind, job.request, name=f"Copy of {job.name}" if job.name else None,
                        callback_url=job.callback_url, checkpoint=job.checkpoint)

    def move(self, job_id: str, where: str) -> None:
        """`where`: "top", "bottom", or the id of the job to take the place of (it and those after move down)."""
        with self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != "queued":
                raise UserError(f"Job {job_id!r} is not in the queue.")
            bounds = db.execute("SELECT min(priority), max(priority) FROM jobs WHERE status = 'queued'").fetchone()
            if where == "top":
                priority = bounds[0] - 1
            elif where == "bottom":
                priority = bounds[1] + 1
            else:
                over = db.execute("SELECT priority, status FROM jobs WHERE id = ?", (where,)).fetchone()
                if over is None or over["status"] != "queued":
                    raise UserError(f"Job {where!r} is not in the queue.")
                priority = over["priority"]
                db.execute("UPDATE jobs SET priority = priority + 1 WHERE status = 'queued' AND priority >= ? "
                           "AND id != ?", (priority, job_id))
            db.execute("UPDATE jobs SET priority = ? WHERE id = ?", (priority, job_id))

    def set_bookmark(self, job_id: str, value: bool) -> bool:
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET bookmarked = ? WHERE id = ?", (int(value), job_id)).rowcount > 0

    def rename(self, job_id: str, name: str) -> bool:
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET name = ? WHERE id = ?", (name, job_id)).rowcount > 0

    def clear_pending(self) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE status = 'queued'").rowcount

    def clear_history(self) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE status IN ('done', 'failed', 'cancelled', 'interrupted') AND "
                              "bookmarked = 0").rowcount
