"""The job queue: one worker thread per device, priorities, fairness, cancel, event fan-out.

Queue bookkeeping (submit, cancel, picking the next job, fan-out to subscribers) happens on the
event loop. The engine runs on a single dedicated worker thread (the engine is not thread-safe
and owns one device); it hands events back with `loop.call_soon_threadsafe`. Knows nothing of
torch or HTTP: it talks to the engine only through `Engine.load` / `Engine.generate` / `.status`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from . import images
from .protocol import (
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    InvalidRequest,
    JobState,
    LatentBridgeError,
    MAX_SEED,
    MissingImage,
    BadImage,
    ModelState,
    Mode,
    ProgressEvent,
    ResultEvent,
    StartedEvent,
    StatusEvent,
    TooLarge,
    Cancelled,
)
from .settings import Settings
from .store import JobRecord, ResultStore

log = logging.getLogger(__name__)

PRIORITIES = {"interactive": 0, "normal": 1, "batch": 2}
FINAL_EVENTS = (DoneEvent, CancelledEvent, ErrorEvent)
RECENT_JOBS = 16  # finished jobs kept in memory (their PNGs too) for quick re-delivery


@dataclass(frozen=True)
class PreviewFrame:
    job_id: str
    step: int
    total: int
    width: int
    height: int
    data: bytes
    format: str = "jpeg"


class Subscription:
    """Events of one job for one subscriber. Protocol events are queued in order (a job makes a
    bounded number of them: steps + results + 2); previews are latest-wins: one slot, a new preview
    replaces an undelivered one, so a slow reader gets fewer previews and never a growing buffer."""

    def __init__(self, job_id: str, on_close: Callable[["Subscription"], None] | None = None):
        self.job_id = job_id
        self._events: collections.deque[Any] = collections.deque()
        self._preview: PreviewFrame | None = None
        self._wake = asyncio.Event()
        self._finished = False  # a final event was queued
        self._closed = False
        self._on_close = on_close
        self.previews_dropped = 0

    def push(self, event: Any) -> None:
        if self._closed or self._finished:
            return
        self._events.append(event)
        if isinstance(event, FINAL_EVENTS):
            self._finished = True
            self._preview = None
        self._wake.set()

    def push_preview(self, frame: PreviewFrame) -> None:
        if self._closed or self._finished:
            return
        if self._preview is not None:
            self.previews_dropped += 1
        self._preview = frame
        self._wake.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._on_close is not None:
            self._on_close(self)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._events:
                return self._events.popleft()
            if self._preview is not None:
                frame, self._preview = self._preview, None
                return frame
            if self._finished or self._closed:
                self.close()
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


class Job:
    def __init__(self, request: GenerationRequest, init_image: Image.Image | None, mask: Image.Image | None,
                 owner: str, priority: str, seq: int):
        self.id = uuid.uuid4().hex
        self.request = request
        self.init_image = init_image
        self.mask = mask
        self.owner = owner
        self.priority = priority
        self.seq = seq
        self.state = JobState.queued
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.step = 0
        self.total = request.steps
        self.error: ErrorEvent | None = None
        self.result_count = 0
        self.seeds: list[int] = []
        self.sizes: list[list[int]] = []
        self.inputs: list[str] = []
        self.pngs: list[bytes] = []
        self.cancel_event = threading.Event()
        self.timed_out = False
        self.latest_preview: PreviewFrame | None = None
        self.subscribers: set[Subscription] = set()

    def status(self, position: int | None = None) -> StatusEvent:
        return StatusEvent(job_id=self.id, state=self.state, position=position,
                           step=self.step if self.state is not JobState.queued else None, total=self.total,
                           result_count=self.result_count, request=self.request, error=self.error,
                           created_at=self.created_at, finished_at=self.finished_at)

    def record(self) -> JobRecord:
        return JobRecord(job_id=self.id, request=self.request, state=self.state, owner=self.owner,
                         priority=self.priority, seeds=self.seeds, result_count=self.result_count,
                         sizes=self.sizes, error=self.error, inputs=self.inputs,
                         created_at=self.created_at, started_at=self.started_at, finished_at=self.finished_at)


def check_limits(request: GenerationRequest, settings: Settings, init_image: Image.Image | None,
                 mask: Image.Image | None) -> None:
    """Refuse what the server is configured not to do, naming the field."""
    if request.width > settings.max_width:
        raise TooLarge(f"width {request.width} is above this server's limit of {settings.max_width}", field="width")
    if request.height > settings.max_height:
        raise TooLarge(f"height {request.height} is above this server's limit of {settings.max_height}", field="height")
    if request.steps > settings.max_steps:
        raise InvalidRequest(f"steps {request.steps} is above this server's limit of {settings.max_steps}", field="steps")
    if request.batch_size > settings.max_batch:
        raise TooLarge(f"batch_size {request.batch_size} is above this server's limit of {settings.max_batch}",
                       field="batch_size")
    width, height = request.width, request.height
    if request.mode is Mode.outpaint and init_image is not None:
        ext = request.outpaint
        width, height = init_image.width + ext.left + ext.right, init_image.height + ext.top + ext.bottom
    if request.hires is not None:
        # The second pass works at the final size: that is the size the limits apply to.
        width, height = request.output_size()
        if width > settings.max_width or height > settings.max_height:
            raise TooLarge(f"hires makes {width}x{height} images, above this server's limit of "
                           f"{settings.max_width}x{settings.max_height}", field="hires")
        if request.hires.steps > settings.max_steps:
            raise InvalidRequest(f"hires.steps {request.hires.steps} is above this server's limit of "
                                 f"{settings.max_steps}", field="hires.steps")
    if width * height * request.batch_size > settings.max_pixels:
        raise TooLarge(f"{width}x{height} x {request.batch_size} image(s) is more than this server's limit of "
                       f"{settings.max_pixels} pixels per job", field="width")
    if request.needs_init_image() and init_image is None:
        raise MissingImage(f"mode {request.mode.value} needs an init image", field="init_image")
    if request.needs_mask() and mask is None:
        raise MissingImage("mode inpaint needs a mask", field="mask")
    for name, image in (("init_image", init_image), ("mask", mask)):
        if image is not None and image.width * image.height > settings.max_pixels:
            raise TooLarge(f"{name} is {image.width}x{image.height}, more than {settings.max_pixels} pixels",
                           field=name)
    if mask is not None and init_image is not None and mask.size != init_image.size:
        raise BadImage(f"mask is {mask.width}x{mask.height} but the init image is "
                       f"{init_image.width}x{init_image.height}: they must be the same size", field="mask")


class JobManager:
    def __init__(self, engine: Any, store: ResultStore, settings: Settings):
        self.engine = engine
        self.store = store
        self.settings = settings
        self._pending: list[Job] = []
        self._live: dict[str, Job] = {}  # queued, running and recently finished jobs
        self._recent: collections.deque[str] = collections.deque()
        self._seq = itertools.count()
        self._served: dict[str, int] = {}  # owner → sequence number of its last started job
        self._served_seq = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentbridge-gpu")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._load_future: asyncio.Future | None = None
        self._accepting = False
        self.current_job: Job | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=20)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the worker and load the model in the background (jobs queue up meanwhile)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._accepting = True
        self._load_future = self._loop.run_in_executor(self._executor, self._load_model, None)
        self._worker = asyncio.create_task(self._run(), name="latentbridge-jobs")

    def _load_model(self, model: str | None) -> None:
        try:
            self.engine.load(model)
        except LatentBridgeError as exc:
            log.error("model load failed: %s", exc.message)
        except Exception:  # noqa: BLE001 - reported through engine.status, the server stays up
            log.exception("model load failed")

    async def load_model(self, model: str | None) -> None:
        """Load another model on the worker thread (after the running job). Raises its error."""
        assert self._loop is not None
        await self._loop.run_in_executor(self._executor, self.engine.load, model)

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run an engine task that is not a generation (upscaling an image) on the worker thread,
        after the running job: the engine and its device serve one thing at a time. Raises its error."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, cancel queued and running jobs, wait for the worker, flush records."""
        self._accepting = False
        for job in list(self._pending):
            self.cancel(job.id)
        if self.current_job is not None:
            self.current_job.cancel_event.set()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._drain()), timeout_s)
            except asyncio.TimeoutError:
                log.warning("the running job did not stop within %.0f s", timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
        for job in self._live.values():
            for sub in list(job.subscribers):
                sub.close()

    async def _drain(self) -> None:
        """Wait until the worker thread is idle (the running job has ended and been recorded)."""
        assert self._loop is not None
        await self._loop.run_in_executor(self._executor, lambda: None)
        while self.current_job is not None:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ submitting

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queue_length(self) -> int:
        return len(self._pending)

    def retry_after_s(self) -> int:
        """A guess of when a queue slot frees up, for Retry-After."""
        average = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1, round(average))

    def submit(self, request: GenerationRequest, init_image: Image.Image | None = None,
               mask: Image.Image | None = None, *, owner: str = "local", priority: str = "normal") -> Job:
        if priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}", field="priority")
        if not self._accepting:
            raise LatentBridgeError("the server is shutting down", code=ErrorCode.model_not_ready)
        status = self.engine.status
        if status.state is ModelState.failed and request.model is None:
            raise LatentBridgeError(f"the model failed to load: {status.error}", code=ErrorCode.model_load_failed)
        check_limits(request, self.settings, init_image, mask)
        if len(self._pending) >= self.settings.max_queue:
            raise LatentBridgeError(f"the queue is full ({self.settings.max_queue} jobs waiting); retry later",
                                    code=ErrorCode.queue_full)
        if request.seed is None:
            # Chosen now so `started` and the stored request can name it before the engine runs.
            request = request.with_seed(secrets.randbelow(MAX_SEED + 1))
        job = Job(request, init_image, mask, owner, priority, next(self._seq))
        self._pending.append(job)
        self._live[job.id] = job
        assert self._wake is not None
        self._wake.set()
        return job

    def position(self, job: Job) -> int | None:
        """0 = next to run; None when not queued."""
        if job.state is not JobState.queued:
            return None
        return self._ordered_pending().index(job)

    def _ordered_pending(self) -> list[Job]:
        # Priority first; within a priority the owner served longest ago goes first (round-robin
        # between clients), then submission order.
        return sorted(self._pending, key=lambda j: (PRIORITIES[j.priority], self._served.get(j.owner, 0), j.seq))

    # ------------------------------------------------------------------ queries

    def get(self, job_id: str) -> Job | StatusEvent | None:
        job = self._live.get(job_id)
        if job is not None:
            return job
        record = self.store.record(job_id)
        return record.status() if record is not None else None

    def status(self, job_id: str) -> StatusEvent | None:
        found = self.get(job_id)
        if isinstance(found, Job):
            return found.status(self.position(found))
        return found

    def history(self, limit: int = 50) -> list[StatusEvent]:
        live = [j for j in self._live.values() if not j.state.finished]
        live.sort(key=lambda j: j.created_at, reverse=True)
        out = [j.status(self.position(j)) for j in live]
        out += [r.status() for r in self.store.records(limit)]
        return out[:limit]

    def result_png(self, job_id: str, index: int) -> bytes | None:
        job = self._live.get(job_id)
        if job is not None and job.state is JobState.done and 0 <= index < len(job.pngs):
            return job.pngs[index]
        return self.store.result_png(job_id, index)

    def latest_preview(self) -> tuple[str, PreviewFrame] | None:
        job = self.current_job
        if job is None or job.latest_preview is None:
            return None
        return job.id, job.latest_preview

    # ------------------------------------------------------------------ cancel

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job. False when the job is unknown or already finished."""
        job = self._live.get(job_id)
        if job is None or job.state.finished:
            return False
        if job.state is JobState.queued:
            self._pending.remove(job)
            job.state = JobState.cancelled
            job.finished_at = time.time()
            self._finish(job, CancelledEvent(job_id=job.id))
            assert self._loop is not None
            self._loop.run_in_executor(None, self.store.save_record, job.record())
            return True
        job.cancel_event.set()  # the worker stops at the next step and reports `cancelled`
        return True

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, job_id: str) -> Subscription:
        """Events of a live job from now on, or a finished job's results and final event."""
        job = self._live.get(job_id)
        if job is not None and not job.state.finished:
            sub = Subscription(job_id, on_close=lambda s: job.subscribers.discard(s))
            job.subscribers.add(sub)
            return sub
        sub = Subscription(job_id)
        for event in self._final_events(job_id, job):
            sub.push(event)
        if not sub._finished:
            sub.close()
        return sub

    def _final_events(self, job_id: str, job: Job | None) -> list[Any]:
        record = job.record() if job is not None else self.store.record(job_id)
        if record is None:
            return [ErrorEvent(job_id=job_id, code=ErrorCode.unknown_job, message=f"no job {job_id}")]
        events: list[Any] = result_events(record.job_id, record.request, record.seeds, record.sizes)
        if record.state is JobState.done:
            elapsed = (record.finished_at or 0) - (record.started_at or record.finished_at or 0)
            events.append(DoneEvent(job_id=record.job_id, count=record.result_count, elapsed_s=round(elapsed, 3)))
        elif record.state is JobState.cancelled:
            events.append(CancelledEvent(job_id=record.job_id))
        elif record.error is not None:
            events.append(record.error)
        return events

    def _emit(self, job: Job, event: Any) -> None:
        for sub in list(job.subscribers):
            sub.push(event)

    def _emit_preview(self, job: Job, frame: PreviewFrame) -> None:
        job.latest_preview = frame
        for sub in list(job.subscribers):
            sub.push_preview(frame)

    def _finish(self, job: Job, final: Any) -> None:
        if self.current_job is job:
            self.current_job = None  # nothing runs any more, even before the worker loop resumes
        self._emit(job, final)
        job.subscribers.clear()
        job.init_image = job.mask = None  # inputs are on disk; free the memory
        self._recent.append(job.id)
        while len(self._recent) > RECENT_JOBS:
            self._live.pop(self._recent.popleft(), None)

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        assert self._wake is not None and self._loop is not None and self._load_future is not None
        await self._load_future
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            job = self._ordered_pending()[0]
            self._pending.remove(job)
            self._served[job.owner] = next(self._served_seq)
            self.current_job = job
            job.state = JobState.running
            job.started_at = time.time()
            timer = self._loop.call_later(self.settings.job_timeout_s, self._time_out, job)
            try:
                await asyncio.shield(self._loop.run_in_executor(self._executor, self._execute, job))
            except asyncio.CancelledError:
                # Shutting down: the job was told to cancel; wait for the thread to finish it.
                job.cancel_event.set()
                await self._loop.run_in_executor(self._executor, lambda: None)
                self.current_job = None
                raise
            finally:
                timer.cancel()
            self.current_job = None

    def _time_out(self, job: Job) -> None:
        if job.state is JobState.running:
            job.timed_out = True
            job.cancel_event.set()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop (from the worker thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _execute(self, job: Job) -> None:
        """Runs on the worker thread: generate, write results, report. Never raises."""
        final: Any
        try:
            final = self._generate(job)
        except Cancelled:
            if job.timed_out:
                job.state = JobState.failed
                job.error = ErrorEvent(job_id=job.id, code=ErrorCode.timeout,
                                       message=f"the job ran longer than the limit of {self.settings.job_timeout_s:g} s",
                                       field=None)
                final = job.error
            else:
                job.state = JobState.cancelled
                final = CancelledEvent(job_id=job.id)
        except LatentBridgeError as exc:
            job.state = JobState.failed
            job.error = exc.to_event(job.id)
            final = job.error
        except Exception as exc:  # noqa: BLE001 - a crashed job affects that job alone
            log.exception("job %s failed", job.id)
            job.state = JobState.failed
            job.error = ErrorEvent(job_id=job.id, code=ErrorCode.internal,
                                   message=f"internal error ({type(exc).__name__}); see the server log")
            final = job.error
        job.finished_at = time.time()
        try:
            self.store.save_record(job.record())
        except OSError as exc:
            log.error("could not write the record of job %s: %s", job.id, exc)
        if job.started_at is not None and job.state is JobState.done:
            self._durations.append(job.finished_at - job.started_at)
        self._call(self._finish, job, final)

    def _generate(self, job: Job) -> DoneEvent:
        if self.engine.status.state is not ModelState.ready and job.request.model is None:
            status = self.engine.status
            raise LatentBridgeError(f"the model is not available: {status.error or status.state.value}",
                                    code=ErrorCode.model_load_failed if status.state is ModelState.failed
                                    else ErrorCode.model_not_ready)
        self._call(self._emit, job, StartedEvent(job_id=job.id, seed=job.request.seed or 0))
        for role, image in (("init", job.init_image), ("mask", job.mask)):
            if image is not None:
                self.store.save_input(job.id, role, images.encode_png(image))
                job.inputs.append(role)
        started = time.monotonic()
        wants_preview = job.request.preview.decoder != "none"
        last_preview = [0.0]

        def on_step(update: Any) -> None:
            if job.cancel_event.is_set():
                raise Cancelled()
            job.step, job.total = update.step, update.total
            eta = update.elapsed_s / update.step * (update.total - update.step) if update.step else None
            self._call(self._emit, job, ProgressEvent(job_id=job.id, step=update.step, total=update.total,
                                                      eta_s=None if eta is None else round(eta, 3)))
            now = time.monotonic()
            # Previews are rate-capped per job and skipped when nobody watches (the A1111 /progress
            # route reads the latest one, so a running job keeps one even without subscribers).
            if wants_preview and now - last_preview[0] >= self.settings.preview_interval_s:
                image = update.preview()
                if image is not None:
                    last_preview[0] = now
                    options = job.request.preview
                    data = images.encode_preview(image, options.max_size, options.format)
                    w, h = _scaled(image.size, options.max_size)
                    self._call(self._emit_preview, job,
                               PreviewFrame(job.id, update.step, update.total, w, h, data, options.format))

        result = self.engine.generate(job.request, init_image=job.init_image, mask=job.mask,
                                      on_step=on_step, cancel=job.cancel_event)
        job.request = result.request
        pngs = []
        for index, (image, seed) in enumerate(zip(result.images, result.seeds)):
            png = images.encode_png(image, result.request, seed)
            self.store.save_result(job.id, index, png)
            pngs.append(png)
        job.pngs, job.seeds, job.result_count = pngs, list(result.seeds), len(pngs)
        job.sizes = [list(im.size) for im in result.images]
        job.state = JobState.done
        for event in result_events(job.id, result.request, job.seeds, job.sizes):
            self._call(self._emit, job, event)
        return DoneEvent(job_id=job.id, count=len(pngs), elapsed_s=round(time.monotonic() - started, 3))


def result_events(job_id: str, request: GenerationRequest, seeds: list[int], sizes: list[list[int]]) -> list[ResultEvent]:
    """One `result` event per image; each carries the request that regenerates exactly that image."""
    return [ResultEvent(job_id=job_id, index=i, seed=seed, width=sizes[i][0], height=sizes[i][1],
                        request=images.image_request(request, seed), url=f"/api/v1/jobs/{job_id}/results/{i}")
            for i, seed in enumerate(seeds)]


def _scaled(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    w, h = size
    if max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))
