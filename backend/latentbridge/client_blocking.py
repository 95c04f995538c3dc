"""The blocking Python SDK: `Client` runs an `AsyncClient` on an event loop in a private thread,
and `BlockingLiveSession` a live session's calls on that loop (docs/sdk.md, *Sync Client*).
Both are importable from `latentbridge.client`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .client_live import LiveResult, LiveSession
from .protocol import (
    BinaryHeader,
    GenerationRequest,
    HelloEvent,
    LiveOptions,
    LiveStoppedEvent,
    LiveUpdatedEvent,
    ProgressEvent,
    StatusEvent,
)

if TYPE_CHECKING:
    from .client import AsyncClient

T = TypeVar("T")


class BlockingLiveSession:
    """`LiveSession` for the blocking `Client`: the same calls, run on the client's loop thread."""

    def __init__(self, session: LiveSession, run: Callable[[Awaitable[Any]], Any]):
        self.session = session
        self._run = run

    def __enter__(self) -> "BlockingLiveSession":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.session.running:
            self.stop()

    @property
    def job_id(self) -> str:
        return self.session.job_id

    @property
    def latest(self) -> LiveResult | None:
        return self.session.latest

    def send_frame(self, init: bytes | None = None, controls: Mapping[int, bytes] | None = None, *,
                   size: tuple[int, int] | None = None) -> int:
        return int(self._run(self.session.send_frame(init, controls, size=size)))

    def next_result(self, timeout: float | None = 60.0) -> LiveResult:
        result: LiveResult = self._run(self.session.next_result(timeout))
        return result

    def update(self, request: GenerationRequest | None = None, live: LiveOptions | None = None) -> LiveUpdatedEvent:
        event: LiveUpdatedEvent = self._run(self.session.update(request, live))
        return event

    def stop(self) -> LiveStoppedEvent:
        event: LiveStoppedEvent = self._run(self.session.stop())
        return event


class Client:
    """Blocking client: runs an AsyncClient on an event loop in a private thread. Callbacks are
    called on that thread."""

    def __init__(self, url: str, token: str | None = None, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latentbridge-client", daemon=True)
        self._thread.start()
        self._client = self._run(self._make(url, token, kwargs))

    @staticmethod
    async def _make(url: str, token: str | None, kwargs: dict[str, Any]) -> "AsyncClient":
        from .client import AsyncClient  # made on the loop's thread; client.py re-exports this module

        return AsyncClient(url, token, **kwargs)

    def _run(self, coro: Awaitable[T]) -> T:
        if self._loop.is_closed():
            raise RuntimeError("client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any interruption of the caller) cancels the coroutine too.
            future.cancel()
            raise

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def hello(self) -> HelloEvent | None:
        return self._client.hello

    def connect(self) -> HelloEvent:
        return self._run(self._client.connect())

    def generate(self, request: GenerationRequest, init_image: bytes | None = None, mask: bytes | None = None,
                 on_progress: Callable[[ProgressEvent], None] | None = None,
                 on_preview: Callable[[bytes, BinaryHeader], None] | None = None,
                 *, transport: str = "ws", priority: str = "normal", images: dict[str, bytes] | None = None) -> list[bytes]:
        return self._run(self._client.generate(request, init_image, mask, on_progress, on_preview,
                                               transport=transport, priority=priority, images=images))

    def submit(self, request: GenerationRequest, init_image: bytes | None = None, mask: bytes | None = None,
               *, priority: str = "normal", images: dict[str, bytes] | None = None) -> str:
        """Submit over the websocket and return the job id (follow it with `wait`)."""
        return self._run(self._client.submit(request, init_image, mask, priority=priority, images=images)).job_id

    def wait(self, job_id: str) -> list[bytes]:
        """Attach to a job and block until it ends; its PNGs."""

        async def attach_and_wait() -> list[bytes]:
            return await (await self._client.attach(job_id)).wait()

        return self._run(attach_and_wait())

    def cancel(self, job_id: str) -> None:
        self._run(self._client.cancel(job_id))

    def status(self, job_id: str) -> StatusEvent:
        return self._run(self._client.status(job_id))

    def result(self, job_id: str, index: int = 0) -> bytes:
        return self._run(self._client.result(job_id, index))

    def input(self, job_id: str, role: str) -> bytes:
        return self._run(self._client.input(job_id, role))

    def health(self) -> dict[str, Any]:
        return self._run(self._client.health())

    def models(self) -> Any:
        return self._run(self._client.models())

    def load_model(self, name: str) -> Any:
        return self._run(self._client.load_model(name))

    def live_start(self, request: GenerationRequest, live: LiveOptions | None = None) -> BlockingLiveSession:
        """A live session (see `AsyncClient.live_start`) with blocking calls."""
        return BlockingLiveSession(self._run(self._client.live_start(request, live)), self._run)
