"""Typed JSON errors for every HTTP route: the `ErrorEvent` body, never a traceback."""

from __future__ import annotations

import errno
import logging
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..protocol import ErrorCode, LatentBridgeError
from .jsonio import json_response

log = logging.getLogger(__name__)

HTTP_STATUS = {
    ErrorCode.bad_message: 400,
    ErrorCode.invalid_request: 422,
    ErrorCode.bad_image: 422,
    ErrorCode.missing_image: 422,
    ErrorCode.too_large: 413,
    ErrorCode.unknown_model: 404,
    ErrorCode.model_not_ready: 503,
    ErrorCode.model_load_failed: 503,
    ErrorCode.unsupported: 422,
    ErrorCode.unknown_job: 404,
    ErrorCode.queue_full: 429,
    ErrorCode.cancelled: 409,
    ErrorCode.out_of_memory: 503,
    ErrorCode.timeout: 504,
    ErrorCode.interrupted: 409,
    ErrorCode.unauthorized: 401,
    ErrorCode.forbidden: 403,
    ErrorCode.internal: 500,
}


def error_response(exc: LatentBridgeError, *, job_id: str | None = None, status: int | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = exc.to_event(job_id).model_dump(mode="json")
    return json_response(body, status=status or HTTP_STATUS.get(exc.code, 500), headers=headers)


def _from_http_exception(exc: web.HTTPException) -> LatentBridgeError:
    if exc.status == 413:
        return LatentBridgeError("request body too large", code=ErrorCode.too_large, field="body")
    if exc.status == 404:
        return LatentBridgeError("no such route", code=ErrorCode.bad_message)
    if exc.status == 405:
        return LatentBridgeError("method not allowed on this route", code=ErrorCode.bad_message)
    return LatentBridgeError(exc.reason or "bad request", code=ErrorCode.bad_message)


def log_client_gone(request: web.Request, exc: BaseException) -> None:
    """The client hung up (mid-body, mid-stream): one info line, no traceback. A connection the
    server closed itself (a stalled body, see limits.py) says why."""
    reason = getattr(request.protocol, "close_reason", None) if request.protocol is not None else None
    log.info("client %s went away during %s %s (%s)", request.remote, request.method, request.path_qs[:200],
             reason or str(exc) or type(exc).__name__)


def client_gone(request: web.Request, exc: BaseException) -> web.Response:
    """`log_client_gone`, and a response that only ends the handler cleanly (nobody reads it)."""
    log_client_gone(request, exc)
    return web.Response(status=400, text="client went away")


def _translate(exc: Exception) -> LatentBridgeError | None:
    """Errors that bad input causes deep inside aiohttp or the OS, as typed errors (None: a bug)."""
    if isinstance(exc, HttpProcessingError):  # a malformed multipart part header, too many headers, ...
        return LatentBridgeError(f"malformed request: {exc.message}"[:300], field="body", code=ErrorCode.bad_message)
    if isinstance(exc, RequestPayloadError):  # a broken chunked encoding, a body cut short
        return LatentBridgeError(f"malformed request body: {exc}"[:300], field="body", code=ErrorCode.bad_message)
    if isinstance(exc, RecursionError):
        return LatentBridgeError("request is nested too deeply", field="body", code=ErrorCode.bad_message)
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return LatentBridgeError("a name in the request is longer than a file name may be (255 bytes)",
                                 code=ErrorCode.invalid_request)
    return None


def _refused(request: web.Request, exc: LatentBridgeError, *, status: int | None = None,
             headers: dict[str, str] | None = None) -> web.Response:
    """A typed error response and its one log line (never a traceback: the client caused it)."""
    response = error_response(exc, status=status, headers=headers)
    log.info("%s %s -> %d %s: %s", request.method, request.path_qs[:200], response.status, exc.code.value,
             exc.message[:300])
    return response


def error_middleware() -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            return await handler(request)
        except LatentBridgeError as exc:
            headers = None
            if exc.code is ErrorCode.queue_full:
                headers = {"Retry-After": str(getattr(exc, "retry_after_s", 5))}
            return _refused(request, exc, headers=headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # Keep what the exception says about the route (a 405's `Allow`, RFC 9110 15.5.6).
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
            return _refused(request, _from_http_exception(exc), status=exc.status, headers=headers or None)
        except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError too
            return client_gone(request, exc)
        except Exception as exc:  # noqa: BLE001 - the client gets a typed error, the log gets the traceback
            typed = _translate(exc)
            if typed is not None:
                return _refused(request, typed)
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(LatentBridgeError("internal server error; see the server log",
                                                    code=ErrorCode.internal))

    return middleware
