"""The HTTP API under /api/v1 (docs/http-api.md): the websocket's operations over plain HTTP."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..jobs import Job, PreviewFrame
from ..protocol import (
    BUILTIN_MODELS,
    PROTOCOL_VERSION,
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    InvalidRequest,
    LatentBridgeError,
    ModelState,
    PreviewEvent,
    TooLarge,
    ConditioningRole,
    error_from_validation,
    image_role_pattern,
    loads_json,
)
from .app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY
from .errors import log_client_gone
from .jsonio import json_response, read_json
from .security import list_controlnets, list_models, resolve_model_name
from .submit import submit_job

API = "/api/v1"
SSE_KEEPALIVE_S = 15.0


class SubmitBody(BaseModel):
    """`POST /api/v1/jobs` as JSON. Images are base64 (a `data:` URL prefix is accepted)."""

    model_config = ConfigDict(extra="forbid")
    request: GenerationRequest
    init_image: str | None = Field(None, description="base64 PNG/JPEG/WebP")
    mask: str | None = Field(None, description="base64 image; white (or painted alpha) = repaint")
    images: dict[ConditioningRole, str] = Field(default_factory=dict, description="Other images by role, base64: "
                                         "`control.<i>` for control unit i, `reference.<i>` for reference image i")
    priority: str = Field("normal", pattern="^(interactive|normal|batch)$")


class LoadModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=1024)


def _b64(value: str, field: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LatentBridgeError(f"{field} is not valid base64", field=field, code=ErrorCode.bad_image) from None


async def _json_body(request: web.Request) -> Any:
    return await read_json(request)


def _owner(request: web.Request) -> str:
    return f"http:{request.remote or 'local'}"


def _job_or_404(request: web.Request):
    job_id = request.match_info["job_id"]
    status = request.app[JOBS_KEY].status(job_id)
    if status is None:
        raise LatentBridgeError(f"no job {job_id}", field="job_id", code=ErrorCode.unknown_job)
    return job_id, status


# ---------------------------------------------------------------------------------------------
# Jobs


MULTIPART_PARTS = ("request", "priority", "init_image", "mask")  # and the image roles: control.0, reference.0, ...


async def _read_multipart(request: web.Request) -> tuple[Any, dict[str, bytes], str]:
    """The multipart body's parts. Malformed part headers surface as aiohttp's HttpProcessingError
    (the error middleware makes it a 400); each part is bounded by `client_max_size` and, since a
    chunked body has no Content-Length, so is their sum (at most one part of each name)."""
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:  # no boundary, or a boundary aiohttp cannot use
        raise LatentBridgeError(f"malformed multipart body: {exc}"[:300], field="Content-Type",
                                code=ErrorCode.bad_message) from None
    parts: dict[str, bytes] = {}
    total = 0
    try:
        async for part in reader:
            name = part.name or ""
            if name not in MULTIPART_PARTS and not re.match(image_role_pattern(conditioning_only=True), name):
                raise InvalidRequest(f"unknown multipart part {name!r}", field=name[:100] or "part")
            if name in parts:
                raise InvalidRequest(f"multipart part {name!r} sent twice", field=name)
            parts[name] = bytes(await part.read())  # raw: Content-Transfer-Encoding is obsolete for forms (RFC 7578)
            total += len(parts[name])
            if total > request.app[SETTINGS_KEY].max_body_bytes:
                raise TooLarge("request body too large", field="body")
    except ValueError as exc:  # aiohttp: a boundary or part Content-Length it cannot parse
        raise LatentBridgeError(f"malformed multipart body: {exc}"[:300], field="body",
                                code=ErrorCode.bad_message) from None
    data = None
    if "request" in parts:
        data = loads_json(_utf8(parts["request"], "request"), what="the `request` part", field="request")
    priority = _utf8(parts["priority"], "priority").strip() if "priority" in parts else "normal"
    if data is None:
        raise InvalidRequest("multipart body needs a `request` part with the request JSON", field="request")
    return data, {k: v for k, v in parts.items() if k not in ("request", "priority")}, priority


def _utf8(data: bytes, field: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LatentBridgeError(f"the `{field}` part is not UTF-8 text", field=field, code=ErrorCode.bad_message) from None


async def submit(request: web.Request) -> web.Response:
    ctype = request.content_type
    if ctype == "multipart/form-data":
        data, files, priority = await _read_multipart(request)
        body = {"request": data, "priority": priority}
        init_bytes = files.pop("init_image", None)
        mask_bytes = files.pop("mask", None)
    elif ctype == "application/json":
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object with a `request`", field="body")
        init_bytes = mask_bytes = None
        files = {}
    else:
        raise LatentBridgeError(f"unsupported content type {ctype!r}: send application/json or multipart/form-data",
                                field="Content-Type", code=ErrorCode.bad_message)
    try:
        parsed = SubmitBody.model_validate(body)
    except ValidationError as exc:
        raise error_from_validation(exc) from None
    if parsed.init_image is not None:
        init_bytes = _b64(parsed.init_image, "init_image")
    if parsed.mask is not None:
        mask_bytes = _b64(parsed.mask, "mask")
    for role, value in parsed.images.items():
        files[role] = _b64(value, f"images.{role}")
    job = await submit_job(request.app, parsed.request, init_bytes, mask_bytes, owner=_owner(request),
                           priority=parsed.priority, images=files)
    position = request.app[JOBS_KEY].position(job) or 0
    return json_response({"type": "accepted", "job_id": job.id, "client_ref": None, "position": position},
                             status=202, headers={"Location": f"{API}/jobs/{job.id}"})


async def history(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise InvalidRequest("limit must be an integer", field="limit") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be between 1 and 1000", field="limit")
    jobs = request.app[JOBS_KEY].history(limit)
    return json_response({"jobs": [s.model_dump(mode="json") for s in jobs]})


async def job_status(request: web.Request) -> web.Response:
    _job_id, status = _job_or_404(request)
    return json_response(status.model_dump(mode="json"))


async def cancel(request: web.Request) -> web.Response:
    job_id, _status = _job_or_404(request)
    cancelled = await request.app[JOBS_KEY].cancel(job_id)
    state = request.app[JOBS_KEY].status(job_id)
    return json_response({"job_id": job_id, "cancelled": cancelled,
                              "state": state.state.value if state else None})


async def result(request: web.Request) -> web.Response:
    job_id, _status = _job_or_404(request)
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise InvalidRequest("index must be an integer", field="index") from None
    jobs = request.app[JOBS_KEY]
    png = jobs.result_png(job_id, index)
    if png is None:
        png = await asyncio.to_thread(jobs.store.result_png, job_id, index)
    if png is None:
        raise LatentBridgeError(f"job {job_id} has no result {index}", field="index", code=ErrorCode.unknown_job)
    return web.Response(body=png, content_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{job_id}-{index}.png"',
                                 "Cache-Control": "private, max-age=31536000, immutable"})


def _sse(event: BaseModel) -> bytes:
    data = event.model_dump_json()
    return f"event: {event.type}\ndata: {data}\n\n".encode()  # type: ignore[attr-defined]


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the same JSON as the websocket; previews as `preview` events (base64)."""
    job_id, status = _job_or_404(request)
    jobs = request.app[JOBS_KEY]
    subscription = jobs.subscribe(job_id)  # before any await: no event can be missed
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        if not status.state.finished:
            await response.write(_sse(status))
        iterator = subscription.__aiter__()
        while True:
            try:
                item = await asyncio.wait_for(iterator.__anext__(), SSE_KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            except StopAsyncIteration:
                break
            if isinstance(item, PreviewFrame):
                item = PreviewEvent(job_id=job_id, step=item.step, total=item.total, width=item.width,
                                    height=item.height, format=item.format,
                                    data=base64.b64encode(item.data).decode("ascii"))
            await response.write(_sse(item))
            if isinstance(item, (DoneEvent, CancelledEvent, ErrorEvent)):
                break
        await response.write_eof()
    except ConnectionResetError as exc:  # the reader hung up; the job runs on
        log_client_gone(request, exc)
    finally:
        subscription.close()
    return response


# ---------------------------------------------------------------------------------------------
# Models and health


async def models(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    available = await asyncio.to_thread(list_models, settings)
    controlnets = await asyncio.to_thread(list_controlnets, settings)
    return json_response({
        "controlnets": controlnets,
        "current": request.app[ENGINE_KEY].status.model_dump(mode="json"),
        "configured": settings.model,
        "builtin": list(BUILTIN_MODELS),
        "models": available,
    })


async def load_model(request: web.Request) -> web.Response:
    try:
        body = LoadModelBody.model_validate(await _json_body(request))
    except ValidationError as exc:
        raise error_from_validation(exc) from None
    engine = request.app[ENGINE_KEY]
    name = resolve_model_name(body.model, request.app[SETTINGS_KEY], engine.status.name)
    await request.app[JOBS_KEY].load_model(name, requested_by=_owner(request))
    return json_response(engine.status.model_dump(mode="json"))


async def health(request: web.Request) -> web.Response:
    jobs = request.app[JOBS_KEY]
    model = request.app[ENGINE_KEY].status
    current: Job | None = jobs.current_job
    status = {"ready": "ok", "failed": "error"}.get(model.state.value, "starting")
    return json_response({
        "status": status,
        "server": f"latentbridge/{__version__}",
        "protocol": PROTOCOL_VERSION,
        "model": model.model_dump(mode="json"),
        "queue_length": jobs.queue_length,
        "running": current.id if current is not None else None,
        "accepting": jobs.accepting and model.state is not ModelState.failed,
    })


def add_rest_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{API}/jobs", submit)
    r.add_get(f"{API}/jobs", history)
    r.add_get(f"{API}/jobs/{{job_id}}", job_status)
    r.add_get(f"{API}/jobs/{{job_id}}/events", events)
    r.add_post(f"{API}/jobs/{{job_id}}/cancel", cancel)
    r.add_get(f"{API}/jobs/{{job_id}}/results/{{index}}", result)
    r.add_get(f"{API}/models", models)
    r.add_post(f"{API}/models/load", load_model)
    r.add_get(f"{API}/health", health)
