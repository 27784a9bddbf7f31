"""The durable job queue: the SQLite store's rules, agent-scheduler's routes and client flow (enqueue, poll,
results, requeue, move, pause, callback), synchronous calls through the queue, and many clients at once."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modules.api import create_api
from modules.context import AppContext, Paths
from modules.images import read_infotext
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.queue.store import SCHEMA_VERSION, JobStore, QueueError
from tests.tiny_models import CPU, write_tiny_checkpoint

Q = "/agent-scheduler/v1"
SMALL = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


# ------------------------------------------------------------------------------------------ the store

def test_order_positions_moves_and_requeue(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    ids = [store.add("txt2img", {"prompt": str(i)}).id for i in range(4)]
    assert [store.position(i) for i in ids] == [0, 1, 2, 3]
    store.move(ids[3], "top")
    store.move(ids[0], "bottom")
    store.move(ids[2], ids[1])  # takes ids[1]'s place; ids[1] and those after move down
    assert [j.id for j in store.pending()] == [ids[3], ids[2], ids[1], ids[0]]
    job = store.claim_next()
    assert job is not None and job.id == ids[3] and job.status == "running" and job.attempts == 1
    assert store.position(ids[3]) is None and store.position(ids[2]) == 0
    store.add_file(job.id, "a.png", "text a")
    store.finish(job.id, "done")
    done = store.get(job.id)
    assert done is not None and done.files == ["a.png"] and done.infotexts == ["text a"] and done.progress == 1
    copy = store.requeue(job.id)
    assert copy.id != job.id and copy.request == {"prompt": "3"} and store.position(copy.id) == 3
    with pytest.raises(Exception, match="exists already"):
        store.add("txt2img", {}, job_id=ids[0])


def test_recovery_requeues_up_to_the_limit(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    durable = store.add("txt2img", {"prompt": "keep"})
    waiting = store.add("txt2img", {"prompt": "sync"}, durable=False, owner="gone")
    store.claim_next()  # durable, attempt 1
    store.add_file(durable.id, str(tmp_path / "partial.png"), "t")
    recovered = store.recover(max_attempts=2)
    assert [j.id for j in recovered] == [durable.id] and recovered[0].files == [str(tmp_path / "partial.png")]
    again = store.get(durable.id)
    assert again is not None and again.status == "queued" and again.files == [] and again.attempts == 1
    lost = store.get(waiting.id)
    assert lost is not None and lost.status == "interrupted"  # its client is gone
    store.claim_next()  # attempt 2 = the limit
    store.recover(max_attempts=2)
    failed = store.get(durable.id)
    assert failed is not None and failed.status == "failed" and "queue_max_attempts" in (failed.error or "")


def test_unreadable_and_newer_files_are_refused_without_touching_them(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "q.sqlite3"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not a database" * 100)
    before = broken.read_bytes()
    with pytest.raises(QueueError, match="not a readable queue.*Move it away"):
        JobStore(broken)
    assert broken.read_bytes() == before
    newer = tmp_path / "newer" / "q.sqlite3"
    newer.parent.mkdir()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(QueueError, match="newer version"):
        JobStore(newer)


def test_schema_version_is_written(tmp_path: Path) -> None:
    JobStore(tmp_path / "q.sqlite3")
    with sqlite3.connect(tmp_path / "q.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ------------------------------------------------------------------------------------------ over HTTP

@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    home = tmp_path_factory.mktemp("queue")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="other", seed=1)
    ctx = AppContext.create(Paths.make(data_dir=home), CPU)
    ctx.options.update({"sd_model_checkpoint": "tiny.safetensors"}, save=False)
    return ctx


@pytest.fixture(scope="module")
def api(ctx: AppContext) -> TestClient:
    return TestClient(create_api(ctx))


def wait_done(api: TestClient, task_id: str, timeout: float = 300) -> dict[str, Any]:
    end = time.time() + timeout
    while time.time() < end:
        task = api.get(f"{Q}/task/{task_id}").json()["data"]
        if task["status"] in ("done", "failed", "interrupted"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


def seeds_of(files: list[str]) -> list[int]:
    return [infotext_to_params(parse_infotext(read_infotext(f))[2])["seed"] for f in files]


def test_client_flow(api: TestClient) -> None:
    answer = api.post(f"{Q}/queue/txt2img", json={"prompt": "a red dot", "seed": 42, "batch_size": 2, **SMALL})
    assert answer.status_code == 200
    task_id = answer.json()["task_id"]
    task = wait_done(api, task_id)
    assert task["status"] == "done" and task["attempts"] == 1 and task["type"] == "txt2img"
    results = api.get(f"{Q}/task/{task_id}/results").json()
    assert results["success"] and len(results["data"]) == 2
    assert all(item["image"].startswith("data:image/png;base64,") for item in results["data"])
    assert [infotext_to_params(parse_infotext(i["infotext"])[2])["seed"] for i in results["data"]] == [42, 43]
    assert "a red dot" in results["data"][0]["infotext"]
    assert seeds_of(json.loads(task["result"])["images"]) == [42, 43]  # on disk, with their infotexts
    zipped = api.get(f"{Q}/task/{task_id}/results", params={"zip": "true"})
    assert zipped.headers["content-type"] == "application/zip" and zipped.content[:2] == b"PK"
    history = api.get(f"{Q}/history").json()
    assert task_id in [t["id"] for t in history["tasks"]] and history["total"] >= 1
    again = api.post(f"{Q}/task/{task_id}/requeue").json()
    assert again["success"]
    copy = wait_done(api, again["task_id"])
    assert copy["status"] == "done" and seeds_of(json.loads(copy["result"])["images"]) == [42, 43]
    assert api.get(f"{Q}/task/nope").json() == {"success": False, "message": "Task not found"}


def test_random_seed_is_drawn_once_and_kept(api: TestClient) -> None:
    task_id = api.post(f"{Q}/queue/txt2img", json={"prompt": "x", "seed": -1, **SMALL}).json()["task_id"]
    task = wait_done(api, task_id)
    assert task["params"]["seed"] >= 0
    assert seeds_of(json.loads(task["result"])["images"]) == [task["params"]["seed"]]


def test_pause_order_move_delete_and_positions(api: TestClient) -> None:
    assert api.post(f"{Q}/queue/pause").json()["success"]
    try:
        ids = [api.post(f"{Q}/queue/txt2img", json={"prompt": f"p{i}", "seed": i, **SMALL}).json()["task_id"]
               for i in range(4)]
        queue = api.get(f"{Q}/queue").json()
        assert queue["paused"] and [t["id"] for t in queue["pending_tasks"]] == ids
        assert [t["position"] for t in queue["pending_tasks"]] == [0, 1, 2, 3]
        assert all(t["status"] == "pending" for t in queue["pending_tasks"])
        assert api.post(f"{Q}/task/{ids[3]}/move/top").json()["success"]
        assert api.delete(f"{Q}/task/{ids[1]}").json()["message"] == "Task deleted"
        order = [t["id"] for t in api.get(f"{Q}/queue").json()["pending_tasks"]]
        assert order == [ids[3], ids[0], ids[2]]
        assert api.get(f"{Q}/task/{ids[2]}/position").json()["data"] == {"status": "pending", "position": 2}
        time.sleep(0.3)
        assert api.get(f"{Q}/task/{ids[3]}").json()["data"]["status"] == "pending"  # paused: nothing ran
    finally:
        api.post(f"{Q}/queue/resume")
    finished = [wait_done(api, i) for i in (ids[3], ids[0], ids[2])]
    starts = [f["started_at"] for f in finished]
    assert starts == sorted(starts)  # ran in the queue's order


def test_checkpoint_and_bad_requests(api: TestClient) -> None:
    task_id = api.post(f"{Q}/queue/txt2img", json={"prompt": "x", "seed": 3, "checkpoint": "other", **SMALL}).json()["task_id"]
    task = wait_done(api, task_id)
    assert "Model: other" in api.get(f"{Q}/task/{task_id}/results").json()["data"][0]["infotext"]
    assert task["params"]["checkpoint"] == "other"
    bad = api.post(f"{Q}/queue/txt2img", json={"prompt": "x", "sampler_name": "Nope", **{**SMALL, "sampler_name": "Nope"}})
    assert bad.status_code == 404 and "Nope" in bad.json()["detail"]  # refused before anything is queued
    assert api.post(f"{Q}/queue/txt2img", json={"prompt": "x", "steps": 0}).status_code == 400


def test_synchronous_calls_are_jobs_with_their_task_id(api: TestClient) -> None:
    answer = api.post("/sdapi/v1/txt2img", json={"prompt": "sync", "seed": 9, "force_task_id": "task(abc)", **SMALL})
    assert answer.status_code == 200 and json.loads(answer.json()["info"])["seed"] == 9
    progress = api.post("/internal/progress", json={"id_task": "task(abc)"}).json()
    assert progress["completed"] and not progress["active"] and not progress["queued"]
    unknown = api.post("/internal/progress", json={"id_task": "task(nope)"}).json()
    assert not unknown["completed"] and unknown["textinfo"] == "Waiting..."


@pytest.fixture()
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the handler's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"type": self.headers["Content-Type"], "body": body})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/done", received
    server.shutdown()


def test_callback_receives_the_result(api: TestClient, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = receiver
    task_id = api.post(f"{Q}/queue/txt2img", json={"prompt": "x", "seed": 5, "callback_url": url, **SMALL}).json()["task_id"]
    wait_done(api, task_id)
    end = time.time() + 30
    while not received and time.time() < end:
        time.sleep(0.05)
    (call,) = received
    assert call["type"].startswith("multipart/form-data")
    assert task_id.encode() in call["body"] and b"done" in call["body"] and b"\x89PNG" in call["body"]


def test_many_jobs_and_synchronous_calls_at_once(api: TestClient) -> None:
    queued = [api.post(f"{Q}/queue/txt2img", json={"prompt": f"queued {i}", "seed": 1000 + i, **SMALL}).json()["task_id"]
              for i in range(50)]
    pending = [t for t in api.get(f"{Q}/queue", params={"limit": 100}).json()["pending_tasks"] if t["status"] == "pending"]
    assert [t["position"] for t in pending] == list(range(len(pending)))
    assert [t["id"] for t in pending] == queued[len(queued) - len(pending):]  # the oldest run first
    answers: dict[int, Any] = {}

    def call(i: int) -> None:
        answers[i] = api.post("/sdapi/v1/txt2img", json={"prompt": f"sync {i}", "seed": 2000 + i, **SMALL})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for i, answer in answers.items():
        info = json.loads(answer.json()["info"])
        assert info["prompt"] == f"sync {i}" and info["seed"] == 2000 + i
    assert len(answers) == 8
    for i, task_id in enumerate(queued):
        task = wait_done(api, task_id)
        texts = [item["infotext"] for item in api.get(f"{Q}/task/{task_id}/results").json()["data"]]
        assert len(texts) == 1 and texts[0].startswith(f"queued {i}\n") and f"Seed: {1000 + i}," in texts[0]
        assert task["status"] == "done"
