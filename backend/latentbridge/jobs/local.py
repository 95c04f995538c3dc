"""The single-machine runner: one engine on one dedicated worker thread.

The engine is not thread-safe and owns one device, so everything that touches it (loading the
model, generating, upscaling) runs on that one thread, one thing at a time; events go back to
the event loop with `loop.call_soon_threadsafe`. Talks to the engine only through
`Engine.load` / `Engine.generate` / `.status`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable

from ..protocol import ErrorCode, LatentBridgeError, ModelState
from ..settings import Settings
from ..store import ResultStore
from .job import Job, load_inputs
from .running import JobEvents, JobOutput, encode_output, step_callback

log = logging.getLogger("latentbridge.jobs")


class LocalRunner:
    capacity = 1
    supports_live = True  # live sessions run on the engine's own thread, between jobs

    def __init__(self, engine: Any, settings: Settings, store: ResultStore):
        self.engine = engine
        self.settings = settings
        self.store = store
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentbridge-gpu")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._load_future: asyncio.Future | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._load_future = self._loop.run_in_executor(self._executor, self._load_model, None)

    async def ready(self) -> None:
        assert self._load_future is not None
        await self._load_future

    def _load_model(self, model: str | None) -> None:
        try:
            self.engine.load(model)
        except LatentBridgeError as exc:
            log.error("model load failed: %s", exc.message)
        except Exception:  # noqa: BLE001 - reported through engine.status, the server stays up
            log.exception("model load failed")

    async def load_model(self, model: str | None) -> None:
        assert self._loop is not None
        await self._loop.run_in_executor(self._executor, self.engine.load, model)

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn)

    def submit_exclusive(self, fn: Callable[[], Any]) -> None:
        """Queue `fn` on the engine's thread without waiting for it (a live session's clean-up)."""
        try:
            self._executor.submit(fn)
        except RuntimeError:  # the executor is shut down: the engine goes with it
            pass

    async def run(self, job: Job, events: JobEvents) -> JobOutput:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, self._generate, job, events)

    def cancel(self, job: Job) -> None:
        """Nothing to forward: the worker checks `job.cancel_event` at every step."""

    async def drain(self) -> None:
        assert self._loop is not None
        await self._loop.run_in_executor(self._executor, lambda: None)

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop (from the worker thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _generate(self, job: Job, events: JobEvents) -> JobOutput:
        """Runs on the worker thread."""
        status = self.engine.status
        if status.state is not ModelState.ready and job.request.model is None:
            raise LatentBridgeError(f"the model is not available: {status.error or status.state.value}",
                                    code=ErrorCode.model_load_failed if status.state is ModelState.failed
                                    else ErrorCode.model_not_ready)
        if job.request.model is not None and job.request.model != status.name:
            log.info("model switch to %s requested by %s for job %s (serving %s)", job.request.model, job.owner,
                     job.id, status.name, extra={"job_id": job.id, "client": job.owner, "event": "model_switch"})
        load_inputs(job, self.store)
        self._call(events.started)
        on_step = step_callback(job.id, job.request, self.settings.preview_interval_s, job.cancel_event,
                                lambda *progress: self._call(events.progress, *progress),
                                lambda frame: self._call(events.preview, frame))
        others = {role: image for role, image in job.inputs.items() if role not in ("init", "mask")}
        result = self.engine.generate(job.request, init_image=job.init_image, mask=job.mask,
                                      on_step=on_step, cancel=job.cancel_event, inputs=others)
        return encode_output(result)
