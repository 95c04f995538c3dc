"""The OpenAPI 3.1 document of the HTTP API, generated from the pydantic models in protocol.py.

It describes *this* server: the limits it was started with (width, height, steps, batch) are the
schema's maxima, and the samplers and seamless axes are those the loaded model can use, so a body
the schema accepts is a body the server accepts. What JSON Schema cannot say is written down as
documented error responses instead: the pixel budget (width x height x batch, and an outpainted
canvas, against `max_pixels`) is a 413; image bytes that do not decode, or a mask whose size
differs from the init image, are a 422. `tests/server/test_openapi_fuzz.py` holds the server to it.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web
from pydantic import BaseModel
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
    LiveStartedEvent,
    LiveStartMessage,
    LiveStopMessage,
    LiveStoppedEvent,
    LiveTimings,
    LiveUpdatedEvent,
    LiveUpdateMessage,
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
    MAX_CONTROLS,
    MAX_REFERENCES,
    image_role_pattern,
)
from ..settings import Settings
from .app import ENGINE_KEY, SETTINGS_KEY
from .jsonio import json_response
from .responses import (  # noqa: F401 - re-exported: the published response models
    RESPONSE_MODELS,
    CancelResponse,
    HealthResponse,
    HistoryResponse,
    LorasResponse,
    ModelsResponse,
)
from .rest import API, LoadModelBody, SubmitBody

REF = "#/components/schemas/{model}"
# The websocket's frames are in the components too: one document types every wire format (the
# TypeScript SDK's types are generated from it, sdk/typescript).
WEBSOCKET_MODELS: list[type[BaseModel]] = [HelloMessage, SubmitMessage, CancelMessage, AttachMessage, PingMessage,
                                           HelloEvent, Capabilities, ModelEvent, PongEvent, BinaryHeader,
                                           LiveStartMessage, LiveUpdateMessage, LiveStopMessage, LiveStartedEvent,
                                           LiveUpdatedEvent, LiveStoppedEvent, LiveTimings]
MODELS: list[type[BaseModel]] = [GenerationRequest, SubmitBody, LoadModelBody, AcceptedEvent, StartedEvent,
                                 ProgressEvent, ResultEvent, DoneEvent, CancelledEvent, ErrorEvent, StatusEvent,
                                 ModelStatus, PreviewEvent, *RESPONSE_MODELS, *WEBSOCKET_MODELS]
CLIENT_MESSAGES = (HelloMessage, SubmitMessage, CancelMessage, AttachMessage, PingMessage, LiveStartMessage,
                   LiveUpdateMessage, LiveStopMessage)
SERVER_EVENTS = (HelloEvent, AcceptedEvent, StartedEvent, ProgressEvent, ResultEvent, DoneEvent, CancelledEvent,
                 ErrorEvent, StatusEvent, PongEvent, PreviewEvent, ModelEvent, LiveStartedEvent, LiveUpdatedEvent,
                 LiveStoppedEvent)
JOB_EVENTS = (StatusEvent, StartedEvent, ProgressEvent, PreviewEvent, ResultEvent, DoneEvent, CancelledEvent,
              ErrorEvent)
IMAGE_MODES = ["img2img", "inpaint", "outpaint"]
# A base64 image in a JSON body (OpenAPI's `byte` format); PNG, JPEG or WebP once decoded.
BASE64_IMAGE = {"type": "string", "format": "byte", "contentEncoding": "base64", "contentMediaType": "image/png",
                "description": "A PNG, JPEG or WebP image, base64 (a `data:` URL prefix is accepted)"}
BINARY_IMAGE = {"type": "string", "format": "binary", "contentMediaType": "image/png",
                "description": "A PNG, JPEG or WebP image"}


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref(ErrorEvent), description)


# Every operation may answer these (the security middleware, the body limits, the error middleware).
COMMON_ERRORS = {
    "400": _error("`bad_message`: the body is not (strict) JSON, a malformed multipart body, a bad parameter"),
    "401": _error("`unauthorized`: a token is required (or too many wrong ones came from this address; "
                  "see `Retry-After`)"),
    "403": _error("`forbidden`: a browser request from a foreign Origin or Host, or a form post"),
    "405": _error("`bad_message`: method not allowed; `Allow` lists the methods of the route"),
    "default": _error("A typed error (see `code`; `field` names the offending field)"),
}
SUBMIT_ERRORS = {
    "404": _error("`unknown_model`: the request names a model or LoRA this server does not have"),
    "413": _error("`too_large`: the body is over `max_body_bytes`, or width x height x batch_size (for outpaint: "
                  "the init image grown by the extents, times batch_size) is over this server's `max_pixels`; "
                  "JSON Schema cannot express that product"),
    "422": _error("`bad_image`: an image that is not a decodable PNG, JPEG or WebP, or a mask whose size differs "
                  "from the init image's; `invalid_request`: a control unit whose `end` is not after its `start`, or a "
                  "hires pass whose final size leaves 64..4096 (rules JSON Schema cannot express)"),
    "429": _error("`queue_full`: the queue is full; retry after `Retry-After` seconds"),
    "503": _error("`model_not_ready` / `model_load_failed`: the model is not available"),
}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
CLIENT_HEADER = {"name": "X-LatentBridge-Client", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "Any value. Required with a multipart body unless an Authorization header is sent "
                                "(plain HTML forms cannot set it, so a web page cannot post here)"}
# (No link to a result: a just-accepted job has none yet.)
JOB_LINKS = {
    "status": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/job_id"}},
    "events": {"operationId": "getJobEvents", "parameters": {"job_id": "$response.body#/job_id"}},
    "cancel": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/job_id"}},
}
# One server-sent event. Before OpenAPI 3.2 (`itemSchema`), a text/event-stream `schema` describes
# each event of the stream: its `event:` line is the type, its `data:` line a JobEvent as JSON.
SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": [m.model_fields["type"].default for m in JOB_EVENTS]},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref("JobEvent")},
    },
}


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


PNG = {"description": "PNG", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


def _images_follow_mode(init: dict[str, Any], mask: dict[str, Any]) -> list[dict[str, Any]]:
    """The submit rule (jobs.check_limits): img2img/inpaint/outpaint need an init image, inpaint a mask."""

    def mode_is(values: list[str]) -> dict[str, Any]:
        return {"properties": {"request": {"properties": {"mode": {"enum": values}}, "required": ["mode"]}},
                "required": ["request"]}

    return [{"if": mode_is(IMAGE_MODES), "then": {"required": ["init_image"], "properties": {"init_image": init}}},
            {"if": mode_is(["inpaint"]), "then": {"required": ["mask"], "properties": {"mask": mask}}}]


CONDITIONING_ROLES = [f"control.{i}" for i in range(MAX_CONTROLS)] + [f"reference.{i}" for i in range(MAX_REFERENCES)]


def _roles_follow_units(container: str | None) -> list[dict[str, Any]]:
    """The upload rule (jobs.check_limits): control unit i needs the image `control.<i>`, reference
    image i the image `reference.<i>`, and no other role may be sent. The images are in the object
    `container` (JSON bodies) or are the body's own parts (multipart). Each rule is one chain of
    nested conditions (unit i exists only if unit i-1 does), which schema tools unfold linearly."""

    def has_control(i: int) -> dict[str, Any]:
        return {"properties": {"request": {"properties": {"controls": {"minItems": i + 1}}, "required": ["controls"]}},
                "required": ["request"]}

    def has_reference(i: int) -> dict[str, Any]:
        reference: dict[str, Any] = {"type": "object"}  # `images` defaults to 1
        if i:
            reference.update(properties={"images": {"minimum": i + 1}}, required=["images"])
        return {"properties": {"request": {"properties": {"reference": reference}, "required": ["reference"]}},
                "required": ["request"]}

    return [_role_chain(has_control, "control", MAX_CONTROLS, container),
            _role_chain(has_reference, "reference", MAX_REFERENCES, container)]


def _role_chain(has, prefix: str, count: int, container: str | None, i: int = 0) -> dict[str, Any]:
    """If item i exists, role `<prefix>.<i>` is required and the chain goes on; else that role and
    every later one are absent."""
    def about_images(schema: dict[str, Any]) -> dict[str, Any]:
        return schema if container is None else {"properties": {container: schema}}

    absent = about_images({"properties": {f"{prefix}.{k}": False for k in range(i, count)}})
    present = about_images({"required": [f"{prefix}.{i}"]})
    if container is not None:
        present["required"] = [container]
    if i + 1 < count:
        present = {"allOf": [present, _role_chain(has, prefix, count, container, i + 1)]}
    return {"if": has(i), "then": present, "else": absent}


def _this_servers_limits(schemas: dict[str, Any], settings: Settings, samplers: list[str] | None,
                         seamless: list[str] | None) -> None:
    request = schemas["GenerationRequest"]
    props = request["properties"]
    for field, limit in (("width", settings.max_width), ("height", settings.max_height),
                         ("steps", settings.max_steps), ("batch_size", settings.max_batch)):
        prop = props[field]
        prop["maximum"] = min(prop["maximum"], limit)
        if prop.get("default", 0) > prop["maximum"]:
            # The model's default is over this server's limit: the field must be sent.
            del prop["default"]
            request.setdefault("required", []).append(field)
    props["width"]["description"] = props["height"]["description"] = (
        f"Width x height x batch_size may be at most {settings.max_pixels} pixels on this server (413 otherwise)")
    # Remote clients name a LoRA by its file name in the LoRA folders (security.check_lora_names).
    lora_name = schemas["LoraSpec"]["properties"]["name"]
    lora_name.update(pattern=r"^[^/\\]+$", description="A file name inside the LoRA folders (no path)")
    lora_name["not"] = {"const": ".."}
    if samplers is not None:
        schemas["Sampler"]["enum"] = samplers
        if props["sampler"].get("default") not in samplers:
            del props["sampler"]["default"]
            request.setdefault("required", []).append("sampler")
    if seamless is not None:
        schemas["Seamless"]["enum"] = seamless


def build_openapi(settings: Settings | None = None, samplers: list[str] | None = None,
                  seamless: list[str] | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    schemas = copy.deepcopy(defs.get("$defs", {}))
    _this_servers_limits(schemas, settings, samplers, seamless)
    _type_required(schemas)
    schemas["ClientMessage"] = _union(CLIENT_MESSAGES)
    schemas["ServerEvent"] = _union(SERVER_EVENTS)
    submit = schemas["SubmitBody"]
    for field in ("init_image", "mask"):
        submit["properties"][field] = {"anyOf": [BASE64_IMAGE, {"type": "null"}], "default": None}
    images = submit["properties"]["images"]
    images["patternProperties"] = {pattern: BASE64_IMAGE for pattern in images["patternProperties"]}
    images["additionalProperties"] = False
    submit["allOf"] = _images_follow_mode(BASE64_IMAGE, BASE64_IMAGE) + _roles_follow_units("images")
    schemas["JobEvent"] = {"oneOf": [_ref(m) for m in JOB_EVENTS], "discriminator": {"propertyName": "type"},
                           "description": "One event of a job, as JSON (the `data:` of a server-sent event)"}
    multipart = {
        "type": "object", "required": ["request"], "additionalProperties": False,
        "properties": {"request": _ref(GenerationRequest),
                       "priority": {"type": "string", "enum": ["interactive", "normal", "batch"]},
                       "init_image": BINARY_IMAGE, "mask": BINARY_IMAGE,
                       # Parts named by image role: control.0 for control unit 0, reference.0, ...
                       **{role: BINARY_IMAGE for role in CONDITIONING_ROLES}},
        "allOf": _images_follow_mode(BINARY_IMAGE, BINARY_IMAGE) + _roles_follow_units(None),
    }
    multipart_encoding = {"request": {"contentType": "application/json"},
                          "init_image": {"contentType": "image/png, image/jpeg, image/webp"},
                          "mask": {"contentType": "image/png, image/jpeg, image/webp"}}
    paths: dict[str, Any] = {
        f"{API}/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job",
                "description": "JSON with base64 images, or multipart/form-data (send an `X-LatentBridge-Client` "
                               "or `Authorization` header with multipart: plain HTML forms may not post).",
                "parameters": [CLIENT_HEADER],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(SubmitBody)},
                    "multipart/form-data": {"schema": multipart, "encoding": multipart_encoding}}},
                "responses": {"202": {**_json(_ref(AcceptedEvent), "Queued"), "links": JOB_LINKS},
                              **SUBMIT_ERRORS, **COMMON_ERRORS},
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Job history, newest first",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 1000, "default": 50}}],
                "responses": {"200": _json(_ref(HistoryResponse), "Jobs of every client, newest first"),
                    "422": _error("`invalid_request`: `limit` is not an integer in 1..1000"), **COMMON_ERRORS},
            },
        },
        f"{API}/jobs/{{job_id}}": {"get": {
            "operationId": "getJob", "summary": "Job status", "parameters": [JOB_ID],
            "responses": {"200": _json(_ref(StatusEvent), "Status"), "404": _error("`unknown_job`"),
                          **COMMON_ERRORS}}},
        f"{API}/jobs/{{job_id}}/events": {"get": {
            "operationId": "getJobEvents",
            "summary": "Event stream (server-sent events)",
            "description": "`text/event-stream`: each event's `event:` line is the event type and its `data:` "
                           "line one `JobEvent` as JSON (the same JSON as on the websocket; previews as "
                           "`preview` events with base64 data). `: keep-alive` comments come every 15 s. The "
                           "stream ends after `done`, `cancelled` or `error`.",
            "parameters": [JOB_ID],
            "responses": {"200": {"description": "The job's events",
                                  "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                          "404": _error("`unknown_job`"), **COMMON_ERRORS}}},
        f"{API}/jobs/{{job_id}}/cancel": {"post": {
            "operationId": "cancelJob", "summary": "Cancel a queued or running job", "parameters": [JOB_ID],
            "responses": {"200": _json(_ref(CancelResponse), "Cancelled (or already finished)"),
                "404": _error("`unknown_job`"), **COMMON_ERRORS}}},
        f"{API}/jobs/{{job_id}}/results/{{index}}": {"get": {
            "operationId": "getJobResult",
            "summary": "A result image (PNG with the request embedded)",
            "parameters": [JOB_ID, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": PNG,
                          "404": _error("`unknown_job`: no such job, or no result with that index (yet)"),
                          **COMMON_ERRORS}}},
        f"{API}/jobs/{{job_id}}/inputs/{{role}}": {"get": {
            "operationId": "getJobInput",
            "summary": "A job's stored input image (init, mask, control.<i>, reference.<i>), to run it again",
            "parameters": [JOB_ID, {"name": "role", "in": "path", "required": True, "schema": {"type": "string"},
                                    "description": "The role the image had in the job: `init`, `mask`, `control.0`, ..."}],
            "responses": {"200": PNG, "404": _error("`unknown_job`: no such job, or no input with that role"),
                          **COMMON_ERRORS}}},
        f"{API}/models": {"get": {"operationId": "listModels",
                                  "summary": "Loaded model and the models a client may pick",
                                  "responses": {"200": _json(_ref(ModelsResponse), "Models"), **COMMON_ERRORS}}},
        f"{API}/capabilities": {"get": {"operationId": "capabilities",
                                        "summary": "What the server can do now (as in the websocket `hello`; "
                                                   "samplers and seamless follow the loaded model)",
                                        "responses": {"200": _json(_ref(Capabilities), "Capabilities"),
                                                      **COMMON_ERRORS}}},
        f"{API}/loras": {"get": {"operationId": "listLoras", "summary": "LoRA files a request may name (`loras[].name`)",
                                 "responses": {"200": _json(_ref(LorasResponse), "LoRAs"), **COMMON_ERRORS}}},
        f"{API}/models/load": {"post": {
            "operationId": "loadModel", "summary": "Load a model (waits for the running job)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(LoadModelBody)}}},
            "responses": {"200": _json(_ref(ModelStatus), "Loaded"),
                          "404": _error("`unknown_model`: not the configured model, a built-in one or a model "
                                        "inside --model-dirs"),
                          "503": _error("`model_load_failed`"), **COMMON_ERRORS}}},
        f"{API}/health": {"get": {"operationId": "health", "summary": "Server and model state",
                                  "responses": {"200": _json(_ref(HealthResponse), "Health"), **COMMON_ERRORS}}},
        f"{API}/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                        "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"),
                                                      **COMMON_ERRORS}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Latent Bridge", "version": __version__,
                 "description": "Local Stable-Diffusion-class server. See docs/http-api.md and docs/protocol.md. "
                                "This document describes this server as configured (its limits) and its loaded "
                                "model (samplers, seamless axes)."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }


def add_openapi_route(app: web.Application) -> None:
    documents: dict[tuple, dict[str, Any]] = {}  # by what the loaded model can do

    async def openapi(request: web.Request) -> web.Response:
        engine = request.app[ENGINE_KEY]
        samplers = [s.value for s in engine.usable_samplers()]
        seamless = [s.value for s in engine.usable_seamless()]
        key = (tuple(samplers), tuple(seamless))
        if key not in documents:
            documents[key] = build_openapi(request.app[SETTINGS_KEY], samplers, seamless)
        return json_response(documents[key])

    app.router.add_get(f"{API}/openapi.json", openapi)
