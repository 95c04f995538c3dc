"""Live sessions in the Python SDK (docs/live.md, docs/sdk.md): send frames, get the newest result.

    async with await client.live_start(request, LiveOptions(format="png")) as session:
        await session.send_frame(init=png_bytes)     # latest wins: never blocks, never queues
        result = await session.next_result()          # LiveResult: frame, revision, image bytes
        await session.update(request=request.model_copy(update={"prompt": "bronze"}))

Latest wins on this side as on the server: at most ONE frame is in flight (sent, not answered) and
at most one is pending; a newer frame replaces the pending one (counted in `dropped`). The pending
frame goes out when the in-flight one is answered (its result, an error about the session, or a
`live_updated` that may have dropped it on the server), so the server never holds a backlog of
this client's frames and every frame it renders is the newest one sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .client_jobs import ConnectionLost, error_from_event, sniff_format
from .protocol import (
    BadImage,
    BinaryHeader,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    LatentBridgeError,
    LiveOptions,
    LiveStartedEvent,
    LiveStoppedEvent,
    LiveTimings,
    LiveUpdatedEvent,
    encode_binary_frame,
)

if TYPE_CHECKING:
    from .client import AsyncClient

# A frame never answered (the server restarted, say) stops holding back the next one after this.
IN_FLIGHT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LiveResult:
    """One rendered frame: `data` is JPEG, PNG or raw RGB rows (`format`), `frame` the number of
    the frame it renders, `revision` the settings revision it used."""

    frame: int
    revision: int
    format: str
    width: int
    height: int
    data: bytes
    timings: LiveTimings | None

    @staticmethod
    def from_frame(header: BinaryHeader, data: bytes) -> "LiveResult":
        assert header.frame is not None and header.width is not None and header.height is not None
        return LiveResult(header.frame, header.revision or 0, header.format, header.width, header.height, data,
                          header.timings)


@dataclass
class _Frame:
    number: int
    frame: bytes  # the encoded binary frame


class LiveSession:
    """A running live session of one connection (from `AsyncClient.live_start`). Iterate it for
    its results as they come; `latest` is the newest; the iteration ends when the session stops
    (`stopped` says why) and raises if it failed or the connection dropped."""

    def __init__(self, client: "AsyncClient", started: LiveStartedEvent):
        self._client = client
        self.job_id = started.job_id
        self.started = started
        self.request: GenerationRequest = started.request  # as every frame renders it (preset applied)
        self.live: LiveOptions = started.live
        self.decoder = started.decoder
        self.revision = started.revision
        self.latest: LiveResult | None = None
        self.errors: list[ErrorEvent] = []  # frames the server refused or failed (the session carried on)
        self.stopped: LiveStoppedEvent | None = None
        self.sent = self.dropped = 0  # frames sent; frames replaced here before they were sent
        self._next_number = 0
        self._in_flight: tuple[int, float] | None = None  # (frame number, sent at)
        self._pending: _Frame | None = None
        self._results: asyncio.Queue[LiveResult | LiveStoppedEvent | LatentBridgeError] = asyncio.Queue()
        self._end: LatentBridgeError | None = None

    async def __aenter__(self) -> "LiveSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stopped is None and self._end is None and self._client.connected:
            await self.stop()

    # ---------------------------------------------------------------- the caller's side

    @property
    def running(self) -> bool:
        return self.stopped is None and self._end is None

    async def send_frame(self, init: bytes | None = None, controls: Mapping[int, bytes] | None = None, *,
                         size: tuple[int, int] | None = None) -> int:
        """Offer one frame: `init` (the picture img2img starts from) and/or control maps by unit
        index. Encoded images (PNG, JPEG, WebP), or raw 8-bit RGB rows of `size` (width, height)
        for every part. Returns the frame's number. Never waits for the server: the frame is sent
        now when nothing is in flight, else held as the pending one (replacing an older one)."""
        self._raise_if_ended()
        frame = _Frame(self._next_number, self._encode(self._next_number, init, controls or {}, size))
        self._next_number += 1
        in_flight = self._in_flight
        if in_flight is not None and time.monotonic() - in_flight[1] > IN_FLIGHT_TIMEOUT_S:
            in_flight = self._in_flight = None
        if in_flight is None:
            await self._send(frame)
        else:
            if self._pending is not None:
                self.dropped += 1
            self._pending = frame
        return frame.number

    async def next_result(self, timeout: float | None = None) -> LiveResult:
        """The next result to arrive (TimeoutError after `timeout` s); LatentBridgeError once the
        session has stopped."""
        item = await asyncio.wait_for(self._next(), timeout)
        if isinstance(item, LiveStoppedEvent):
            raise LatentBridgeError(f"live session {self.job_id} {item.reason}", code=ErrorCode.cancelled)
        if isinstance(item, LatentBridgeError):
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[LiveResult]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[LiveResult]:
        while isinstance(item := await self._next(), LiveResult):
            yield item
        if isinstance(item, LatentBridgeError):
            raise item

    async def _next(self) -> LiveResult | LiveStoppedEvent | LatentBridgeError:
        """The next result (taken), or the session's end (put back: every later call sees it)."""
        item = await self._results.get()
        if not isinstance(item, LiveResult):
            self._results.put_nowait(item)
        return item

    async def update(self, request: GenerationRequest | None = None, live: LiveOptions | None = None) -> LiveUpdatedEvent:
        """New settings without a restart; the server renders the last frame again with them.
        A settings error (a model that cannot load...) is raised and the session keeps the old ones."""
        self._raise_if_ended()
        event: LiveUpdatedEvent = await self._client._live_update(self.job_id, request, live)
        return event

    async def stop(self) -> LiveStoppedEvent:
        """End the session; its counts (received, rendered, dropped, failed) come back."""
        if self.stopped is not None:
            return self.stopped
        self._raise_if_ended()
        event: LiveStoppedEvent = await self._client._live_stop(self.job_id)
        return event

    # ---------------------------------------------------------------- called by the connection's reader

    def _on_result(self, result: LiveResult) -> None:
        self.latest = result
        if self._in_flight is not None and result.frame >= self._in_flight[0]:
            self._answered()
        self._results.put_nowait(result)

    def _on_error(self, event: ErrorEvent) -> None:
        self.errors.append(event)
        self._answered()  # a refused or failed frame is answered too: the next one may go

    def _on_updated(self, event: LiveUpdatedEvent) -> None:
        self.request, self.live, self.decoder, self.revision = event.request, event.live, event.decoder, event.revision
        self._answered()  # a pending frame the new settings do not fit was dropped unanswered there

    def _on_stopped(self, event: LiveStoppedEvent) -> None:
        self.stopped = event
        self._pending = None
        if event.reason == "failed":
            failed = LatentBridgeError(event.message or f"live session {self.job_id} failed", code=ErrorCode.internal)
            if self.errors:
                failed = error_from_event(self.errors[-1])
            self._end = failed
            self._results.put_nowait(failed)
        else:
            self._results.put_nowait(event)

    def _on_connection_lost(self, lost: ConnectionLost) -> None:
        self._end, self._pending = lost, None
        self._results.put_nowait(lost)

    # ---------------------------------------------------------------- internals

    def _raise_if_ended(self) -> None:
        if self._end is not None:
            raise self._end
        if self.stopped is not None:
            raise LatentBridgeError(f"live session {self.job_id} has stopped ({self.stopped.reason})",
                                    field="job_id", code=ErrorCode.unknown_job)

    def _answered(self) -> None:
        self._in_flight = None
        pending, self._pending = self._pending, None
        if pending is not None and self.running:
            asyncio.get_running_loop().create_task(self._send(pending), name=f"live-frame-{self.job_id}")

    async def _send(self, frame: _Frame) -> None:
        self._in_flight = (frame.number, time.monotonic())
        self.sent += 1
        try:
            await self._client._send_bytes(frame.frame)
        except (ConnectionLost, ConnectionError, RuntimeError):
            self._in_flight = None  # the reader reports the lost connection to the session

    def _encode(self, number: int, init: bytes | None, controls: Mapping[int, bytes],
                size: tuple[int, int] | None) -> bytes:
        parts = ([("init", init)] if init is not None else []) + [(f"control.{i}", data) for i, data in
                                                                   sorted(controls.items())]
        if not parts:
            raise BadImage("a live frame needs `init` or a control map", field="init")
        if size is not None:
            width, height = size
            fmt = "rgb"
            for role, data in parts:
                if len(data) != width * height * 3:
                    raise BadImage(f"{role}: raw RGB needs {width}*{height}*3 = {width * height * 3} bytes, "
                                   f"got {len(data)}", field=role)
        else:
            width = height = None
            formats = {sniff_format(data) for _role, data in parts}
            fmt = formats.pop() if len(formats) == 1 else "png"  # the server decodes each part by its bytes
        header = BinaryHeader(kind="live_frame", format=fmt, job_id=self.job_id, frame=number,  # type: ignore[arg-type]
                              width=width, height=height,
                              parts=[{"role": role, "bytes": len(data)} for role, data in parts])  # type: ignore[misc]
        return encode_binary_frame(header, b"".join(data for _role, data in parts))
