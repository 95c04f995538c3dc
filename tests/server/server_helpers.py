"""Helpers shared by the server tests (imported by name: the test folders are not packages)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from PIL import Image, ImageDraw

from latentbridge.protocol import BinaryHeader, decode_binary_frame, encode_binary_frame, parse_server_event

TIMEOUT = 30.0


# ---------------------------------------------------------------------------------------------
# A real listening server in this process (`latentbridge.server.serve`), and raw sockets to it

HEALTH = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@contextlib.asynccontextmanager
async def running(make_settings, tiny_engine, **overrides):
    """`serve()` on a free port with the shared tiny engine; yields the port."""
    from latentbridge.server import create_app, serve

    settings = make_settings(port=0, **overrides)
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, app=create_app(settings, tiny_engine), started=started,
                                     own_loop=False))
    site = await asyncio.wait_for(started, 30)
    try:
        yield site.addresses[0][1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def raw_request(port: int, raw: bytes = HEALTH, source: str = "127.0.0.1", timeout: float = 5) -> tuple[int, bytes]:
    reader, writer = await connect(port, source)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def png_bytes(size=(64, 64), color=(40, 90, 160), mode="RGB") -> bytes:
    image = Image.new(mode, size, color if mode != "L" else 0)
    if mode == "L":
        ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), fill=255)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def finished_status(client, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll `GET /api/v1/jobs/{id}` (an aiohttp test client) until the job left queued/running;
    its last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if status["state"] not in ("queued", "running"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(status)
        await asyncio.sleep(0.02)


def tiny_request(**overrides: Any) -> dict[str, Any]:
    # guidance 1 skips classifier-free guidance: half the UNet work, the same code paths otherwise.
    request = {"prompt": "bronze", "steps": 2, "width": 64, "height": 64, "seed": 7, "guidance": 1.0}
    request.update(overrides)
    return request


class WsClient:
    """A thin test helper around an aiohttp websocket: decodes text and binary frames."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def upload(self, upload_id: str, data: bytes, fmt: str = "png") -> None:
        await self.ws.send_bytes(encode_binary_frame(BinaryHeader(kind="upload", format=fmt, upload_id=upload_id), data))

    async def receive(self, timeout: float = TIMEOUT):
        """Next frame: a protocol event, or (BinaryHeader, bytes) for a binary frame."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type.name == "TEXT":
            return parse_server_event(msg.data)
        if msg.type.name == "BINARY":
            return decode_binary_frame(msg.data)
        return msg

    async def until(self, type_: str, job_id: str | None = None, timeout: float = TIMEOUT) -> tuple[Any, list]:
        """Receive until an event of `type_` (for `job_id`); returns it and everything before it."""
        seen = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            item = await self.receive(max(0.1, deadline - loop.time()))
            if getattr(item, "type", None) == type_ and (job_id is None or getattr(item, "job_id", None) == job_id):
                return item, seen
            if not hasattr(item, "type") and not isinstance(item, tuple):
                raise AssertionError(f"connection ended while waiting for {type_}: {item!r}; seen {seen!r}")
            seen.append(item)

    async def hello(self, **fields: Any):
        await self.send({"type": "hello", "client": "tests", **fields})
        return await self.receive()


# ---------------------------------------------------------------------------------------------
# `latentbridge serve` as a real process


class Serve:
    """`python -m latentbridge serve --model tiny --port 0 ...`, its output collected by a thread
    (a full pipe would block the server's logging)."""

    def __init__(self, tmp_path, *args: str, nofile: int | None = None, port: str = "0"):
        def limit_files():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "latentbridge", "serve", "--model", "tiny", "--port", port,
             "--data-dir", str(tmp_path / "data"), *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=limit_files, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(r"listening on http://127\.0\.0\.1:(\d+) ", line):
                    self.port = int(match.group(1))
                    return self.port
            assert self.process.poll() is None, self.output
            time.sleep(0.02)
        raise AssertionError(f"no `listening` line in {timeout} s:\n{self.output}")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not _ready(f"http://127.0.0.1:{self.port}"):
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/v1/health", timeout=1) as response:
            return json.loads(response.read())["model"]["state"] == "ready"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Live sessions


class GatedEngine:
    """The real engine, with a gate in front of its live frames: a test holds a frame "rendering"
    for as long as it needs (everything else goes straight to the engine)."""

    def __init__(self, engine):
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.rendered: list[tuple[str, int]] = []  # (session, revision) of every frame that started
        self.order: list[str] = []  # "live" / "job", in the order the worker ran them

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, *args, **kwargs):
        self.order.append("job")
        return self._engine.generate(*args, **kwargs)

    def live_frame(self, session, revision, request, options, images, cancel=None):
        self.rendered.append((session, revision))
        self.order.append("live")
        self.entered.set()
        self.gate.wait(30)
        return self._engine.live_frame(session, revision, request, options, images, cancel)
