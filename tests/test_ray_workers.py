"""Generation workers on Ray Serve (a local Ray on loopback): two replicas of one thread each on the
embedded default model work on jobs at the same time and make the same pictures as one; a replica killed mid-run costs a retry, never a
lost or doubled picture; jobs for a second checkpoint go to the replica that holds it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.api.jobs import open_queue
from modules.context import AppContext, Paths
from modules.images import read_infotext
from modules.processing.infotext import infotext_to_params, parse_infotext
from tests.tiny_models import CPU, write_tiny_checkpoint

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

JOB = {"prompt": "a red circle on a blue background", "steps": 30, "width": 128, "height": 128,
       "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from modules.workers.ray_serve import RayWorkers

    data = tmp_path_factory.mktemp("ray-workers")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="other")
    ctx = AppContext.create(Paths.make(data_dir=data), CPU)
    started = RayWorkers.start(ctx, 2, threads=1)
    yield started
    started.shutdown()


def queue_for(workers: Any, tmp_path: Path, count: int) -> tuple[AppContext, Any]:
    """An entry point (own data folder and queue) sending its jobs to the replicas, `count` at a time."""
    from modules.workers.ray_serve import RayWorkers

    ctx = AppContext.create(Paths.make(data_dir=tmp_path), CPU)
    entry = RayWorkers(ctx=ctx, count=count, handle=workers.handle, board=workers.board)
    return ctx, open_queue(ctx, entry.execute, count, entry.interrupt)


def run_all(queue: Any, requests: list[dict[str, Any]], **extra: Any) -> tuple[list[Any], float]:
    start = time.perf_counter()
    ids = [queue.submit("txt2img", {**r, "save_images": True}, **extra).id for r in requests]
    end = time.time() + 600
    while time.time() < end:
        jobs = [queue.store.get(i) for i in ids]
        if all(j.status in ("done", "failed", "interrupted") for j in jobs):
            return jobs, time.perf_counter() - start
        time.sleep(0.05)
    raise AssertionError("jobs did not finish")


def seeds(files: list[str]) -> list[int]:
    return [infotext_to_params(parse_infotext(read_infotext(f))[2])["seed"] for f in files]


def pixels(path: str) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_two_replicas_share_the_work(workers: Any, tmp_path: Path) -> None:
    # How much faster two replicas are is a figure of scripts/benchmark_queue.py, not a timed test; here:
    # both replicas work at the same time, and a job's pictures do not depend on where it ran.
    _, two = queue_for(workers, tmp_path / "two", 2)
    _, one = queue_for(workers, tmp_path / "one", 1)
    jobs = [{**JOB, "seed": 100 + i} for i in range(4)]
    done_two, _ = run_all(two, jobs)
    done_one, _ = run_all(one, jobs[:2])
    assert all(j.status == "done" for j in done_one + done_two)
    assert all(j.worker for j in done_two) and len({j.worker for j in done_two}) == 2
    overlapping = [(a, b) for a in done_two for b in done_two
                   if a.worker != b.worker and a.started < b.finished and b.started < a.finished]
    assert overlapping, [(j.worker, j.started, j.finished) for j in done_two]
    assert [seeds(j.files) for j in done_two] == [[100 + i] for i in range(4)]
    # Same seeds, same pictures, wherever they ran; saved by the entry point.
    for a, b in zip(done_one, done_two[:2], strict=True):
        assert pixels(a.files[0]) == pixels(b.files[0])
        assert Path(a.files[0]).parent != Path(b.files[0]).parent


def running_replicas() -> int:
    from ray import serve

    from modules.workers.ray_serve import APP_NAME

    app = serve.status().applications[APP_NAME]
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def test_jobs_go_to_the_replica_that_holds_their_checkpoint(workers: Any, tmp_path: Path) -> None:
    end = time.time() + 120
    while running_replicas() < 2 and time.time() < end:
        time.sleep(0.5)
    _, queue = queue_for(workers, tmp_path, 1)
    jobs: list[Any] = []
    for i in range(6):
        checkpoint = "other" if i % 2 else "default-shapes"
        done, _ = run_all(queue, [{**JOB, "seed": 700 + i, "steps": 4}], checkpoint=checkpoint)
        jobs += done
        # Replicas report what they hold to Serve's routers asynchronously; real jobs take seconds, these
        # a fraction of one: give the report the time a real job would.
        time.sleep(3)
    assert all(j.status == "done" for j in jobs), [j.error for j in jobs]
    by_checkpoint = {name: {j.worker for j in jobs[2:] if j.checkpoint == name} for name in ("other", "default-shapes")}
    assert all(len(w) == 1 for w in by_checkpoint.values()) and by_checkpoint["other"] != by_checkpoint["default-shapes"]
    texts = [json.dumps(j.infotexts) for j in jobs]
    assert all("Model: other" in t for t in texts[1::2]) and all("Model: default-shapes" in t for t in texts[0::2])


def test_a_checkpoint_missing_on_the_workers_is_that_jobs_error(workers: Any, tmp_path: Path) -> None:
    _, queue = queue_for(workers, tmp_path, 1)
    (job,), _ = run_all(queue, [{**JOB, "seed": 1, "steps": 2}], checkpoint="nowhere")
    assert job.status == "failed" and "nowhere" in (job.error or "") and "worker" in (job.error or "")


def test_a_killed_replica_costs_a_retry_not_a_picture(workers: Any, tmp_path: Path) -> None:
    ctx, queue = queue_for(workers, tmp_path, 2)
    ids = [queue.submit("txt2img", {**JOB, "seed": 500 + i, "steps": 40, "save_images": True}).id for i in range(6)]
    end = time.time() + 120
    while not queue.running and time.time() < end:
        time.sleep(0.02)
    time.sleep(0.3)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    assert replicas
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    ray.kill(victim, no_restart=False)
    end = time.time() + 600
    while time.time() < end:
        jobs = [queue.store.get(i) for i in ids]
        if all(j.status in ("done", "failed") for j in jobs):
            break
        time.sleep(0.1)
    assert [j.status for j in jobs] == ["done"] * 6
    assert any(j.attempts == 2 for j in jobs)  # the killed replica's job ran again
    on_disk = sorted(seeds([str(f) for f in (tmp_path / "outputs").rglob("*.png")]))
    assert on_disk == [500 + i for i in range(6)]  # each exactly once


OFFLINE_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from modules.api.jobs import open_queue
from modules.context import AppContext, Paths
from modules.devices import DevicePolicy
from modules.workers.ray_serve import RayWorkers
ctx = AppContext.create(Paths.make(data_dir=Path({data!r})), DevicePolicy.cpu())
workers = RayWorkers.start(ctx, 2, threads=1)
queue = open_queue(ctx, workers.execute, 2, workers.interrupt)
ids = [queue.submit("txt2img", {{"prompt": "a dot", "seed": i, "steps": 4, "width": 64, "height": 64,
                                 "save_images": True}}).id for i in range(2)]
while any(queue.store.get(i).status not in ("done", "failed") for i in ids):
    time.sleep(0.1)
print("STATUS", [queue.store.get(i).status for i in ids])
workers.shutdown()
"""


