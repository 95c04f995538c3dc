"""The generation routes: txt2img, img2img, progress, interrupt, skip.

A1111 payloads are translated into our `GenerationRequest` and run through the same job queue as
every other client (so queue limits, fairness, security and result storage all apply). An A1111
call blocks its HTTP request until its jobs finish, awaiting the job subscription: the event loop
is never blocked."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ... import images as image_utils
from ...jobs import JobManager, PreviewFrame
from ...protocol import (
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    JobState,
    LatentBridgeError,
    Mode,
    ProgressEvent,
)
from .errors import _read_json, error_response
from .payloads import Img2ImgPayload, _a1111_field
from .samplers import A1111_NAME
from .state import Task, _jobs, _loaded_model, _resolve_model, _settings, _state, _status_of
from .translate import Plan, build_plan

@dataclass
class Outcome:
    pngs: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)


def _raise_error(error: ErrorEvent) -> None:
    raise LatentBridgeError(error.message, field=error.field, code=ErrorCode(error.code))


async def _follow(jobs: JobManager, job_id: str, subscription: Any, task: Task) -> tuple[str, int]:
    """Await one job's end: ("done" | "cancelled", result count), or raise the job's error."""
    try:
        async for event in subscription:
            if isinstance(event, ProgressEvent):
                task.step, task.total = event.step, event.total
            elif isinstance(event, DoneEvent):
                return "done", event.count
            elif isinstance(event, CancelledEvent):
                return "cancelled", 0
            elif isinstance(event, ErrorEvent):
                if event.code == ErrorCode.cancelled:
                    return "cancelled", 0
                _raise_error(event)
    finally:
        subscription.close()
    # The stream ended without a final event: the job's recorded status decides.
    status = _status_of(jobs, job_id)
    if status is not None and status.state is JobState.done:
        return "done", status.result_count
    if status is not None and status.state is JobState.failed and status.error is not None:
        _raise_error(status.error)
    return "cancelled", 0


async def _client_gone(request: web.Request) -> None:
    """Returns once the HTTP client has disconnected (aiohttp does not cancel handlers for it)."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.25)


async def _follow_while_connected(request: web.Request, jobs: JobManager, job_id: str, task: Task) -> tuple[str, int]:
    # Subscribed before anything else runs on the loop, so no event of the job can be missed.
    follow = asyncio.ensure_future(_follow(jobs, job_id, jobs.subscribe(job_id), task))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({follow, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not follow.done():
            # Nobody is waiting for this picture any more: free the GPU for others.
            jobs.cancel(job_id)
            follow.cancel()
    if not follow.done():
        raise asyncio.CancelledError()
    return follow.result()


async def run_plan(request: web.Request, plan: Plan) -> Outcome:
    app = request.app
    jobs = _jobs(app)
    state = _state(app)
    task = Task(plan.kind, plan.n_iter)
    state.tasks.append(task)
    outcome = Outcome()
    try:
        for iteration in range(plan.n_iter):
            if task.interrupted:
                break
            job_request = plan.request_for(iteration)
            task.job_no, task.step, task.total = iteration, 0, job_request.steps
            try:
                job = jobs.submit(job_request, plan.init_image, plan.mask, owner=_owner(request))
            except LatentBridgeError as exc:
                if exc.code is ErrorCode.queue_full:
                    exc.retry_after_s = jobs.retry_after_s()  # type: ignore[attr-defined]
                raise
            task.job_id = job.id
            result, count = await _follow_while_connected(request, jobs, job.id, task)
            for index in range(count):
                png = jobs.result_png(job.id, index)
                if png is None:
                    raise LatentBridgeError(f"result {index} of job {job.id} is missing", code=ErrorCode.internal)
                outcome.pngs.append(png)
                # The engine makes image i of a batch with seed + i (architecture.md).
                outcome.seeds.append((job_request.seed or 0) + index)
                outcome.requests.append(job_request)
            if result == "cancelled":
                break
    finally:
        state.tasks.remove(task)
    return outcome


def build_info(plan: Plan, outcome: Outcome, model_name: str | None) -> dict[str, Any]:
    """The `info` object (sent as a JSON string), shaped as A1111's `Processed.js()`."""
    req = plan.request
    seeds = outcome.seeds or [req.seed or 0]
    requests = outcome.requests or [req]
    count = len(seeds)
    return {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * count,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * count,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": plan.payload.subseed if plan.payload.subseed != -1 else seeds[0],
        "all_subseeds": seeds,
        "subseed_strength": plan.payload.subseed_strength,
        "width": req.width,
        "height": req.height,
        "sampler_name": A1111_NAME.get(req.sampler, req.sampler.value),
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": bool(plan.payload.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": req.model or model_name,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": plan.payload.seed_resize_from_w,
        "seed_resize_from_h": plan.payload.seed_resize_from_h,
        "denoising_strength": req.strength if plan.kind == "img2img" else plan.payload.denoising_strength,
        "extra_generation_params": {"Schedule type": "Karras"} if "karras" in req.sampler.value else {},
        "index_of_first_image": 0,
        "infotexts": [image_utils.a1111_parameters(r, s) for r, s in zip(requests, seeds)],
        "styles": plan.payload.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": req.mode is Mode.inpaint,
        "version": "latentbridge",
    }



def _owner(request: web.Request) -> str:
    # Fairness is between clients: each peer address counts as one.
    return f"a1111:{request.remote or 'local'}"


async def _generate(request: web.Request, kind: str) -> web.Response:
    app = request.app
    settings = _settings(app)
    try:
        data = await _read_json(request)
        plan = await asyncio.to_thread(
            build_plan, kind, data, max_pixels=settings.max_pixels, max_iterations=settings.max_queue,
            loaded_model=_loaded_model(app),
        )
        if plan.request.model is not None:
            plan.request = plan.request.model_copy(update={"model": _resolve_model(app, plan.request.model)})
        outcome = await run_plan(request, plan)
    except LatentBridgeError as exc:
        return error_response(_a1111_field(exc))
    encoded = await asyncio.to_thread(lambda: [base64.b64encode(p).decode("ascii") for p in outcome.pngs])
    parameters = plan.payload.model_dump(mode="json")
    if isinstance(plan.payload, Img2ImgPayload) and not plan.payload.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    parameters.pop("include_init_images", None)
    return web.json_response({
        "images": encoded if plan.payload.send_images else [],
        "parameters": parameters,
        "info": json.dumps(build_info(plan, outcome, _loaded_model(app))),
    })


async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, "txt2img")


async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, "img2img")


