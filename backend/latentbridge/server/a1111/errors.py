"""Error bodies as A1111 clients read them: our typed fields plus A1111's `detail`, as FastAPI
writes it (a string for A1111's own errors, a list of {loc, msg, type} for a body that does not
validate), with A1111's status codes. Clients tell "not found" and "not in API mode" (a 404 whose
detail is "Not Found": the route does not exist) apart by that detail.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..jsonio import json_response
from ...protocol import ErrorCode, LatentBridgeError, error_from_validation, loads_json
from ..errors import HTTP_STATUS

# A1111 answers what a client sent wrong with 422 (FastAPI), a model that fails to load with 500.
_STATUS = {**HTTP_STATUS, ErrorCode.bad_message: 422, ErrorCode.model_load_failed: 500,
           ErrorCode.out_of_memory: 500}
# Our field names → the A1111 field a client should fix.
_FIELD_NAMES = {
    "guidance": "cfg_scale",
    "strength": "denoising_strength",
    "sampler": "sampler_name",
    "schedule": "scheduler",
    "seamless": "tiling",
    "mask.blur": "mask_blur",
    "mask.padding": "inpaint_full_res_padding",
    "model": "override_settings.sd_model_checkpoint",
    "vae": "override_settings.sd_vae",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "loras": "prompt",
    "hires.upscaler": "hr_upscaler",
    "hires.sampler": "hr_sampler_name",
    "hires.schedule": "hr_scheduler",
    "hires.steps": "hr_second_pass_steps",
    "hires.strength": "denoising_strength",
    "hires.scale": "hr_scale",
    "hires": "hr_scale",
}


class A1111Error(LatentBridgeError):
    """An error with A1111's own status and `detail` (e.g. 404 "Sampler not found")."""

    def __init__(self, detail: str, *, status: int, field: str | None = None, code: ErrorCode = ErrorCode.invalid_request,
                 message: str | None = None):
        super().__init__(message or detail, field=field, code=code)
        self.status = status
        self.detail: Any = detail


def a1111_field(exc: LatentBridgeError) -> LatentBridgeError:
    """Rename our request's field to the A1111 one in an error about a translated request."""
    if exc.field in _FIELD_NAMES:
        exc.message = exc.message.replace(exc.field, _FIELD_NAMES[exc.field], 1)
        exc.field = _FIELD_NAMES[exc.field]
    return exc


def parse_body(model: type[BaseModel], data: Any, what: str = "request body") -> Any:
    """Validate an A1111 body; a failure is FastAPI's 422 with the error list as `detail`."""
    if not isinstance(data, dict):
        error = A1111Error(f"{what} must be a JSON object", status=422, field="body")
        error.detail = [{"loc": ["body"], "msg": f"{what} must be a JSON object", "type": "dict_type"}]
        raise error
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = error_from_validation(exc)
        error = A1111Error(first.message, status=422, field=first.field)
        error.detail = [{"loc": ["body", *err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
                        for err in exc.errors()]
        raise error from None


def error_response(exc: LatentBridgeError) -> web.Response:
    """Our typed error body plus A1111's `detail`."""
    status = getattr(exc, "status", None) or _STATUS.get(exc.code, 500)
    body = exc.to_event().model_dump(mode="json")
    body["detail"] = getattr(exc, "detail", exc.message)
    retry_after = getattr(exc, "retry_after_s", 5)
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return json_response(body, status=status, headers=headers)


async def read_json(request: web.Request) -> Any:
    """The body as JSON; malformed JSON is FastAPI's 422 `json_invalid`."""
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return loads_json(raw, what="request body", field="body")  # strict: no NaN, bounded nesting
    except LatentBridgeError as exc:
        error = A1111Error(exc.message, status=422, field="body", code=ErrorCode.bad_message)
        error.detail = [{"loc": ["body", 0], "msg": "JSON decode error", "type": "json_invalid"}]
        raise error from None


def a1111_route(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Wrap a route so its typed errors answer in A1111's shape."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except LatentBridgeError as exc:
            return error_response(a1111_field(exc))

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


_OURS = ("/api/", "/v1/")  # our own API and the OpenAI-compatible one answer in their own shapes


def not_found_middleware():
    """Unknown routes answer as FastAPI does (404 {"detail": "Not Found"}), as A1111 answers a
    route of an extension it does not have; our own API paths keep their error shape."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPNotFound:
            if request.path.startswith(_OURS):
                raise
            return error_response(A1111Error("Not Found", status=404, code=ErrorCode.bad_message,
                                             message=f"no route {request.path}"))
        except web.HTTPMethodNotAllowed as exc:
            if request.path.startswith(_OURS):
                raise
            response = error_response(A1111Error("Method Not Allowed", status=405, code=ErrorCode.bad_message,
                                                 message=f"{request.method} is not allowed on {request.path}"))
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110: a 405 says what is
            return response

    return middleware
