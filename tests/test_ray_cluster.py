"""Two Ray nodes on one machine (a head and a worker node, each its own raylet process) serve one queue:
the UI/API process joins them with --ray, and jobs run on replicas on both nodes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.test_queue_crash import server
from tests.tiny_models import write_tiny_checkpoint

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
Q = "/agent-scheduler/v1"


def test_two_nodes_serve_one_queue(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    from tests.test_queue_crash import free_port

    data = tmp_path / "data"
    write_tiny_checkpoint(data / "models" / "Stable-diffusion", "sd1", stem="tiny")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        with server(data, free_port(), "--ray", cluster.address, "--workers", "2") as (_, url):
            ids = [requests.post(f"{url}{Q}/queue/txt2img", json={"prompt": f"p{i}", "seed": i, "steps": 6,
                                                                  "width": 64, "height": 64}, timeout=30).json()["task_id"]
                   for i in range(6)]
            tasks: dict[str, dict] = {}
            end = time.time() + 300
            while len(tasks) < len(ids) and time.time() < end:
                for task_id in ids:
                    task = requests.get(f"{url}{Q}/task/{task_id}", timeout=10).json()["data"]
                    if task["status"] in ("done", "failed"):
                        tasks[task_id] = task
                time.sleep(0.2)
        assert [tasks[i]["status"] for i in ids] == ["done"] * 6, [t.get("error") for t in tasks.values()]
        nodes = {t["worker"].split("@")[1] for t in tasks.values()}
        assert len(nodes) == 2  # both nodes' replicas worked
        assert len(list((data / "outputs" / "txt2img-images").rglob("*.png"))) == 6  # saved by the entry point
    finally:
        cluster.shutdown()
