"""The OpenAPI 3.1 document of the HTTP API, generated from the pydantic models in protocol.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..protocol import (
    AcceptedEvent,
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    GenerationRequest,
    ModelStatus,
    PreviewEvent,
    ProgressEvent,
    ResultEvent,
    StartedEvent,
    StatusEvent,
)
from .jsonio import json_response
from .rest import API, LoadModelBody, SubmitBody

REF = "#/components/schemas/{model}"
MODELS: list[type[BaseModel]] = [GenerationRequest, SubmitBody, LoadModelBody, AcceptedEvent, StartedEvent,
                                 ProgressEvent, ResultEvent, DoneEvent, CancelledEvent, ErrorEvent, StatusEvent,
                                 ModelStatus, PreviewEvent]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "default": _json(_ref(ErrorEvent), "A typed error (see `code`; `field` names the offending field)"),
}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def build_openapi() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    schemas = defs.get("$defs", {})
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
                "responses": {"200": _json({"type": "object", "properties": {
                    "jobs": {"type": "array", "items": _ref(StatusEvent)}}}, "Jobs"), **ERRORS},
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
                                                   "responses": {"200": _json({"type": "object"}, "Cancelled"),
                                                                 **ERRORS}}},
        f"{API}/jobs/{{job_id}}/results/{{index}}": {"get": {
            "summary": "A result image (PNG with the request embedded)",
            "parameters": [JOB_ID, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}, **ERRORS}}},
        f"{API}/models": {"get": {"summary": "Loaded model and the models a client may pick",
                                  "responses": {"200": _json({"type": "object"}, "Models"), **ERRORS}}},
        f"{API}/models/load": {"post": {"summary": "Load a model (waits for the running job)",
                                        "requestBody": {"required": True, "content": {
                                            "application/json": {"schema": _ref(LoadModelBody)}}},
                                        "responses": {"200": _json(_ref(ModelStatus), "Loaded"), **ERRORS}}},
        f"{API}/health": {"get": {"summary": "Server and model state",
                                  "responses": {"200": _json({"type": "object"}, "Health")}}},
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
        return json_response(document)

    app.router.add_get(f"{API}/openapi.json", openapi)
