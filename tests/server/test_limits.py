"""Bounded resources on a real listening server (`latentbridge.server.serve`, in this process):
header and body deadlines, idle keep-alive, connection caps per client address and in total
(idle connections make room, busy ones get a 503), and the Content-Length limit.

Clients connect from different loopback addresses (127.0.0.x) to stand for different machines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time

import pytest
from server_helpers import HEALTH, connect, raw_request, running

from latentbridge.protocol import WS_PATH

async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF), failing after `seconds`."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    assert b"200 OK" not in data
    return time.monotonic() - start


async def test_stalled_headers_and_bodies_are_closed_after_their_deadlines(make_settings, tiny_engine, caplog):
    caplog.set_level(logging.INFO)
    async with running(make_settings, tiny_engine, header_timeout_s=0.5, body_timeout_s=0.5) as port:
        # Headers trickling in (slowloris): closed at the header deadline although bytes keep coming.
        reader, writer = await connect(port)
        writer.write(b"GET /api/v1/health HTTP/1.1\r\n")

        async def trickle():
            for _ in range(20):
                await asyncio.sleep(0.1)
                writer.write(b"X-Slow: 1\r\n")

        dripping = asyncio.create_task(trickle())
        assert await closed_within(reader, 5) < 3
        dripping.cancel()
        # A body that stops arriving: the handler's read ends, one info line, no traceback.
        reader, writer = await connect(port)
        writer.write(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"request\": ")
        assert await closed_within(reader, 5) < 3
        await asyncio.sleep(0.1)
        # The server still serves.
        assert (await raw_request(port))[0] == 200
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and "sent nothing for 0.5 s" in gone[0].getMessage()
    assert any("request headers not complete after 0.5 s" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]


async def test_idle_keepalive_connections_are_closed(make_settings, tiny_engine):
    async with running(make_settings, tiny_engine, keepalive_timeout_s=0.5) as port:
        reader, writer = await connect(port)
        writer.write(HEALTH.replace(b"Connection: close\r\n", b""))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"200 OK" in head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        assert await closed_within(reader, 5) < 3  # after a request
        reader, _ = await connect(port)
        assert await closed_within(reader, 5) < 3  # one that never sent anything


@contextlib.asynccontextmanager
async def websockets_from(port: int, sources: list[str]):
    """Open websockets (busy connections), one per source address."""
    import aiohttp

    opened, sockets = [], []
    try:
        for source in sources:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))
            opened.append(session)
            sockets.append(await session.ws_connect(f"http://127.0.0.1:{port}{WS_PATH}"))
        yield sockets
    finally:
        for session in opened:
            await session.close()


async def test_busy_connections_beyond_the_per_client_cap_get_503(make_settings, tiny_engine):
    async with running(make_settings, tiny_engine, max_connections_per_client=3) as port:
        # Idle sockets from one address never lock it out: the quietest makes room.
        idle = [await connect(port, "127.0.0.7") for _ in range(3)]
        assert (await raw_request(port, source="127.0.0.7"))[0] == 200
        assert (await asyncio.wait_for(idle[0][0].read(), 3)) == b""  # the oldest idle one was closed
        # Busy ones (open websockets) are kept; the next connection from that address is refused...
        async with websockets_from(port, ["127.0.0.8"] * 3):
            status, body = await raw_request(port, source="127.0.0.8")
            assert status == 503
            error = json.loads(body)
            assert error["type"] == "error" and error["code"] == "queue_full" and "your address" in error["message"]
            # ...while another address is served.
            assert (await raw_request(port, source="127.0.0.9"))[0] == 200
        await asyncio.sleep(0.1)
        assert (await raw_request(port, source="127.0.0.8"))[0] == 200  # room again once they closed


async def test_total_cap_evicts_idle_connections_then_refuses(make_settings, tiny_engine):
    async with running(make_settings, tiny_engine, max_connections=4) as port:
        idle = [await connect(port, f"127.0.1.{i}") for i in range(1, 5)]
        assert (await raw_request(port, source="127.0.1.9"))[0] == 200  # an idle one made room
        for _reader, writer in idle:
            writer.close()
        await asyncio.sleep(0.1)
        async with websockets_from(port, [f"127.0.2.{i}" for i in range(1, 5)]):
            status, body = await raw_request(port, source="127.0.2.9")
            assert status == 503 and "too many open connections" in json.loads(body)["message"]


async def test_content_length_over_the_limit_is_refused_before_reading(make_settings, tiny_engine):
    async with running(make_settings, tiny_engine, max_body_bytes=1000) as port:
        reader, writer = await connect(port)
        start = time.monotonic()
        writer.write(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 99999999999\r\n\r\n{")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413") and time.monotonic() - start < 2
        writer.close()
        # A chunked body (no Content-Length) is still bounded while it is read.
        chunk = b"x" * 600
        raw = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        status, body = await raw_request(port, raw)
        assert status == 413 and json.loads(body)["code"] == "too_large"


def test_sockets_from_many_addresses_bind():
    """The tests above need the whole 127/8 on loopback (true on Linux and in CI containers)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.2.9", 0))
        except OSError:
            pytest.fail("127.0.2.9 is not a loopback address here; the connection-cap tests need it")
