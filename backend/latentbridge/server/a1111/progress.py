"""/progress, /interrupt and /skip: A1111's one global generation state, over our job queue.

Progress reports whatever job is on the GPU, an A1111 call's or any other client's; over an
A1111 call it counts all its `n_iter` batches, as A1111 does. `skip` ends the current batch and
the call goes on with the next; `interrupt` stops the running job and its call runs no more.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

from aiohttp import web

from ..jsonio import json_response
from ... import images as image_utils
from ...jobs import PreviewFrame
from .errors import a1111_route
from .options import effective
from .state import Task, jobs, state


def _png_b64(frame: PreviewFrame) -> str:
    """A1111 clients expect PNG here; our previews are JPEG or raw, so re-encode (small images)."""
    out = io.BytesIO()
    image_utils.preview_image(frame.data, frame.format, (frame.width, frame.height)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@a1111_route
async def progress(request: web.Request) -> web.Response:
    app = request.app
    manager, tasks = jobs(app), state(app).tasks
    skip_image = _truthy(request.query.get("skip_current_image", "false"))
    running = manager.current_job  # whatever is on the GPU: an A1111 call's job or anyone else's
    task = next((t for t in tasks if running is not None and t.job_id == running.id), None)
    if task is None and running is None and tasks:
        task = tasks[0]  # an A1111 call whose job is still queued
    if task is None and running is None:
        return json_response({"progress": 0, "eta_relative": 0, "state": _state_dict(None, None),
                                  "current_image": None, "textinfo": None})
    if task is not None:
        step, total = task.step, task.total
        if running is not None and running.id == task.job_id and running.total:
            step, total = max(step, running.step or 0), running.total
        job_no, job_count, started = task.job_no, task.job_count, task.started
    else:
        step, total = running.step or 0, running.total or 0
        job_no, job_count, started = 0, 1, running.started_at or time.time()
    # A1111's formula: 0.01 + the batches done + the fraction of the current one.
    fraction = min(0.01 + job_no / job_count + (step / total / job_count if total else 0.0), 1.0)
    elapsed = max(time.time() - started, 0.0)
    current_image = None
    latest = manager.latest_preview()
    if latest is not None and not skip_image and effective(app).get("live_previews_enable", True):
        current_image = await asyncio.to_thread(_png_b64, latest[1])
    return json_response({
        "progress": fraction,
        "eta_relative": max(elapsed / fraction - elapsed, 0.0),
        "state": _state_dict(task, (step, total)),
        "current_image": current_image,
        "textinfo": None,
    })


def _state_dict(task: Task | None, steps: tuple[int, int] | None) -> dict[str, Any]:
    step, total = steps or (0, 0)
    if task is not None:
        # A1111 names a call by its script, then "Batch n out of N" while it runs several.
        job = f"Batch {task.job_no + 1} out of {task.job_count}" if task.job_count > 1 else f"scripts_{task.kind}"
    else:
        job = "" if steps is None else "latentbridge"  # another client's job
    return {
        "skipped": bool(task and task.skipped),
        "interrupted": bool(task and task.interrupted),
        "stopping_generation": False,
        "job": job,
        "job_count": task.job_count if task else (1 if steps else 0),
        "job_timestamp": task.timestamp if task else "0",
        "job_no": task.job_no if task else 0,
        "sampling_step": step,
        "sampling_steps": total,
    }


@a1111_route
async def interrupt(request: web.Request) -> web.Response:
    """Stop what is running now (A1111 semantics); its A1111 call also runs no later batches."""
    manager = jobs(request.app)
    running = manager.current_job
    for task in state(request.app).tasks:
        if running is None or task.job_id == running.id:
            task.interrupted = True
    if running is not None:
        await manager.cancel(running.id)
    return json_response({})


@a1111_route
async def skip(request: web.Request) -> web.Response:
    """End the current batch; its A1111 call goes on with the next one."""
    manager = jobs(request.app)
    running = manager.current_job
    if running is not None:
        for task in state(request.app).tasks:
            if task.job_id == running.id:
                task.skipped = True
        await manager.cancel(running.id)
    return json_response(None)