def test_workers_run_with_the_network_unplugged(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = OFFLINE_SCRIPT.format(repo=str(Path(__file__).resolve().parents[1]), data=str(tmp_path))
    # A network namespace with only loopback (up): Ray runs on it, nothing can leave the machine.
    result = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"', sys.executable,
                             script], capture_output=True, text=True, timeout=600)
    assert "STATUS ['done', 'done']" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


def test_a_device_list_means_one_worker_per_device() -> None:
    import argparse

    from webui import split_devices

    args = split_devices(argparse.Namespace(device="cuda:0,cuda:1", workers=1))
    assert args.workers == 2 and args.device == "cuda:0"
    assert split_devices(argparse.Namespace(device="cuda", workers=3)).workers == 3


def test_skip_reaches_the_replica_and_interrupt_stops_it(workers: Any, tmp_path: Path) -> None:
    _, queue = queue_for(workers, tmp_path, 1)
    job = queue.submit("txt2img", {**JOB, "seed": 900, "steps": 60, "n_iter": 2, "save_images": True})
    end = time.time() + 60
    while job.id not in queue.running and time.time() < end:
        time.sleep(0.02)
    time.sleep(1.0)
    queue.skip_running()  # the first picture is cut short, the second still made
    end = time.time() + 300
    while queue.store.get(job.id).status == "queued" or job.id in queue.running:
        if time.time() > end:
            raise AssertionError("job did not finish")
        time.sleep(0.05)
    skipped = queue.store.get(job.id)
    assert skipped.status == "done" and len(skipped.files) == 2
    second = queue.submit("txt2img", {**JOB, "seed": 901, "steps": 150, "n_iter": 3, "save_images": True})
    while second.id not in queue.running:
        time.sleep(0.02)
    time.sleep(1.0)
    start = time.perf_counter()
    queue.interrupt_running()
    while second.id in queue.running:
        time.sleep(0.05)
    stopped = queue.store.get(second.id)
    assert stopped.status == "interrupted" and time.perf_counter() - start < 30, stopped.error
    assert len(stopped.files) < 3
