"""Figures of the job queue and the Ray Serve workers on the embedded default model (20 steps, 128×128,
DPM++ 2M, CFG 7; pictures saved as in normal use):

  direct       AppContext.generate one request after another (no queue);
  queue        the same requests through the durable queue (SQLite, one local worker): its overhead per
               job against `direct`, measured in the same run;
  ray N        the same jobs on N Ray Serve replicas of --threads threads each (a private local Ray),
               in jobs per minute.

    ./venv/bin/python scripts/benchmark_queue.py [--jobs 16] [--threads 1] [--workers 1,2] [--no-ray]

Each side runs the same seeds; the first job of each side is a warm-up and is not timed. Direct and
queued runs alternate in --rounds rounds and the medians are compared.
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


def submit(queue, requests: list[dict]) -> list[str]:  # noqa: ANN001
    """Queue the jobs as clients that wait would (the runner tells each waiter; nothing polls)."""
    return [queue.submit("txt2img", r, wait=True).id for r in requests]


def wait(queue, ids: list[str]) -> None:  # noqa: ANN001
    for job_id in ids:
        queue.wait_for(job_id)
    failed = [queue.store.get(i) for i in ids if queue.store.get(i).status != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) did not finish: {failed[0].error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (and for direct/queue)")
    parser.add_argument("--workers", default="1,2", help="Ray replica counts to measure")
    parser.add_argument("--no-ray", action="store_true", help="only direct and queue")
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct / queue rounds (medians)")
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
        qctx = AppContext.create(Paths.make(data_dir=Path(tmp) / "queue"), DevicePolicy.cpu())
        queue = open_queue(qctx)
        ctx.generate(Txt2ImgParams(**{**params.as_dict(), "seed": 0}))  # warm-ups
        wait(queue, submit(queue, [{**REQUEST, "seed": 0}]))
        # Direct and queued runs alternate in rounds, so that a drift in the machine's speed hits both.
        direct_times, queue_times = [], []
        per_round = max(1, args.jobs // args.rounds)
        for r in range(args.rounds):
            seeds = [1 + r * per_round + i for i in range(per_round)]
            start = time.perf_counter()
            for seed in seeds:
                ctx.generate(Txt2ImgParams(**{**params.as_dict(), "seed": seed}))
            direct_times.append((time.perf_counter() - start) / per_round)
            start = time.perf_counter()
            wait(queue, submit(queue, [{**REQUEST, "seed": seed} for seed in seeds]))
            queue_times.append((time.perf_counter() - start) / per_round)
        queue.stop()
        direct, queued = statistics.median(direct_times), statistics.median(queue_times)
        rows.append(("direct (no queue)", direct, 60 / direct))
        rows.append(("queue (SQLite, 1 local worker)", queued, 60 / queued))
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
                wait(rqueue, submit(rqueue, [{**REQUEST, "seed": 0}] * count))
                start = time.perf_counter()
                wait(rqueue, submit(rqueue, [{**REQUEST, "seed": 1 + i} for i in range(args.jobs)]))
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
    print(f"\nqueue overhead per job against a direct call: {overhead * 100:+.1f}% (medians of {args.rounds} "
          f"alternating rounds; per-round direct {', '.join(f'{t:.2f}' for t in direct_times)} s, queue "
          f"{', '.join(f'{t:.2f}' for t in queue_times)} s)")


if __name__ == "__main__":
    main()
