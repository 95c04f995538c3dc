"""Clients that vanish (mid-body, mid-event-stream, mid-websocket) leave one info line and no
traceback; wrong tokens are slowed down and logged; a websocket must authenticate within a few
seconds; websocket uploads waiting for a submit are bounded and expire. On a real listening
server (`serve`, in this process) with raw sockets where a client library would not misbehave."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from server_helpers import WsClient, connect, png_bytes, raw_request, running, tiny_request

from latentbridge.protocol import WS_PATH


@pytest.fixture
def log_lines(caplog):
    caplog.set_level(logging.INFO)

    def lines(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    yield lines
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def wait_for_lines(lines, text: str, count: int = 1, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(lines(text)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return lines(text)


async def test_a_client_dropping_mid_body_is_one_info_line(make_settings, tiny_engine, log_lines):
    async with running(make_settings, tiny_engine) as port:
        for path in (b"/api/v1/jobs", b"/sdapi/v1/txt2img", b"/api/v1/models/load"):
            _, writer = await connect(port)
            writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{\"prompt\": \"")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
        gone = await wait_for_lines(log_lines, "went away", 3)
        assert len(gone) == 3, gone
        assert (await raw_request(port))[0] == 200


async def test_an_event_stream_reader_hanging_up_is_one_info_line(make_settings, tiny_engine, log_lines):
    async with running(make_settings, tiny_engine) as port:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/api/v1/jobs",
                                      json={"request": tiny_request(steps=40)})
            job_id = (await resp.json())["job_id"]
            reader, writer = await connect(port)
            writer.write(f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await reader.readuntil(b"event: ")  # the stream is flowing
            writer.transport.abort()
            gone = await wait_for_lines(log_lines, "went away during GET /api/v1/jobs/")
            assert len(gone) == 1, gone
            # The job ran on, unharmed.
            for _ in range(600):
                status = await (await session.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job_id}")).json()
                if status["state"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert status["state"] == "done"


async def test_a_websocket_client_hanging_up_mid_job_is_one_info_line(make_settings, tiny_engine, log_lines):
    async with running(make_settings, tiny_engine) as port:
        async with aiohttp.ClientSession() as session:
            ws = WsClient(await session.ws_connect(f"http://127.0.0.1:{port}{WS_PATH}"))
            await ws.hello()
            await ws.send({"type": "submit", "request": tiny_request(steps=40)})
            await ws.until("progress")
            ws.ws._response.connection.transport.abort()  # no close frame: the socket just dies
            gone = await wait_for_lines(log_lines, "websocket client 127.0.0.1 went away")
            await asyncio.sleep(0.5)  # previews keep coming for that job: still one line
            assert len(log_lines("websocket client 127.0.0.1 went away")) == 1, gone


async def test_non_ascii_bearer_is_401(make_settings, tiny_engine, log_lines):
    async with running(make_settings, tiny_engine, token="s3cret") as port:
        for junk in (b"\xff\xfe\xfd", "é".encode(), b"s3cret\x80", "s3crét".encode("latin-1")):
            raw = (b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + junk +
                   b"\r\nConnection: close\r\n\r\n")
            status, body = await raw_request(port, raw, source="127.0.0.20")
            assert status == 401 and json.loads(body)["code"] == "unauthorized", body
        assert (await raw_request(port, b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                                  b"s3cret\r\nConnection: close\r\n\r\n"))[0] == 200


async def test_wrong_tokens_from_one_address_are_slowed_down_and_logged(make_client, log_lines):
    client = await make_client(token="s3cret", auth_backoff_max_s=0.4)
    wrong = {"Authorization": "Bearer nope"}
    timings = []
    for _ in range(6):
        start = time.monotonic()
        resp = await client.get("/api/v1/health", headers=wrong)
        assert resp.status == 401
        timings.append(time.monotonic() - start)
    assert timings[4] >= 0.2 and timings[5] >= 0.35  # after three failures attempts are spaced, up to the cap
    assert max(timings[:3]) < timings[5]  # the first ones cost nothing (a typo)
    assert len(log_lines("wrong token from 127.0.0.1")) == 6
    # Parallel guesses do not escape the spacing: beyond the longest delay they are refused unchecked.
    start = time.monotonic()
    answers = await asyncio.gather(*(client.get("/api/v1/health", headers=wrong) for _ in range(8)))
    assert all(r.status == 401 for r in answers)
    refused = [r for r in answers if "Retry-After" in r.headers]
    assert refused and "too many wrong tokens" in (await refused[0].json())["message"]
    assert time.monotonic() - start >= 0.3
    # The right token still gets in (after its turn) and resets the address.
    await asyncio.sleep(0.5)
    assert (await client.get("/api/v1/health", headers={"Authorization": "Bearer s3cret"})).status == 200
    start = time.monotonic()
    for _ in range(3):  # free again: without the reset these would wait 0.25 + 0.4 + 0.4 s
        assert (await client.get("/api/v1/health", headers=wrong)).status == 401
    assert time.monotonic() - start < 0.9
    # The websocket's `hello` token counts the same way.
    for _ in range(4):
        ws = WsClient(await client.ws_connect(WS_PATH))
        event = await ws.hello(token="nope")
        assert event.type == "error" and event.code.value == "unauthorized"
    assert len(log_lines("wrong token from 127.0.0.1")) >= 11


async def test_a_websocket_that_does_not_authenticate_is_closed(make_client, log_lines):
    client = await make_client(token="s3cret", ws_auth_timeout_s=0.3)
    ws = await client.ws_connect(WS_PATH)
    start = time.monotonic()
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
    assert time.monotonic() - start < 4
    assert log_lines("no valid token within 0.3 s")
    # One that sends its token in time stays open past the deadline.
    ws = WsClient(await client.ws_connect(WS_PATH))
    assert (await ws.hello(token="s3cret")).type == "hello"
    await asyncio.sleep(0.5)
    await ws.send({"type": "ping"})
    assert (await ws.receive()).type == "pong"


async def test_pending_uploads_are_bounded_per_connection_and_in_total(make_client, log_lines):
    image = png_bytes()
    size = len(image)
    client = await make_client(max_upload_bytes_per_connection=3 * size, max_upload_bytes_total=5 * size)
    first = WsClient(await client.ws_connect(WS_PATH))
    await first.hello()
    for i in range(3):
        await first.upload(f"u{i}", image)
    await first.upload("u3", image)
    event = await first.receive()
    assert event.type == "error" and event.code.value == "too_large" and "this connection" in event.message
    await first.upload("u0", image)  # re-sending an id replaces it: no error
    second = WsClient(await client.ws_connect(WS_PATH))
    await second.hello()
    await second.upload("a", image)
    await second.upload("b", image)
    await second.upload("c", image)  # 3 + 3 > 5 in total
    event = await second.receive()
    assert event.type == "error" and event.code.value == "too_large" and "the server holds" in event.message
    # A submit consumes its uploads and frees their bytes for everyone.
    await first.send({"type": "submit", "request": tiny_request(mode="img2img"), "images": {"init": "u0"}})
    assert (await first.until("accepted"))[0].type == "accepted"
    await second.upload("c", image)
    await second.send({"type": "ping"})
    assert (await second.receive()).type == "pong"
    # Closing a connection frees its uploads (second holds 3, first 2 of the 5 in total).
    third = WsClient(await client.ws_connect(WS_PATH))
    await third.hello()
    await first.ws.close()
    await asyncio.sleep(0.1)
    for name in ("d", "e"):
        await third.upload(name, image)
    await third.send({"type": "ping"})
    assert (await third.receive()).type == "pong"


async def test_pending_uploads_expire(make_client, log_lines):
    client = await make_client(upload_ttl_s=0.2)
    ws = WsClient(await client.ws_connect(WS_PATH))
    await ws.hello()
    await ws.upload("old", png_bytes())
    await asyncio.sleep(0.5)
    await ws.send({"type": "submit", "request": tiny_request(mode="img2img"), "images": {"init": "old"}})
    event = await ws.receive()
    assert event.type == "error" and event.code.value == "missing_image" and "expired" in event.message
    assert log_lines("unused for 0.2 s")
    from latentbridge.server.uploads import UPLOADS_KEY

    assert client.server.app[UPLOADS_KEY].total == 0  # the sweep freed the bytes without any message
