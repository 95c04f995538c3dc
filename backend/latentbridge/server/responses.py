"""The JSON bodies the REST routes answer with, as pydantic models: the OpenAPI document refers to
them (so typed clients, e.g. the TypeScript SDK, know each shape) and tests validate real
responses against them. rest.py and catalog.py build exactly these shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..protocol import JobState, ModelStatus, StatusEvent


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryResponse(_Response):
    jobs: list[StatusEvent]


class CancelResponse(_Response):
    job_id: str
    cancelled: bool
    state: JobState | None


class ModelEntry(_Response):
    name: str
    kind: str
    path: str


class ControlNetEntry(_Response):
    name: str
    kind: str  # builtin | configured | diffusers | single_file
    type: str | None = None  # the control type a configured default serves


class ModelsResponse(_Response):
    current: ModelStatus
    configured: str
    builtin: list[str]
    models: list[ModelEntry]
    controlnets: list[ControlNetEntry]


class HealthResponse(_Response):
    status: Literal["ok", "starting", "error"]
    server: str
    protocol: int
    model: ModelStatus
    queue_length: int
    running: str | None
    accepting: bool


class LoraEntry(_Response):
    name: str


class LorasResponse(_Response):
    loras: list[LoraEntry]


RESPONSE_MODELS: list[type[BaseModel]] = [HistoryResponse, CancelResponse, ModelsResponse, HealthResponse,
                                          LorasResponse]
