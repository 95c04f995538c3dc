"""What a runner (the code that runs a job's generation: jobs/local.py on this machine,
cluster/runner.py on Ray Serve replicas) shares with the queue: the events it reports while a
job runs (`JobEvents`), the per-step callback it hands the engine (`step_callback`: progress,
rate-capped previews, cancel), and what a finished generation gives back (`JobOutput`).

`step_callback` and `encode_output` run wherever the engine runs (a worker thread here, a
replica process on Ray); `JobEvents` lives on the front-end's event loop. No torch, no HTTP.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import images
from ..protocol import Cancelled, GenerationRequest, ProgressEvent, StartedEvent
from .subscription import PreviewFrame

if TYPE_CHECKING:
    from .job import Job
    from .manager import JobManager


@dataclass
class JobOutput:
    """A finished generation: PNGs (metadata embedded) in order, their seeds and sizes, and the
    request with everything filled in (seed, model) that regenerates them."""

    request: GenerationRequest
    pngs: list[bytes]
    seeds: list[int]
    sizes: list[list[int]]


def encode_output(result: Any) -> JobOutput:
    """An engine `GenerationResult` as PNGs carrying the request that regenerates each image."""
    pngs = [images.encode_png(image, result.request, seed) for image, seed in zip(result.images, result.seeds)]
    return JobOutput(request=result.request, pngs=pngs, seeds=list(result.seeds),
                     sizes=[list(image.size) for image in result.images])


def step_callback(job_id: str, request: GenerationRequest, preview_interval_s: float, cancel: threading.Event,
                  on_progress: Callable[[int, int, float | None], None],
                  on_preview: Callable[[PreviewFrame], None]) -> Callable[[Any], None]:
    """The engine's `on_step`: stop at once when `cancel` is set, report progress every step and a
    preview at most every `preview_interval_s` (the A1111 /progress route reads the latest one, so
    a running job keeps one even without subscribers). Runs on the engine's thread."""
    wants_preview = request.preview.decoder != "none"
    last_preview = [0.0]

    def on_step(update: Any) -> None:
        if cancel.is_set():
            raise Cancelled()
        eta = update.elapsed_s / update.step * (update.total - update.step) if update.step else None
        on_progress(update.step, update.total, None if eta is None else round(eta, 3))
        now = time.monotonic()
        if wants_preview and now - last_preview[0] >= preview_interval_s:
            image = update.preview()
            if image is not None:
                last_preview[0] = now
                options = request.preview
                data = images.encode_preview(image, options.max_size, options.format)
                w, h = _scaled(image.size, options.max_size)
                on_preview(PreviewFrame(job_id, update.step, update.total, w, h, data, options.format))

    return on_step


def _scaled(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    w, h = size
    if max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


class JobEvents:
    """A running job's events, reported by its runner. Call on the event loop (a runner on a
    thread hands them over with `loop.call_soon_threadsafe`)."""

    def __init__(self, manager: "JobManager", job: "Job"):
        self._manager = manager
        self.job = job
        self.started_at: float | None = None  # monotonic; when the engine began (for `done`'s elapsed_s)

    def started(self) -> None:
        """The engine begins; reported once even if a runner retries the job elsewhere."""
        if self.started_at is not None:
            return
        self.started_at = time.monotonic()
        self._manager._emit(self.job, StartedEvent(job_id=self.job.id, seed=self.job.request.seed or 0))

    def progress(self, step: int, total: int, eta_s: float | None) -> None:
        job = self.job
        job.step, job.total = step, total
        self._manager._emit(job, ProgressEvent(job_id=job.id, step=step, total=total, eta_s=eta_s))

    def preview(self, frame: PreviewFrame) -> None:
        self._manager._emit_preview(self.job, frame)


class Runner(Protocol):
    """Runs jobs' generations for the queue (JobManager). `capacity` jobs may run at once."""

    capacity: int

    async def start(self) -> None: ...  # begin loading the model in the background; return at once
    async def ready(self) -> None: ...  # the first job waits for this (never raises)
    async def run(self, job: "Job", events: JobEvents) -> JobOutput: ...  # raises Cancelled / LatentBridgeError
    def cancel(self, job: "Job") -> None: ...  # job.cancel_event is set; stop it soon
    async def load_model(self, model: str | None) -> None: ...
    async def run_exclusive(self, fn: Callable[[], Any]) -> Any: ...
    # Optional: `supports_live = True` and `submit_exclusive(fn)` (queue fn where the engine runs,
    # not waited for) for a runner whose engine is in this process: live sessions need both.
    async def drain(self) -> None: ...  # wait until nothing the runner started is running
    async def stop(self) -> None: ...
