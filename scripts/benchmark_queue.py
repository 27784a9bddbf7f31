"""Figures of the job queue and the Ray Serve workers on the embedded default model (20 steps, 128×128,
DPM++ 2M, CFG 7; pictures saved as in normal use):

  direct       AppContext.generate one request after another (no queue);
  queue        the same requests through the durable queue (SQLite, one local worker): its overhead per
               job against `direct`, measured in the same run;
  ray N        the same jobs on N Ray Serve replicas of --threads threads each (a private local Ray),
               in jobs per minute.

    ./venv/bin/python scripts/benchmark_queue.py [--jobs 16] [--threads 1] [--workers 1,2] [--no-ray]

Each side runs the same seeds; the first job of each side is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REQUEST = {"prompt": "a red circle on a blue background", "steps": 20, "width": 128, "height": 128,
           "sampler_name": "DPM++ 2M", "cfg_scale": 7, "save_images": True}


def wait(queue, ids: list[str]) -> None:  # noqa: ANN001
    while any(queue.store.get(i).status not in ("done", "failed", "interrupted") for i in ids):
        time.sleep(0.01)
    failed = [queue.store.get(i) for i in ids if queue.store.get(i).status != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) did not finish: {failed[0].error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (and for direct/queue)")
    parser.add_argument("--workers", default="1,2", help="Ray replica counts to measure")
    parser.add_argument("--no-ray", action="store_true", help="only direct and queue")
    args = parser.parse_args()

    from modules.api.jobs import open_queue
    from modules.context import AppContext, Paths
    from modules.devices import DevicePolicy, configure_threads
    from modules.processing.params import Txt2ImgParams

    configure_threads(args.threads)
    rows: list[tuple[str, float, float]] = []  # side, seconds per job, jobs per minute
    with tempfile.TemporaryDirectory() as tmp:
        ctx = AppContext.create(Paths.make(data_dir=Path(tmp) / "direct"), DevicePolicy.cpu())
        params = Txt2ImgParams(prompt=REQUEST["prompt"], steps=20, width=128, height=128, sampler="DPM++ 2M")
        ctx.generate(Txt2ImgParams(**{**params.as_dict(), "seed": 0}))  # warm-up
        times = []
        for i in range(args.jobs):
            start = time.perf_counter()
            ctx.generate(Txt2ImgParams(**{**params.as_dict(), "seed": 1 + i}))
            times.append(time.perf_counter() - start)
        direct = sum(times) / len(times)
        rows.append(("direct (no queue)", direct, 60 / direct))

        qctx = AppContext.create(Paths.make(data_dir=Path(tmp) / "queue"), DevicePolicy.cpu())
        queue = open_queue(qctx)
        wait(queue, [queue.submit("txt2img", {**REQUEST, "seed": 0}).id])  # warm-up
        start = time.perf_counter()
        ids = [queue.submit("txt2img", {**REQUEST, "seed": 1 + i}).id for i in range(args.jobs)]
        wait(queue, ids)
        queued = (time.perf_counter() - start) / args.jobs
        rows.append(("queue (SQLite, 1 local worker)", queued, 60 / queued))
        queue.stop()
        overhead = queued / direct - 1

        if not args.no_ray:
            from modules.workers.ray_serve import RayWorkers

            counts = [int(c) for c in args.workers.split(",")]
            rctx = AppContext.create(Paths.make(data_dir=Path(tmp) / "ray"), DevicePolicy.cpu())
            workers = RayWorkers.start(rctx, max(counts), threads=args.threads)
            for count in counts:
                ectx = AppContext.create(Paths.make(data_dir=Path(tmp) / f"ray-{count}"), DevicePolicy.cpu())
                entry = RayWorkers(ctx=ectx, count=count, handle=workers.handle, board=workers.board)
                rqueue = open_queue(ectx, entry.execute, count, entry.interrupt)
                wait(rqueue, [rqueue.submit("txt2img", {**REQUEST, "seed": 0}).id for _ in range(count)])
                start = time.perf_counter()
                ids = [rqueue.submit("txt2img", {**REQUEST, "seed": 1 + i}).id for i in range(args.jobs)]
                wait(rqueue, ids)
                per_job = (time.perf_counter() - start) / args.jobs
                rows.append((f"Ray Serve, {count} replica(s) x {args.threads} thread(s)", per_job, 60 / per_job))
                rqueue.stop()
            workers.shutdown()

    print(f"\n{args.jobs} jobs, embedded model, 20 steps, 128x128, {args.threads} thread(s) per worker, "
          f"{os.cpu_count()} CPU(s)\n")
    print("| side | s per job | jobs per minute |")
    print("|---|---|---|")
    for side, seconds, per_minute in rows:
        print(f"| {side} | {seconds:.3f} | {per_minute:.1f} |")
    print(f"\nqueue overhead per job against a direct call: {overhead * 100:+.1f}% "
          f"(median direct job {statistics.median(times):.3f} s)")


if __name__ == "__main__":
    main()
