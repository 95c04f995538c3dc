"""Websocket uploads waiting for their `submit`: bounded in count and bytes per connection, in
bytes across the server, and in time.

A client sends image bytes as binary `upload` frames, then a `submit` naming them. Until then the
bytes sit in memory, so without bounds one connection (or many) could park gigabytes there.
Each connection's `PendingUploads` draws on the server's one `UploadBudget`; an upload a submit
has not used within `upload_ttl_s` is dropped (a sweep runs in the background, so a silent
connection frees its memory too).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from aiohttp import web

from ..protocol import MissingImage, TooLarge
from ..settings import Settings

log = logging.getLogger(__name__)

MAX_PENDING_UPLOADS = 16  # per connection, whatever their size


class UploadBudget:
    """The server-wide byte count of pending uploads, and the connections holding them."""

    def __init__(self, settings: Settings):
        self.per_connection = settings.max_upload_bytes_per_connection
        self.total_limit = settings.max_upload_bytes_total
        self.ttl_s = settings.upload_ttl_s
        self.total = 0
        self._holders: weakref.WeakSet[PendingUploads] = weakref.WeakSet()

    def pending(self, owner: str) -> "PendingUploads":
        uploads = PendingUploads(self, owner)
        self._holders.add(uploads)
        return uploads

    def expire(self, now: float | None = None) -> int:
        """Drop every upload older than the TTL; returns how many were dropped."""
        now = time.monotonic() if now is None else now
        return sum(holder.expire(now) for holder in list(self._holders))


class PendingUploads:
    """One connection's uploads: `upload_id` → bytes, with their arrival times."""

    def __init__(self, budget: UploadBudget, owner: str):
        self.budget = budget
        self.owner = owner
        self._items: dict[str, tuple[bytes, float]] = {}
        self._expired: dict[str, None] = {}  # recently expired ids (oldest first), to say why a submit misses one
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, upload_id: str, data: bytes) -> None:
        self.expire(time.monotonic())
        self._drop(upload_id)  # a re-sent id replaces the earlier bytes
        if len(self._items) >= MAX_PENDING_UPLOADS:
            raise TooLarge(f"more than {MAX_PENDING_UPLOADS} uploads waiting for a submit", field="header.upload_id")
        if self.bytes + len(data) > self.budget.per_connection:
            raise TooLarge(f"uploads waiting for a submit on this connection would exceed "
                           f"{self.budget.per_connection} bytes; submit or send fewer images", field="header.upload_id")
        if self.budget.total + len(data) > self.budget.total_limit:
            raise TooLarge("the server holds too many uploads waiting for a submit; retry shortly",
                           field="header.upload_id")
        self._items[upload_id] = (data, time.monotonic())
        self._expired.pop(upload_id, None)
        self.bytes += len(data)
        self.budget.total += len(data)

    def take(self, upload_id: str, field: str) -> bytes:
        """The upload's bytes (consumed), or MissingImage saying why there are none."""
        self.expire(time.monotonic())
        item = self._items.get(upload_id)
        if item is None:
            if upload_id in self._expired:
                raise MissingImage(f"upload {upload_id!r} expired: a submit must follow its upload within "
                                   f"{self.budget.ttl_s:g} s", field=field)
            raise MissingImage(f"no upload {upload_id!r}: send the `upload` frame before `submit`", field=field)
        self._drop(upload_id)
        return item[0]

    def discard(self, upload_id: str) -> None:
        self._drop(upload_id)

    def expire(self, now: float) -> int:
        doomed = [uid for uid, (_, at) in self._items.items() if now - at > self.budget.ttl_s]
        for uid in doomed:
            self._drop(uid)
            self._expired[uid] = None
        if doomed:
            log.info("dropped %d upload(s) of %s unused for %g s", len(doomed), self.owner, self.budget.ttl_s)
        while len(self._expired) > 4 * MAX_PENDING_UPLOADS:
            del self._expired[next(iter(self._expired))]
        return len(doomed)

    def clear(self) -> None:
        for uid in list(self._items):
            self._drop(uid)

    def _drop(self, upload_id: str) -> None:
        item = self._items.pop(upload_id, None)
        if item is not None:
            self.bytes -= len(item[0])
            self.budget.total -= len(item[0])


UPLOADS_KEY = web.AppKey("latentbridge_uploads", UploadBudget)
SWEEP_KEY = web.AppKey("latentbridge_upload_sweep", asyncio.Task)


async def _sweep(budget: UploadBudget) -> None:
    interval = min(30.0, max(0.05, budget.ttl_s / 4))
    while True:
        await asyncio.sleep(interval)
        budget.expire()


async def _start_sweep(app: web.Application) -> None:
    app[SWEEP_KEY] = asyncio.create_task(_sweep(app[UPLOADS_KEY]), name="upload-sweep")


async def _stop_sweep(app: web.Application) -> None:
    task = app.get(SWEEP_KEY)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def add_upload_budget(app: web.Application, settings: Settings) -> None:
    app[UPLOADS_KEY] = UploadBudget(settings)
    app.on_startup.append(_start_sweep)
    app.on_cleanup.append(_stop_sweep)
