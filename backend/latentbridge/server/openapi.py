"""The OpenAPI 3.1 document of the HTTP API, generated from the pydantic models in protocol.py.

Its components also hold the websocket protocol's messages, events and binary header
(`WEBSOCKET_MODELS`, plus the `ClientMessage` / `ServerEvent` unions), so one published document
types every wire format: the TypeScript SDK's types are generated from it (sdk/typescript)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..protocol import (
    AcceptedEvent,
    AttachMessage,
    BinaryHeader,
    CancelledEvent,
    CancelMessage,
    Capabilities,
    DoneEvent,
    ErrorEvent,
    GenerationRequest,
    HelloEvent,
    HelloMessage,
    JobState,
    ModelEvent,
    ModelStatus,
    PingMessage,
    PongEvent,
    PreviewEvent,
    ProgressEvent,
    ResultEvent,
    StartedEvent,
    StatusEvent,
    SubmitMessage,
)
from .rest import API, LoadModelBody, SubmitBody

REF = "#/components/schemas/{model}"


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The JSON bodies the REST routes answer with (rest.py and catalog.py build exactly these shapes;
# tests/web/test_api_additions.py validates real responses against them).
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


class ModelsResponse(_Response):
    current: ModelStatus
    configured: str
    builtin: list[str]
    models: list[ModelEntry]


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
WEBSOCKET_MODELS: list[type[BaseModel]] = [HelloMessage, SubmitMessage, CancelMessage, AttachMessage, PingMessage,
                                           HelloEvent, Capabilities, ModelEvent, PongEvent, BinaryHeader]
MODELS: list[type[BaseModel]] = [GenerationRequest, SubmitBody, LoadModelBody, AcceptedEvent, StartedEvent,
                                 ProgressEvent, ResultEvent, DoneEvent, CancelledEvent, ErrorEvent, StatusEvent,
                                 ModelStatus, PreviewEvent, *RESPONSE_MODELS, *WEBSOCKET_MODELS]
CLIENT_MESSAGES = (HelloMessage, SubmitMessage, CancelMessage, AttachMessage, PingMessage)
SERVER_EVENTS = (HelloEvent, AcceptedEvent, StartedEvent, ProgressEvent, ResultEvent, DoneEvent, CancelledEvent,
                 ErrorEvent, StatusEvent, PongEvent, PreviewEvent, ModelEvent)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "default": _json(_ref(ErrorEvent), "A typed error (see `code`; `field` names the offending field)"),
}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
PNG = {"description": "PNG", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


def _type_required(schemas: dict[str, Any]) -> None:
    """Every frame carries its `type` (the server requires it and always sends it), though the
    pydantic models give it a default: say so, so typed clients can narrow on it."""
    for schema in schemas.values():
        prop = schema.get("properties", {}).get("type")
        if isinstance(prop, dict) and "const" in prop and "type" not in schema.get("required", []):
            schema["required"] = ["type", *schema.get("required", [])]


def _union(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """A `type`-discriminated union of websocket frames, as OpenAPI writes it."""
    refs = {m.model_fields["type"].default: REF.format(model=m.__name__) for m in models}
    return {"oneOf": [{"$ref": r} for r in refs.values()], "discriminator": {"propertyName": "type", "mapping": refs}}


def build_openapi() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    schemas = defs.get("$defs", {})
    _type_required(schemas)
    schemas["ClientMessage"] = _union(CLIENT_MESSAGES)
    schemas["ServerEvent"] = _union(SERVER_EVENTS)
    event_union = {"oneOf": [_ref(m) for m in (StatusEvent, StartedEvent, ProgressEvent, PreviewEvent,
                                                ResultEvent, DoneEvent, CancelledEvent, ErrorEvent)]}
    multipart = {"type": "object", "required": ["request"], "properties": {
        "request": {"type": "string", "description": "GenerationRequest as JSON"},
        "priority": {"type": "string", "enum": ["interactive", "normal", "batch"]},
        "init_image": {"type": "string", "format": "binary"},
        "mask": {"type": "string", "format": "binary"}}}
    paths: dict[str, Any] = {
        f"{API}/jobs": {
            "post": {
                "summary": "Submit a job",
                "description": "JSON with base64 images, or multipart/form-data (send an `X-LatentBridge-Client` "
                               "or `Authorization` header with multipart: plain HTML forms may not post).",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(SubmitBody)},
                    "multipart/form-data": {"schema": multipart}}},
                "responses": {"202": _json(_ref(AcceptedEvent), "Queued"), **ERRORS},
            },
            "get": {
                "summary": "Job history, newest first",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 1000, "default": 50}}],
                "responses": {"200": _json(_ref(HistoryResponse), "Jobs of every client: live ones first, then "
                                                                   "finished ones, each newest first"), **ERRORS},
            },
        },
        f"{API}/jobs/{{job_id}}": {"get": {"summary": "Job status", "parameters": [JOB_ID],
                                           "responses": {"200": _json(_ref(StatusEvent), "Status"), **ERRORS}}},
        f"{API}/jobs/{{job_id}}/events": {"get": {
            "summary": "Event stream (server-sent events); each `data:` line is one of these JSON events",
            "parameters": [JOB_ID],
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {"schema": event_union}}}, **ERRORS}}},
        f"{API}/jobs/{{job_id}}/cancel": {"post": {"summary": "Cancel a queued or running job", "parameters": [JOB_ID],
                                                   "responses": {"200": _json(_ref(CancelResponse), "Cancelled"),
                                                                 **ERRORS}}},
        f"{API}/jobs/{{job_id}}/results/{{index}}": {"get": {
            "summary": "A result image (PNG with the request embedded)",
            "parameters": [JOB_ID, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": PNG, **ERRORS}}},
        f"{API}/jobs/{{job_id}}/inputs/{{role}}": {"get": {
            "summary": "A job's stored input image, so the job can be run again",
            "parameters": [JOB_ID, {"name": "role", "in": "path", "required": True, "schema": {"type": "string"},
                                    "description": "The role the image had in the job: `init`, `mask`, ..."}],
            "responses": {"200": PNG, **ERRORS}}},
        f"{API}/models": {"get": {"summary": "Loaded model and the models a client may pick",
                                  "responses": {"200": _json(_ref(ModelsResponse), "Models"), **ERRORS}}},
        f"{API}/capabilities": {"get": {"summary": "What the server can do now (as in the websocket `hello`; "
                                                   "samplers and seamless follow the loaded model)",
                                        "responses": {"200": _json(_ref(Capabilities), "Capabilities"), **ERRORS}}},
        f"{API}/loras": {"get": {"summary": "LoRA files a request may name (`loras[].name`)",
                                 "responses": {"200": _json(_ref(LorasResponse), "LoRAs"), **ERRORS}}},
        f"{API}/models/load": {"post": {"summary": "Load a model (waits for the running job)",
                                        "requestBody": {"required": True, "content": {
                                            "application/json": {"schema": _ref(LoadModelBody)}}},
                                        "responses": {"200": _json(_ref(ModelStatus), "Loaded"), **ERRORS}}},
        f"{API}/health": {"get": {"summary": "Server and model state",
                                  "responses": {"200": _json(_ref(HealthResponse), "Health"), **ERRORS}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Latent Bridge", "version": __version__,
                 "description": "Local Stable-Diffusion-class server. See docs/http-api.md and docs/protocol.md."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }


def add_openapi_route(app: web.Application) -> None:
    document = build_openapi()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get(f"{API}/openapi.json", openapi)
