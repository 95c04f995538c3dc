"""What the Python SDK hands out for one job: `Job` (its events and image frames, in order),
`ImageFrame`, `ConnectionLost`, and the helpers that turn server answers into them (typed errors
from error events and HTTP bodies, previews from SSE events, image formats, server URLs)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pydantic import BaseModel

from .protocol import (
    WS_PATH,
    BadImage,
    BinaryHeader,
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    LatentBridgeError,
    PreviewEvent,
    ResultEvent,
)


class ConnectionLost(LatentBridgeError):
    """The websocket closed while a job was still being followed; `attach` can pick it up again."""

    code = ErrorCode.internal


@dataclass(frozen=True)
class ImageFrame:
    """A binary frame from the server: a preview (JPEG, usually) or a finished result (PNG)."""

    header: BinaryHeader
    data: bytes

    @property
    def kind(self) -> str:
        return self.header.kind


JobItem = BaseModel | ImageFrame


def error_from_event(event: ErrorEvent) -> LatentBridgeError:
    return LatentBridgeError(event.message, field=event.field, code=ErrorCode(event.code))


def error_from_body(status: int, body: bytes) -> LatentBridgeError:
    """A typed error from an HTTP error body (ErrorEvent-shaped, possibly under `error`)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if isinstance(data, dict) and "code" in data:
        try:
            code = ErrorCode(data["code"])
        except ValueError:
            code = ErrorCode.internal
        message = str(data.get("message") or data.get("detail") or f"HTTP {status}")
        return LatentBridgeError(message, field=data.get("field"), code=code)
    fallback = {401: ErrorCode.unauthorized, 403: ErrorCode.forbidden, 404: ErrorCode.unknown_job,
                413: ErrorCode.too_large, 429: ErrorCode.queue_full, 503: ErrorCode.queue_full}
    text = body[:200].decode("utf-8", "replace").strip()
    return LatentBridgeError(f"HTTP {status}: {text}", code=fallback.get(status, ErrorCode.internal))


def preview_from_event(event: PreviewEvent) -> tuple[bytes, BinaryHeader]:
    """An SSE `preview` event as the (bytes, header) pair a websocket preview frame gives."""
    header = BinaryHeader(kind="preview", format=event.format, job_id=event.job_id, step=event.step,
                          total=event.total, width=event.width, height=event.height)
    return base64.b64decode(event.data), header


def sniff_format(data: bytes) -> str:
    """The wire format name of encoded image bytes, or BadImage before anything is sent."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise BadImage("image bytes are not PNG, JPEG or WebP", field="images")


def split_url(url: str) -> tuple[str, str]:
    """(http base, websocket url) from an http(s):// or ws(s):// server address."""
    base = url.rstrip("/")
    if base.endswith(WS_PATH):
        base = base[: -len(WS_PATH)]
    scheme, sep, rest = base.partition("://")
    if not sep:
        scheme, rest = "http", base
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    ws_scheme = {"http": "ws", "https": "wss"}.get(http_scheme, "ws")
    return f"{http_scheme}://{rest}", f"{ws_scheme}://{rest}{WS_PATH}"


class Job:
    """One job followed over the websocket. Iterate it for its events and image frames; the
    iteration ends after `done`, `cancelled` or `error` (the last two are yielded, not raised)."""

    def __init__(self, job_id: str, *, position: int | None = None):
        self.job_id = job_id
        self.position = position
        self.results: dict[int, bytes] = {}
        self.result_events: dict[int, ResultEvent] = {}
        self.final: DoneEvent | CancelledEvent | ErrorEvent | None = None
        self._queue: asyncio.Queue[JobItem | LatentBridgeError] = asyncio.Queue()

    # Called by the connection's reader, on the event loop.
    def _feed(self, item: JobItem | LatentBridgeError) -> None:
        self._queue.put_nowait(item)

    def _finished_by(self, item: JobItem) -> bool:
        # The server always ends a job's stream with one of these, after an attach's `status` too.
        if isinstance(item, ImageFrame) and item.kind == "result":
            self.results[item.header.index] = item.data
        if isinstance(item, (DoneEvent, CancelledEvent, ErrorEvent)):
            self.final = item
            return True
        return False

    def __aiter__(self) -> AsyncIterator[JobItem]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[JobItem]:
        if self.final is not None and self._queue.empty():
            return
        while True:
            item = await self._queue.get()
            if isinstance(item, LatentBridgeError):
                raise item
            if isinstance(item, ResultEvent):
                self.result_events[item.index] = item
            finished = self._finished_by(item)
            yield item
            if finished:
                return

    def images(self) -> list[bytes]:
        """The finished PNGs in index order, or the job's error raised as LatentBridgeError."""
        final = self.final
        if isinstance(final, ErrorEvent):
            raise error_from_event(final)
        if isinstance(final, CancelledEvent):
            raise LatentBridgeError("job was cancelled", code=ErrorCode.cancelled)
        if final is None:
            raise LatentBridgeError("job has not finished", code=ErrorCode.internal)
        return [self.results[i] for i in sorted(self.results)]

    async def wait(self, on_item: Callable[[JobItem], None] | None = None) -> list[bytes]:
        """Follow the job to its end and return its PNGs (see `images`)."""
        async for item in self:
            if on_item is not None:
                on_item(item)
        return self.images()
