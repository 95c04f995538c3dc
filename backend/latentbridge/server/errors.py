"""Typed JSON errors for every HTTP route: the `ErrorEvent` body, never a traceback."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web

from ..protocol import ErrorCode, LatentBridgeError

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
    return web.json_response(body, status=status or HTTP_STATUS.get(exc.code, 500), headers=headers)


def _from_http_exception(exc: web.HTTPException) -> LatentBridgeError:
    if exc.status == 413:
        return LatentBridgeError("request body too large", code=ErrorCode.too_large, field="body")
    if exc.status == 404:
        return LatentBridgeError("no such route", code=ErrorCode.bad_message)
    if exc.status == 405:
        return LatentBridgeError("method not allowed on this route", code=ErrorCode.bad_message)
    return LatentBridgeError(exc.reason or "bad request", code=ErrorCode.bad_message)


def error_middleware() -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            return await handler(request)
        except LatentBridgeError as exc:
            headers = None
            if exc.code is ErrorCode.queue_full:
                headers = {"Retry-After": str(getattr(exc, "retry_after_s", 5))}
            return error_response(exc, headers=headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(_from_http_exception(exc), status=exc.status)
        except Exception:  # noqa: BLE001 - the client gets a typed error, the log gets the traceback
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(LatentBridgeError("internal server error; see the server log",
                                                    code=ErrorCode.internal))

    return middleware
