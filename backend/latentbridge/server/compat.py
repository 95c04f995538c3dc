"""What the compatibility layers (A1111's /sdapi/v1, OpenAI's /v1/images) share: running one of our
`GenerationRequest`s as a job to its end while the HTTP client waits, and base64 images in.

They translate into the one request type and submit through `submit.resolve_remote_request` and
the job queue like every other client: the same limits, fairness, names a remote client may use,
history and result storage. A waiting HTTP call never blocks the event loop; if its client goes
away, the running job is cancelled (nobody wants that picture any more).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web
from PIL import Image

from .. import images as image_utils
from ..jobs import JobManager
from ..protocol import (
    BadImage,
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    JobState,
    LatentBridgeError,
    ProgressEvent,
    StatusEvent,
    Unsupported,
)
from .app import JOBS_KEY, SETTINGS_KEY
from .submit import resolve_remote_request

T = TypeVar("T")


@dataclass
class JobOutcome:
    """A finished job as a compatibility route returns it."""

    job_id: str
    state: str  # "done" | "cancelled"
    request: GenerationRequest
    pngs: list[bytes] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        # The engine makes image i of a batch with seed + i (docs/architecture.md).
        return [(self.request.seed or 0) + i for i in range(len(self.pngs))]


def raise_job_error(error: ErrorEvent) -> None:
    raise LatentBridgeError(error.message, field=error.field, code=ErrorCode(error.code))


async def client_gone(request: web.Request) -> None:
    """Returns once the HTTP client has disconnected (aiohttp does not cancel handlers for it)."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.25)


async def while_connected(request: web.Request, work: Awaitable[T], on_gone: Callable[[], None]) -> T:
    """`await work`, unless the HTTP client goes away first: then `on_gone()` (cancel the job or the
    upscale: nobody wants its result any more) and CancelledError."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            on_gone()
    if not task.done():
        raise asyncio.CancelledError()
    return task.result()


async def _follow(jobs: JobManager, job_id: str, subscription: Any,
                  on_progress: Callable[[ProgressEvent], None] | None) -> tuple[str, int]:
    """Await one job's end: ("done" | "cancelled", result count), or raise the job's error."""
    try:
        async for event in subscription:
            if isinstance(event, ProgressEvent):
                if on_progress is not None:
                    on_progress(event)
            elif isinstance(event, DoneEvent):
                return "done", event.count
            elif isinstance(event, CancelledEvent):
                return "cancelled", 0
            elif isinstance(event, ErrorEvent):
                if event.code == ErrorCode.cancelled:
                    return "cancelled", 0
                raise_job_error(event)
    finally:
        subscription.close()
    # The stream ended without a final event: the job's recorded status decides.
    found = jobs.get(job_id)
    status = found if isinstance(found, StatusEvent) or found is None else found.status()
    if status is not None and status.state is JobState.done:
        return "done", status.result_count
    if status is not None and status.state is JobState.failed and status.error is not None:
        raise_job_error(status.error)
    return "cancelled", 0


async def run_job(request: web.Request, generation: GenerationRequest, init_image: Image.Image | None = None,
                  mask: Image.Image | None = None, *, owner: str, images: dict[str, Image.Image] | None = None,
                  on_submit: Callable[[str], None] | None = None,
                  on_progress: Callable[[ProgressEvent], None] | None = None) -> JobOutcome:
    """Submit `generation` as a job and wait for it, cancelling it if the HTTP client goes away.
    `images` holds the other inputs by role (control.0, reference.0, ...). Raises the job's typed
    error when it fails; a cancelled job returns with no images."""
    app = request.app
    jobs: JobManager = app[JOBS_KEY]
    generation = resolve_remote_request(app, generation)
    try:
        job = await jobs.submit(generation, init_image, mask, owner=owner, images=images)
    except LatentBridgeError as exc:
        if exc.code is ErrorCode.queue_full:
            exc.retry_after_s = jobs.retry_after_s()  # type: ignore[attr-defined]
        raise
    if on_submit is not None:
        on_submit(job.id)
    # Subscribed before anything else runs on the loop, so no event of the job can be missed.
    follow = asyncio.ensure_future(_follow(jobs, job.id, jobs.subscribe(job.id), on_progress))
    state, count = await while_connected(request, follow,
                                         lambda: (asyncio.ensure_future(jobs.cancel(job.id)), follow.cancel()))
    pngs = []
    for index in range(count):
        png = jobs.result_png(job.id, index)
        if png is None:
            png = await asyncio.to_thread(jobs.store.result_png, job.id, index)
        if png is None:
            raise LatentBridgeError(f"result {index} of job {job.id} is missing", code=ErrorCode.internal)
        pngs.append(png)
    found = jobs.get(job.id)
    finished = found.request if found is not None and not isinstance(found, StatusEvent) else generation
    return JobOutcome(job.id, state, finished if finished is not None else generation, pngs)


def b64_bytes(value: str, field_name: str) -> bytes:
    """Base64 (with or without a `data:...;base64,` prefix) → bytes; image URLs are refused."""
    text = value.strip()
    if text.startswith(("http://", "https://")):
        # Fetching URLs would let a client make this server reach anything it can reach (SSRF).
        raise Unsupported("image URLs are not fetched; send the image as base64", field=field_name)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise BadImage("image is not valid base64", field=field_name) from None


def decode_image(app: web.Application, data: bytes, field_name: str) -> Image.Image:
    """Untrusted image bytes → a PIL image (size-limited); errors name `field_name`. Blocking."""
    try:
        return image_utils.decode_image(data, max_pixels=app[SETTINGS_KEY].max_pixels)
    except LatentBridgeError as exc:
        exc.field = field_name
        raise
