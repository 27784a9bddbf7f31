"""The UI side of the queue: a tab's parameters survive the trip through a job (pictures and ControlNet
units included), an enqueued UI job runs and lands on disk, the Queue tab's lists and actions, and in
the browser: Enqueue, the Queue tab's history with the job's pictures, its settings sent back to txt2img."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.api.jobs import open_queue
from modules.context import AppContext, Paths
from modules.controlnet.units import ControlUnit
from modules.processing.params import InpaintParams, Txt2ImgParams
from modules.queue.params_codec import decode_params, encode_params
from modules.ui import queue_tab
from tests.tiny_models import CPU, write_tiny_checkpoint


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    home = tmp_path_factory.mktemp("ui-queue")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny")
    ctx = AppContext.create(Paths.make(data_dir=home), CPU)
    open_queue(ctx)
    return ctx


def picture(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_params_survive_the_trip_through_a_job() -> None:
    unit = ControlUnit(enabled=True, module="canny", model="cn", image=picture(1), weight=0.5, guidance_end=0.8)
    params = InpaintParams(prompt="a cat", seed=-1, steps=3, init_image=picture(2), mask=Image.new("L", (64, 64), 255),
                           controlnet_units=(unit,), styles=("Sharp",), override_settings={"eta_noise_seed_delta": 1})
    kind, data = encode_params(params)
    json.dumps(data)  # storable as the job's JSON
    back = decode_params(kind, data)
    assert kind == "params:inpaint" and isinstance(back, InpaintParams)
    assert back.seed >= 0 and data["seed"] == back.seed  # the random seed is drawn once, before storing
    assert np.array_equal(np.asarray(back.init_image), np.asarray(params.init_image))
    assert np.array_equal(np.asarray(back.mask), np.asarray(params.mask))
    (unit_back,) = back.controlnet_units
    assert unit_back.weight == 0.5 and unit_back.guidance_end == 0.8 and unit_back.module == "canny"
    assert np.array_equal(np.asarray(unit_back.image), np.asarray(unit.image))
    assert back.styles == ("Sharp",) and back.override_settings == {"eta_noise_seed_delta": 1}


def wait_done(ctx: AppContext, job_id: str) -> Any:
    end = time.time() + 120
    while time.time() < end:
        job = ctx.queue.store.get(job_id)
        if job.status in ("done", "failed", "interrupted"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_a_ui_job_runs_and_the_tab_lists_and_acts(ctx: AppContext) -> None:
    queue = ctx.queue
    queue.pause()
    try:
        kind, data = encode_params(Txt2ImgParams(prompt="queued from the UI", seed=77, steps=2, width=64, height=64))
        first = queue.submit(kind, data)
        second = queue.submit(kind, {**data, "seed": 78})
        rows = queue_tab.pending_rows(ctx)
        assert [r[1] for r in rows] == [first.id, second.id] and rows[0][4] == 77
        assert "paused" in queue_tab.status_html(ctx)
        assert "moved to the top" in queue_tab.act(ctx, "top", second.id)
        assert [r[1] for r in queue_tab.pending_rows(ctx)] == [second.id, first.id]
        assert "Enter a task id" in queue_tab.act(ctx, "cancel", "")
        assert "deleted" in queue_tab.act(ctx, "cancel", second.id)
    finally:
        queue_tab.act(ctx, "resume", "")
    job = wait_done(ctx, first.id)
    assert job.status == "done" and len(job.files) == 1 and Path(job.files[0]).is_file()
    history = queue_tab.history_rows(ctx)
    assert history[0][:3] == [first.id, "params:txt2img", "done"] and history[0][4] == 1
    image, text = queue_tab.job_source(ctx, first.id)
    assert image is not None and text is not None and text.startswith("queued from the UI") and "Seed: 77" in text
    assert [p for p, _ in queue_tab.job_pictures(ctx, first.id)] == job.files
    message = queue_tab.act(ctx, "requeue", first.id)
    copy_id = message.split("Queued again as ")[1].split(".")[0]
    assert wait_done(ctx, copy_id).status == "done"


# ------------------------------------------------------------------------------------------ in the browser
from tests.test_ui import (  # noqa: E402, F401 - fixtures are found by name
    _set_number,
    browser,
    browser_only,
    data_dir,
    page,
    server,
)


@browser_only
def test_enqueue_and_the_queue_tab_in_the_browser(page: Any, server: Any) -> None:  # noqa: F811
    open_queue(server.ctx)
    page.fill("#txt2img_prompt textarea", "a queued circle")
    _set_number(page, "txt2img_steps", 2)
    _set_number(page, "txt2img_seed", 4242)
    page.click("#txt2img_enqueue")
    page.wait_for_selector("#txt2img_message .ok-box, #txt2img_message .error-box")
    message = page.inner_text("#txt2img_message")
    assert "Queued as task" in message and "seed 4242" in message
    task_id = message.split("Queued as task ")[1].split(" ")[0]
    page.click("#tab_queue-button")
    # The timer refreshes the lists: the job shows up in the history, done (the table's cells are
    # found by their text, which Playwright looks for inside the table's shadow DOM too).
    page.locator("#queue_history").get_by_text(task_id).filter(visible=True).first.wait_for(timeout=120_000)
    page.locator("#queue_history").get_by_text("done").filter(visible=True).first.wait_for()
    page.fill("#queue_task_id textarea, #queue_task_id input", task_id)
    page.press("#queue_task_id textarea, #queue_task_id input", "Enter")
    page.wait_for_selector("#queue_pictures img")
    page.click("#queue_send_to_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a queued circle'")
    assert page.input_value("#txt2img_seed input[type=number]") == "4242"
    # Generate goes through the queue as well: the picture comes back, and the job is in the history.
    page.fill("#txt2img_prompt textarea", "generated through the queue")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img")
    jobs, _ = server.ctx.queue.store.history(limit=5)
    assert any(j.request.get("prompt") == "generated through the queue" and j.status == "done" for j in jobs)
