"""Error bodies as A1111 clients read them: our typed fields plus A1111's `detail`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...protocol import ErrorCode, LatentBridgeError

_STATUS = {
    ErrorCode.queue_full: 429,
    ErrorCode.model_not_ready: 503,
    ErrorCode.unauthorized: 401,
    ErrorCode.forbidden: 403,
    ErrorCode.too_large: 413,
    ErrorCode.internal: 500,
    ErrorCode.out_of_memory: 500,
    ErrorCode.model_load_failed: 500,
    ErrorCode.timeout: 504,
}


def error_response(exc: LatentBridgeError) -> web.Response:
    """Our typed error body plus A1111's `detail`; 422 like A1111 for anything the client sent."""
    status = _STATUS.get(exc.code, 422)
    body = exc.to_event().model_dump(mode="json")
    body["detail"] = exc.message
    retry_after = getattr(exc, "retry_after_s", 5)
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return web.json_response(body, status=status, headers=headers)


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise LatentBridgeError("request body is not valid JSON", code=ErrorCode.bad_message, field="body") from None
