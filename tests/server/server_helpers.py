"""Helpers shared by the server tests (imported by name: the test folders are not packages)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
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
