"""Events, server → client (JSON text frames; also the SSE payloads of the HTTP API)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

from .requests import ControlType, GenerationRequest, Mode, PROTOCOL_VERSION, PreviewFormat, Sampler, Seamless
from .errors import ErrorCode
from .messages import LiveOptions


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    cancelled = "cancelled"
    failed = "failed"
    interrupted = "interrupted"  # the server stopped while it was unfinished, and it was not resumed

    @property
    def finished(self) -> bool:
        return self is not JobState.queued and self is not JobState.running


class ModelState(str, Enum):
    loading = "loading"
    downloading = "downloading"
    ready = "ready"
    failed = "failed"


class ModelStatus(BaseModel):
    name: str | None = None
    family: str | None = None
    state: ModelState = ModelState.loading
    progress: float | None = Field(None, description="0..1 while downloading, when known")
    error: str | None = None
    inpaint_native: bool = False
    device: str | None = None
    dtype: str | None = None


class Limits(BaseModel):
    max_width: int
    max_height: int
    max_pixels: int
    max_steps: int
    max_batch: int
    max_message_bytes: int
    max_queue: int


class Capabilities(BaseModel):
    modes: list[Mode]
    samplers: list[Sampler]
    families: list[str]
    seamless: list[Seamless]
    preview_decoders: list[str]
    limits: Limits
    control_types: list[ControlType] = Field(default_factory=list, description="ControlNet types the loaded model "
                                             "can take (empty: no ControlNet for this family)")
    control_modes: list[Mode] = Field(default_factory=list, description="Modes that can run with ControlNet units")
    controlnets: list[str] = Field(default_factory=list, description="ControlNets a request may name (GET "
                                   "/api/v1/models lists the folders' ones with details)")
    preprocessors: list[str] = Field(default_factory=lambda: ["none"])
    reference: bool = Field(False, description="Reference images (IP-Adapter) available")


class HelloEvent(BaseModel):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    server: str
    capabilities: Capabilities
    model: ModelStatus


class AcceptedEvent(BaseModel):
    type: Literal["accepted"] = "accepted"
    job_id: str
    client_ref: str | None = None
    position: int = Field(..., description="0 = next to run")


class StartedEvent(BaseModel):
    type: Literal["started"] = "started"
    job_id: str
    seed: int


class ProgressEvent(BaseModel):
    type: Literal["progress"] = "progress"
    job_id: str
    step: int
    total: int
    eta_s: float | None = None


class ResultEvent(BaseModel):
    """Announces one finished image; its bytes follow as a binary `result` frame (websocket) or at
    `url` (HTTP)."""

    type: Literal["result"] = "result"
    job_id: str
    index: int
    seed: int
    width: int
    height: int
    request: GenerationRequest
    url: str | None = None


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    job_id: str
    count: int
    elapsed_s: float


class CancelledEvent(BaseModel):
    type: Literal["cancelled"] = "cancelled"
    job_id: str


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    job_id: str | None = None
    code: ErrorCode
    message: str
    field: str | None = None


class StatusEvent(BaseModel):
    """Reply to `attach`, and the body of `GET /api/v1/jobs/{id}`."""

    type: Literal["status"] = "status"
    job_id: str
    state: JobState
    position: int | None = None
    step: int | None = None
    total: int | None = None
    result_count: int = 0
    request: GenerationRequest | None = None
    error: ErrorEvent | None = None
    created_at: float | None = None
    finished_at: float | None = None
    resumed: int = Field(0, description="Times the job was queued again because the server stopped (crash or "
                         "restart) while it was queued or running")


class ModelEvent(BaseModel):
    """The model's state changed (loading, downloading with progress, ready, failed): sent to every
    client that said hello, so a first-run download shows its progress without polling."""

    type: Literal["model"] = "model"
    model: ModelStatus


class PongEvent(BaseModel):
    type: Literal["pong"] = "pong"


class PreviewEvent(BaseModel):
    """A preview as JSON, for the HTTP event stream (SSE) only; the websocket sends previews as
    binary `preview` frames instead."""

    type: Literal["preview"] = "preview"
    job_id: str
    step: int
    total: int
    width: int
    height: int
    format: PreviewFormat = "jpeg"
    data: str = Field(..., description="The image bytes, base64")


class LiveStartedEvent(BaseModel):
    """A live session runs: `request` is what every frame renders (the preset applied, the seed
    chosen), `decoder` the autoencoder in use (vae when no TAESD fits the model)."""

    type: Literal["live_started"] = "live_started"
    job_id: str
    client_ref: str | None = None
    revision: int = Field(0, description="Bumped by every live_update; result frames name the one they used")
    request: GenerationRequest
    live: LiveOptions
    decoder: Literal["taesd", "vae"]


class LiveUpdatedEvent(BaseModel):
    type: Literal["live_updated"] = "live_updated"
    job_id: str
    revision: int
    request: GenerationRequest
    live: LiveOptions
    decoder: Literal["taesd", "vae"]


class LiveCounts(BaseModel):
    received: int = Field(0, description="Frames the session was sent")
    rendered: int = Field(0, description="Frames rendered (result frames sent), re-renders after live_update included")
    dropped: int = Field(0, description="Frames replaced by a newer one before they were rendered (stale)")
    stale_rendered: int = Field(0, description="Frames rendered although a newer one had arrived: always 0")
    failed: int = Field(0, description="Frames that failed (each with an error event)")


class LiveStoppedEvent(BaseModel):
    type: Literal["live_stopped"] = "live_stopped"
    job_id: str
    reason: Literal["stopped", "disconnected", "failed", "shutdown"]
    frames: LiveCounts
    message: str | None = None


ServerEvent = Annotated[
    Union[
        HelloEvent,
        AcceptedEvent,
        StartedEvent,
        ProgressEvent,
        ResultEvent,
        DoneEvent,
        CancelledEvent,
        ErrorEvent,
        StatusEvent,
        PongEvent,
        PreviewEvent,
        ModelEvent,
        LiveStartedEvent,
        LiveUpdatedEvent,
        LiveStoppedEvent,
    ],
    Field(discriminator="type"),
]
server_event_adapter: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)


def parse_server_event(text: str | bytes) -> BaseModel:
    return server_event_adapter.validate_json(text)