def _png_b64(frame: PreviewFrame) -> str:
    """A1111 clients expect PNG here; our previews are JPEG or raw, so re-encode (small images)."""
    out = io.BytesIO()
    image_utils.preview_image(frame.data, frame.format, (frame.width, frame.height)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


async def progress(request: web.Request) -> web.Response:
    app = request.app
    jobs = _jobs(app)
    state = _state(app)
    skip_image = request.query.get("skip_current_image", "false").lower() in ("1", "true", "yes")
    running = jobs.current_job  # whatever is on the GPU: an A1111 call's job or anyone else's
    task = next((t for t in state.tasks if running is not None and t.job_id == running.id), None)
    if task is None and running is None and state.tasks:
        task = state.tasks[0]  # an A1111 call whose job is still queued
    if task is None and running is None:
        return web.json_response({
            "progress": 0.0, "eta_relative": 0.0, "state": _state_dict(None, None),
            "current_image": None, "textinfo": None,
        })
    if task is not None:
        step, total = task.step, task.total
        if running is not None and running.id == task.job_id and running.total:
            step, total = max(step, running.step or 0), running.total
        fraction = (task.job_no + (step / total if total else 0.0)) / task.job_count
        started = task.started
    else:
        step, total = running.step or 0, running.total or 0
        fraction = step / total if total else 0.0
        started = running.started_at or time.time()
    fraction = min(max(fraction, 0.01), 1.0)  # A1111 reports at least 0.01 while working
    elapsed = max(time.time() - started, 0.0)
    eta = max(elapsed / fraction - elapsed, 0.0)
    current_image = None
    latest = jobs.latest_preview()
    if latest is not None and not skip_image:
        current_image = await asyncio.to_thread(_png_b64, latest[1])
    return web.json_response({
        "progress": fraction,
        "eta_relative": eta,
        "state": _state_dict(task, (step, total)),
        "current_image": current_image,
        "textinfo": None,
    })


def _state_dict(task: Task | None, steps: tuple[int, int] | None) -> dict[str, Any]:
    step, total = steps or (0, 0)
    return {
        "skipped": False,
        "interrupted": bool(task and task.interrupted),
        "stopping_generation": False,
        "job": f"scripts_{task.kind}" if task else ("" if steps is None else "latentbridge"),
        "job_count": task.job_count if task else (1 if steps else 0),
        "job_timestamp": task.timestamp if task else "0",
        "job_no": task.job_no if task else 0,
        "sampling_step": step,
        "sampling_steps": total,
    }


async def interrupt(request: web.Request) -> web.Response:
    """Stop what is running now (A1111 semantics); its A1111 call also skips its later batches."""
    jobs = _jobs(request.app)
    running = jobs.current_job
    for task in _state(request.app).tasks:
        if running is None or task.job_id == running.id:
            task.interrupted = True
    if running is not None:
        jobs.cancel(running.id)
    return web.json_response({})


async def skip(request: web.Request) -> web.Response:
    # A1111's "skip" ends the current image and goes on with the next batch: a cancel does that.
    jobs = _jobs(request.app)
    running = jobs.current_job
    if running is not None:
        jobs.cancel(running.id)
    return web.json_response(None)
