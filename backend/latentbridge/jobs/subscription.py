"""One subscriber's view of one job's events: ordered protocol events, latest-wins previews."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Callable

from ..protocol import CancelledEvent, DoneEvent, ErrorEvent

FINAL_EVENTS = (DoneEvent, CancelledEvent, ErrorEvent)


@dataclass(frozen=True)
class PreviewFrame:
    job_id: str
    step: int
    total: int
    width: int
    height: int
    data: bytes
    format: str = "jpeg"


class Subscription:
    """Events of one job for one subscriber. Protocol events are queued in order (a job makes a
    bounded number of them: steps + results + 2); previews are latest-wins: one slot, a new preview
    replaces an undelivered one, so a slow reader gets fewer previews and never a growing buffer.
    A live session's subscription uses the same slot for its result frames (`final`: the events
    that end it; a live session's per-frame errors do not)."""

    def __init__(self, job_id: str, on_close: Callable[["Subscription"], None] | None = None,
                 final: tuple[type, ...] = FINAL_EVENTS):
        self.job_id = job_id
        self._final = final
        self._events: collections.deque[Any] = collections.deque()
        self._preview: Any = None  # a PreviewFrame (jobs) or a LiveResultFrame (live sessions)
        self._wake = asyncio.Event()
        self._finished = False  # a final event was queued
        self._closed = False
        self._on_close = on_close
        self.previews_dropped = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, event: Any) -> None:
        if self._closed or self._finished:
            return
        self._events.append(event)
        if isinstance(event, self._final):
            self._finished = True
            self._preview = None
        self._wake.set()

    def push_preview(self, frame: Any) -> None:
        if self._closed or self._finished:
            return
        if self._preview is not None:
            self.previews_dropped += 1
        self._preview = frame
        self._wake.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._on_close is not None:
            self._on_close(self)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._events:
                return self._events.popleft()
            if self._preview is not None:
                frame, self._preview = self._preview, None
                return frame
            if self._finished or self._closed:
                self.close()
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
