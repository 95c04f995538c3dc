"""The job queue: journal on accept, priorities, fairness, cancel, event fan-out, crash recovery.

Queue bookkeeping (submit, cancel, picking the next job, fan-out to subscribers) happens on the
event loop; disk writes of the journal go to threads, never the loop. A runner runs the
generations: by default `LocalRunner` (jobs/local.py: the engine on one dedicated worker thread,
one job at a time); with Ray, `cluster.runner.ClusterRunner` (one job per engine replica, several
at once). The queue hands a job to the runner when it has a free slot (`runner.capacity`), so
priorities and fairness decide the order in both. Knows nothing of torch or HTTP; of the engine it
reads only `.status`.

A job is journaled (store.journal) before `submit` returns, so an accepted job survives a crash:
on start-up the queued and running jobs of the journal are queued again under their ids (same
request and seed, so the same images), unless `settings.resume_jobs` is off (then they end as
`interrupted`). A graceful shutdown stops the running job the same way, so a restart resumes it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import threading
import time
from typing import Any, Callable

from PIL import Image

from .. import images
from ..protocol import (
    MAX_SEED,
    Cancelled,
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    InvalidRequest,
    JobState,
    LatentBridgeError,
    ModelState,
    StatusEvent,
)
from ..settings import Settings
from ..store import ResultStore
from .job import Job, check_limits, result_events
from .live import LiveBoard, LiveSession
from .local import LocalRunner
from .running import JobEvents, JobOutput, Runner
from .subscription import PreviewFrame, Subscription

log = logging.getLogger("latentbridge.jobs")

PRIORITIES = {"interactive": 0, "normal": 1, "batch": 2}
RECENT_JOBS = 16  # finished jobs kept in memory (their PNGs too) for quick re-delivery
MAX_RESUMES = 3  # a job the server stopped during this many times is not tried again (it may be the cause)


class JobManager:
    def __init__(self, engine: Any, store: ResultStore, settings: Settings, runner: Runner | None = None):
        self.engine = engine
        self.store = store
        self.settings = settings
        self.runner: Runner = runner if runner is not None else LocalRunner(engine, settings, store)
        self._pending: list[Job] = []
        self._live: dict[str, Job] = {}  # queued, running and recently finished jobs
        self._running: dict[str, Job] = {}  # handed to the runner, in the order they started
        self._tasks: set[asyncio.Task] = set()
        self._recent: collections.deque[str] = collections.deque()
        self._seq = itertools.count()
        self._served: dict[str, int] = {}  # owner → sequence number of its last started job
        self._served_seq = itertools.count(1)
        self._journaling = 0  # submits writing their journal entry (they hold a queue slot)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._accepting = False
        self._durations: collections.deque[float] = collections.deque(maxlen=20)
        self.live = LiveBoard(engine, settings, wake=self._wake_worker, call=self._call, on_worker=self._on_worker,
                              enabled=getattr(self.runner, "supports_live", False))
        self._last_was_live = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Queue the journal's unfinished jobs again, start the worker, and load the model in the
        background (jobs queue up meanwhile)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for job in await asyncio.to_thread(self._recover):
            self._pending.append(job)
            self._live[job.id] = job
        self._accepting = True
        await self.runner.start()
        self._worker = asyncio.create_task(self._run(), name="latentbridge-jobs")

    def _recover(self) -> list[Job]:
        """Runs in a thread: the journal's queued/running jobs → queued jobs (or final records)."""
        recovered = []
        for record in self.store.unfinished():
            now = time.time()
            if record.cancel_requested:
                self.store.save_record(record.model_copy(update={"state": JobState.cancelled, "finished_at": now}))
                log.info("job %s: cancelled before the server stopped; not run again", record.job_id)
                continue
            if not self.settings.resume_jobs or record.resumed >= MAX_RESUMES:
                why = ("resuming is off (--no-resume-jobs)" if not self.settings.resume_jobs else
                       f"the server stopped while it ran {record.resumed + 1} times, so it is not tried again")
                error = ErrorEvent(job_id=record.job_id, code=ErrorCode.interrupted,
                                   message=f"the server stopped before this job finished; {why}")
                self.store.save_record(record.model_copy(update={"state": JobState.interrupted, "error": error,
                                                                 "finished_at": now}))
                log.info("job %s: interrupted (%s)", record.job_id, why)
                continue
            job = Job.from_record(record, next(self._seq))
            self.store.save_record(job.record())
            recovered.append(job)
            log.info("job %s resumed after a server stop (%s, client %s, attempt %d)", job.id, job.describe(),
                     job.owner, job.resumed + 1)
        return recovered

    async def load_model(self, model: str | None, requested_by: str = "local") -> None:
        """Load another model (after the running job, on this machine). Raises its error; the
        model that served before keeps serving then."""
        log.info("model switch to %s requested by %s", model, requested_by)
        await self.runner.load_model(model)

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run an engine task that is not a generation (upscaling an image) where the engine runs,
        after the running job: the engine and its device serve one thing at a time. Raises its error."""
        return await self.runner.run_exclusive(fn)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting and stop the running jobs; queued and running jobs stay in the journal
        (unfinished), so a restart runs them again. Subscribers hear `interrupted`."""
        self._accepting = False
        for session_id in list(self.live.sessions):
            self.live.stop(session_id, "shutdown", "the server is shutting down")
        for job in list(self._running.values()):
            job.interrupted = True
            self._stop_job(job)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._drain()), timeout_s)
            except asyncio.TimeoutError:
                log.warning("the running job did not stop within %.0f s", timeout_s)
        await self.runner.stop()
        resumes = "it runs again when the server restarts" if self.settings.resume_jobs else "it will not run again"
        for job in list(self._pending):
            self._emit(job, ErrorEvent(job_id=job.id, code=ErrorCode.interrupted,
                                       message=f"the server is shutting down; {resumes}"))
        for job in self._live.values():
            for sub in list(job.subscribers):
                sub.close()
        log.info("job queue stopped (%d queued job(s) kept in the journal)", len(self._pending))

    async def _drain(self) -> None:
        """Wait until the running jobs have ended and been recorded and the runner is idle."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runner.drain()

    # ------------------------------------------------------------------ submitting

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queue_length(self) -> int:
        return len(self._pending)

    @property
    def current_job(self) -> Job | None:
        """The running job that started first (None when nothing runs)."""
        return next(iter(self._running.values()), None)

    @property
    def running_jobs(self) -> list[Job]:
        return list(self._running.values())

    def retry_after_s(self) -> int:
        """A guess of when a queue slot frees up, for Retry-After."""
        average = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1, round(average))

    async def submit(self, request: GenerationRequest, init_image: Image.Image | None = None,
                     mask: Image.Image | None = None, *, owner: str = "local", priority: str = "normal",
                     images: dict[str, Image.Image] | None = None) -> Job:
        """Validate, journal (inputs and record on disk) and queue a job. When this returns, the
        job survives a crash; the caller may acknowledge it. `images` holds the other inputs by
        role (`control.0`, `reference.0`, ...)."""
        if priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}", field="priority")
        if not self._accepting:
            raise LatentBridgeError("the server is shutting down", code=ErrorCode.model_not_ready)
        status = self.engine.status
        if status.state is ModelState.failed and request.model is None:
            raise LatentBridgeError(f"the model failed to load: {status.error}", code=ErrorCode.model_load_failed)
        inputs = {role: image for role, image in (("init", init_image), ("mask", mask)) if image is not None}
        inputs.update(images or {})
        check_limits(request, self.settings, inputs)
        if len(self._pending) + self._journaling >= self.settings.max_queue:
            raise LatentBridgeError(f"the queue is full ({self.settings.max_queue} jobs waiting); retry later",
                                    code=ErrorCode.queue_full)
        if request.seed is None:
            # Chosen now, so the journal, `started` and the stored request name it before the engine runs.
            request = request.with_seed(secrets.randbelow(MAX_SEED + 1))
        job = Job(request, inputs, owner, priority, next(self._seq))
        self._journaling += 1
        try:
            await asyncio.to_thread(self._journal, job)
        finally:
            self._journaling -= 1
        self._pending.append(job)
        self._live[job.id] = job
        assert self._wake is not None
        self._wake.set()
        log.info("job %s accepted: %s, client %s", job.id, job.describe(), owner,
                 extra={"job_id": job.id, "client": owner, "event": "accepted"})
        return job

    def _journal(self, job: Job) -> None:
        inputs = {role: images.encode_png(image) for role, image in job.inputs.items()}
        try:
            self.store.journal(job.record(), inputs)
        except OSError as exc:
            log.error("could not journal job %s: %s", job.id, exc)
            raise LatentBridgeError(f"the server could not store the job ({exc.strerror or exc}); nothing was queued",
                                    code=ErrorCode.internal) from None

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
        """Newest first; the journal holds every accepted job, live ones report their progress."""
        out = []
        for record in self.store.records(limit):
            job = self._live.get(record.job_id)
            out.append(job.status(self.position(job)) if job is not None else record.status())
        return out

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

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; the journal says so before this returns (a crash right
        after a cancel never runs the job again). False when unknown or already finished."""
        job = self._live.get(job_id)
        if job is None or job.state.finished:
            return False
        job.cancel_requested = True
        if job.state is JobState.queued:
            self._pending.remove(job)
            job.state = JobState.cancelled
            job.finished_at = time.time()
            self._finish(job, CancelledEvent(job_id=job.id))
            log.info("job %s cancelled while queued", job.id, extra={"job_id": job.id, "event": "cancelled"})
        else:
            self._stop_job(job)  # the runner stops it at the next step; it reports `cancelled`
        await asyncio.to_thread(self.store.save_record, job.record())
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
        if not sub.finished:
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
        self._release(job)
        self._emit(job, final)
        job.subscribers.clear()
        job.inputs = {}  # they are on disk; free the memory
        self._recent.append(job.id)
        while len(self._recent) > RECENT_JOBS:
            self._live.pop(self._recent.popleft(), None)

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        """Hand the next job (priority, then fairness) to the runner whenever it has a free slot."""
        assert self._wake is not None
        await self.runner.ready()
        while True:
            while len(self._running) >= self.runner.capacity or (not self._pending and not self.live.ready()):
                self._wake.clear()
                await self._wake.wait()
            picked = self._pick()
            if isinstance(picked, LiveSession):
                await self._run_live(picked)
                continue
            job = picked
            self._last_was_live = False
            self._pending.remove(job)
            self._served[job.owner] = next(self._served_seq)
            self._running[job.id] = job
            job.state = JobState.running
            job.started_at = time.time()
            task = asyncio.create_task(self._execute(job), name=f"latentbridge-job-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _release(self, job: Job) -> None:
        """The job no longer holds a runner slot: the next one may start."""
        if self._running.pop(job.id, None) is not None and self._wake is not None:
            self._wake.set()

    def _stop_job(self, job: Job) -> None:
        job.cancel_event.set()
        self.runner.cancel(job)

    def _pick(self) -> Job | LiveSession:
        """The next work for the GPU. The fairness policy with live sessions (docs/live.md): a live
        frame counts as an interactive-priority job of its client, one at a time, ordered with the
        queued jobs by (priority, client served longest ago, arrival); and right after a live
        frame, a waiting job goes first, so live frames and queued jobs take turns and a live
        session never starves anyone's queue."""
        jobs = self._ordered_pending()
        lives = sorted(self.live.ready(), key=lambda s: (self._served.get(s.owner, 0),
                                                         s.pending.seq if s.pending is not None else 0))
        if not lives:
            return jobs[0]
        if not jobs:
            return lives[0]
        if self._last_was_live:
            return jobs[0]
        live, job = lives[0], jobs[0]
        live_key = (PRIORITIES["interactive"], self._served.get(live.owner, 0), live.pending.seq if live.pending else 0)
        job_key = (PRIORITIES[job.priority], self._served.get(job.owner, 0), job.seq)
        return live if live_key <= job_key else job

    async def _run_live(self, session: LiveSession) -> None:
        """One turn of a live session on the worker thread: its warm-up or its newest frame."""
        assert self._loop is not None
        frame = session.take()
        self._served[session.owner] = next(self._served_seq)
        self._last_was_live = frame is not None
        cancel = threading.Event()
        session.cancel_event = cancel
        timer = self._loop.call_later(self.settings.job_timeout_s, cancel.set)
        try:
            await asyncio.shield(self.runner.run_exclusive(lambda: self.live.execute(session, frame, cancel)))
        except asyncio.CancelledError:
            cancel.set()
            await self.runner.drain()
            raise
        finally:
            timer.cancel()
            session.running, session.cancel_event = None, None

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop (from the engine's thread)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _wake_worker(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_worker(self, fn: Callable[[], Any]) -> None:
        """Run `fn` where the engine runs, after what runs there (live sessions' clean-up)."""
        self.runner.submit_exclusive(fn)

    def _time_out(self, job: Job) -> None:
        if job.state is JobState.running:
            job.timed_out = True
            self._stop_job(job)

    async def _execute(self, job: Job) -> None:
        """Run one job through the runner, store its results, report. Never raises."""
        assert self._loop is not None
        final: Any
        started = time.monotonic()
        events = JobEvents(self, job)
        timer = self._loop.call_later(self.settings.job_timeout_s, self._time_out, job)
        try:
            await asyncio.to_thread(self.store.save_record, job.record())  # running
            log.info("job %s started: %s, client %s", job.id, job.describe(), job.owner,
                     extra={"job_id": job.id, "client": job.owner, "event": "started"})
            output = await self.runner.run(job, events)
            await asyncio.to_thread(self._save_results, job, output)
            final = self._completed(job, output, events)
        except Cancelled:
            if job.interrupted:
                # A shutdown, not the client: the journal keeps the job unfinished, to run again.
                resumes = "it runs again when the server restarts" if self.settings.resume_jobs else "it will not run again"
                log.info("job %s stopped by the shutdown; %s", job.id, resumes)
                self._finish_interrupted(job, ErrorEvent(
                    job_id=job.id, code=ErrorCode.interrupted, message=f"the server is shutting down; {resumes}"))
                return
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
        finally:
            timer.cancel()
        job.finished_at = time.time()
        try:
            await asyncio.to_thread(self.store.save_record, job.record())
        except OSError as exc:
            log.error("could not write the record of job %s: %s", job.id, exc)
        seconds = time.monotonic() - started
        if job.state is JobState.done:
            self._durations.append(seconds)
        how = job.state.value + (f" ({job.error.code.value}: {job.error.message})" if job.error is not None else "")
        log.info("job %s %s in %.2f s", job.id, how, seconds,
                 extra={"job_id": job.id, "client": job.owner, "event": job.state.value, "seconds": round(seconds, 3)})
        self._finish(job, final)

    def _save_results(self, job: Job, output: JobOutput) -> None:
        """Runs in a thread: each result written to a temp name and renamed (store.save_result)."""
        for index, png in enumerate(output.pngs):
            self.store.save_result(job.id, index, png)

    def _completed(self, job: Job, output: JobOutput, events: JobEvents) -> DoneEvent:
        job.request = output.request
        job.pngs, job.seeds, job.result_count = list(output.pngs), list(output.seeds), len(output.pngs)
        job.sizes = [list(size) for size in output.sizes]
        job.state = JobState.done
        for event in result_events(job.id, output.request, job.seeds, job.sizes):
            self._emit(job, event)
        began = events.started_at if events.started_at is not None else time.monotonic()
        return DoneEvent(job_id=job.id, count=len(job.pngs), elapsed_s=round(time.monotonic() - began, 3))

    def _finish_interrupted(self, job: Job, event: ErrorEvent) -> None:
        self._emit(job, event)
        for sub in list(job.subscribers):
            sub.close()
        self._release(job)
