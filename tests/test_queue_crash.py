"""The queue survives the server being killed: a real server process (--nowebui) is killed with SIGKILL
while a job runs and 6 more wait; after a restart all 7 finish, each picture exactly once with the seed
it was asked for, the history intact. An unreadable queue file stops the start with a clear message and
is left as it was."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from modules.images import read_infotext
from modules.processing.infotext import infotext_to_params, parse_infotext
from tests.tiny_models import write_tiny_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
Q = "/agent-scheduler/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(data: Path, port: int, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen([sys.executable, str(REPO / "webui.py"), "--nowebui", "--port", str(port),
                                "--data-dir", str(data), "--ckpt", "tiny", "--threads", "1", *extra],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 180
        while time.time() < end:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {process.stdout.read() if process.stdout else ''}")
            try:
                if requests.get(f"{url}{Q}/queue", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        else:
            raise AssertionError("server did not start")
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def seeds_on_disk(data: Path) -> list[int]:
    files = sorted((data / "outputs" / "txt2img-images").rglob("*.png"))
    return sorted(infotext_to_params(parse_infotext(read_infotext(f))[2])["seed"] for f in files)


def test_sigkill_mid_job_loses_and_doubles_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    port = free_port()
    # Job 0 makes 3 pictures one after another (a crash can fall between them); the others one each.
    jobs = [{"prompt": f"job {i}", "seed": 100 * (i + 1), "steps": 12, "width": 64, "height": 64,
             "n_iter": 3 if i == 0 else 1} for i in range(7)]
    expected = sorted([100, 101, 102] + [100 * (i + 1) for i in range(1, 7)])
    with server(data, port) as (process, url):
        requests.post(f"{url}{Q}/queue/pause", timeout=10)
        ids = [requests.post(f"{url}{Q}/queue/txt2img", json=job, timeout=30).json()["task_id"] for job in jobs]
        requests.post(f"{url}{Q}/queue/resume", timeout=10)
        end = time.time() + 120
        while time.time() < end:
            if requests.get(f"{url}{Q}/queue", timeout=10).json()["current_task_id"] == ids[0]:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the first job never ran")
        time.sleep(0.4)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    with server(data, port) as (_, url):
        tasks: dict[str, Any] = {}
        end = time.time() + 300
        while time.time() < end and len(tasks) < len(ids):
            for task_id in ids:
                task = requests.get(f"{url}{Q}/task/{task_id}", timeout=10).json()["data"]
                if task["status"] in ("done", "failed", "interrupted"):
                    tasks[task_id] = task
            time.sleep(0.2)
        assert all(t["status"] == "done" for t in tasks.values()), [t["status"] for t in tasks.values()]
        assert tasks[ids[0]]["attempts"] == 2 and all(tasks[i]["attempts"] == 1 for i in ids[1:])
        for job, task_id in zip(jobs, ids, strict=True):
            data_items = requests.get(f"{url}{Q}/task/{task_id}/results", timeout=30).json()["data"]
            seeds = [infotext_to_params(parse_infotext(d["infotext"])[2])["seed"] for d in data_items]
            assert seeds == [job["seed"] + k for k in range(job["n_iter"])]
        history = requests.get(f"{url}{Q}/history", params={"limit": 50}, timeout=10).json()
        assert {t["id"] for t in history["tasks"]} >= set(ids)
    assert seeds_on_disk(data) == expected  # every picture exactly once


def test_unreadable_queue_file_stops_the_start_and_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    queue_file = data / "queue.sqlite3"
    queue_file.write_bytes(b"garbage, not a database " * 50)
    before = queue_file.read_bytes()
    result = subprocess.run([sys.executable, str(REPO / "webui.py"), "--nowebui", "--port", str(free_port()),
                             "--data-dir", str(data), "--skip-load-model-at-start"], cwd=REPO, capture_output=True,
                            text=True, timeout=180, env={**os.environ})
    assert result.returncode == 2
    assert str(queue_file) in result.stderr and "Move it away" in result.stderr
    assert queue_file.read_bytes() == before
