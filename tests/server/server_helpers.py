"""Helpers shared by the server tests (imported by name: the test folders are not packages)."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from PIL import Image, ImageDraw

from latentbridge.protocol import BinaryHeader, decode_binary_frame, encode_binary_frame, parse_server_event

TIMEOUT = 30.0


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
