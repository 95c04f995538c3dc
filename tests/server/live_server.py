"""A real server on a real TCP port, in a thread of its own, for the synchronous client libraries
(`webuiapi`, `openai`) that the compatibility tests drive it with."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import requests
from aiohttp import web


class LiveServer:
    """`create_app(...)` served on 127.0.0.1:<free port> until `stop()`."""

    def __init__(self, app: web.Application):
        self.app = app
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 60.0, token: str | None = None) -> "LiveServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            health = requests.get(f"{self.url}/api/v1/health", headers=headers, timeout=5).json()
            if health["model"]["state"] == "ready":
                return self
            time.sleep(0.05)
        raise AssertionError("the model never became ready")

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def call(self, fn, *args: Any) -> Any:
        """Run `fn(*args)` (sync) on the server's loop thread and return its result."""
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
