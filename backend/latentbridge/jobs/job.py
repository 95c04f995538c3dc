"""One job: its request, inputs, state and subscribers; the server's limits; its result events."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from PIL import Image

from .. import images
from ..protocol import (
    BadImage,
    ErrorEvent,
    GenerationRequest,
    InvalidRequest,
    JobState,
    MissingImage,
    Mode,
    ResultEvent,
    StatusEvent,
    TooLarge,
)
from ..settings import Settings
from ..store import JobRecord
from .subscription import PreviewFrame, Subscription


class Job:
    def __init__(self, request: GenerationRequest, inputs: dict[str, Image.Image], owner: str, priority: str,
                 seq: int, job_id: str | None = None):
        self.id = job_id or uuid.uuid4().hex
        self.request = request
        self.inputs = inputs  # role ("init", "mask") → image; emptied once the job ends (they are on disk)
        self.input_roles = sorted(inputs)
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
        self.pngs: list[bytes] = []
        self.resumed = 0
        self.cancel_requested = False
        self.cancel_event = threading.Event()
        self.timed_out = False
        self.interrupted = False  # stopped by a server shutdown: it stays unfinished in the journal
        self.latest_preview: PreviewFrame | None = None
        self.subscribers: set[Subscription] = set()

    @classmethod
    def from_record(cls, record: JobRecord, seq: int) -> "Job":
        """A journaled job that was queued or running when the server stopped, queued again. Its
        inputs stay on disk until the worker loads them."""
        job = cls(record.request, {}, record.owner, record.priority, seq, job_id=record.job_id)
        job.input_roles = list(record.inputs)
        job.created_at = record.created_at
        job.resumed = record.resumed + 1
        return job

    @property
    def init_image(self) -> Image.Image | None:
        return self.inputs.get("init")

    @property
    def mask(self) -> Image.Image | None:
        return self.inputs.get("mask")

    def status(self, position: int | None = None) -> StatusEvent:
        return StatusEvent(job_id=self.id, state=self.state, position=position,
                           step=self.step if self.state is not JobState.queued else None, total=self.total,
                           result_count=self.result_count, request=self.request, error=self.error,
                           created_at=self.created_at, finished_at=self.finished_at, resumed=self.resumed)

    def record(self) -> JobRecord:
        return JobRecord(job_id=self.id, request=self.request, state=self.state, owner=self.owner,
                         priority=self.priority, seeds=self.seeds, result_count=self.result_count,
                         sizes=self.sizes, error=self.error, inputs=self.input_roles,
                         created_at=self.created_at, started_at=self.started_at, finished_at=self.finished_at,
                         resumed=self.resumed, cancel_requested=self.cancel_requested)

    def describe(self) -> str:
        """`txt2img 512x512, 20 steps` for the log."""
        r = self.request
        return f"{r.mode.value} {r.width}x{r.height}, {r.steps} steps" + (f" x{r.batch_size}" if r.batch_size > 1 else "")


def check_limits(request: GenerationRequest, settings: Settings, inputs: dict[str, Image.Image]) -> None:
    """Refuse what the server is configured not to do, and missing or unused images, naming the field."""
    init_image, mask = inputs.get("init"), inputs.get("mask")
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
    needed = set(request.image_roles())
    for role in sorted(needed - set(inputs)):
        field = f"controls.{role.split('.')[1]}" if role.startswith("control.") else "reference"
        raise MissingImage(f"{field} needs the image uploaded as role {role!r}", field=field)
    for role in sorted(set(inputs) - needed - {"init", "mask"}):
        raise InvalidRequest(f"image {role!r} is not used by this request (it has {len(request.controls)} control "
                             f"unit(s) and {request.reference.images if request.reference else 0} reference image(s))",
                             field=f"images.{role}")
    for role, image in inputs.items():
        if image.width * image.height > settings.max_pixels:
            name = {"init": "init_image", "mask": "mask"}.get(role, f"images.{role}")
            raise TooLarge(f"{name} is {image.width}x{image.height}, more than {settings.max_pixels} pixels", field=name)
    images.check_mask_size(init_image, mask)


def load_inputs(job: Job, store: Any) -> None:
    """The stored inputs of a resumed job, decoded again (they were stored losslessly as PNG)."""
    missing = [role for role in job.input_roles if role not in job.inputs]
    job.inputs.update(decode_inputs(stored_inputs(job, store, missing)))


def stored_inputs(job: Job, store: Any, roles: list[str] | None = None) -> dict[str, bytes]:
    """The journaled PNGs of a job's inputs by role (all of them unless `roles` narrows it)."""
    out = {}
    for role in job.input_roles if roles is None else roles:
        data = store.input_png(job.id, role)
        if data is None:
            raise BadImage(f"the stored {role} image of job {job.id} is missing", field=role)
        out[role] = data
    return out


def decode_inputs(pngs: dict[str, bytes]) -> dict[str, Image.Image]:
    """Journaled input PNGs back to images (a mask as its single channel)."""
    decoded = {}
    for role, data in pngs.items():
        image = images.decode_image(data)
        decoded[role] = images.mask_channel(image) if role == "mask" else image
    return decoded


def result_events(job_id: str, request: GenerationRequest, seeds: list[int], sizes: list[list[int]]) -> list[ResultEvent]:
    """One `result` event per image; each carries the request that regenerates exactly that image."""
    return [ResultEvent(job_id=job_id, index=i, seed=seed, width=sizes[i][0], height=sizes[i][1],
                        request=images.image_request(request, seed), url=f"/api/v1/jobs/{job_id}/results/{i}")
            for i, seed in enumerate(seeds)]
