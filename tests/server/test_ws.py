"""Websocket flows against the real app and the real engine on the tiny model."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
from aiohttp import WSCloseCode, WSMsgType
from PIL import Image

from latentbridge import images
from latentbridge.engine import Engine
from latentbridge.protocol import WS_PATH, ErrorCode, ModelState
from latentbridge.settings import Settings

from server_helpers import WsClient, png_bytes, tiny_request

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


async def test_hello_reports_capabilities_and_model(ws_connect):
    ws = await ws_connect()
    hello = await ws.hello()
    assert hello.type == "hello" and hello.protocol == 1
    assert hello.model.state.value == "ready" and hello.model.name == "tiny"
    assert "inpaint" in [m.value for m in hello.capabilities.modes]
    assert hello.capabilities.limits.max_steps == 150
    await ws.send({"type": "ping"})
    assert (await ws.receive()).type == "pong"


async def test_capabilities_follow_the_loaded_family(make_client):
    """A flow-matching model (SD3) offers only its samplers and no seamless tiling."""
    sd3 = Engine(Settings(model="tiny-sd3"))
    sd3.load()
    client = await make_client(engine=sd3, model="tiny-sd3")
    ws = WsClient(await client.ws_connect(WS_PATH))
    hello = await ws.hello()
    assert hello.model.family == "sd3"
    assert [s.value for s in hello.capabilities.samplers] == ["euler", "euler_a"]
    assert [s.value for s in hello.capabilities.seamless] == ["none"]
    sd1 = await (await make_client()).ws_connect(WS_PATH)
    sd1_hello = await WsClient(sd1).hello()
    assert len(sd1_hello.capabilities.samplers) >= 9 and len(sd1_hello.capabilities.seamless) == 4


async def test_model_state_changes_are_announced(make_client, monkeypatch):
    """A download's progress (and the end of it) reaches every greeted client as `model` events."""
    from latentbridge.server import ws as ws_module

    monkeypatch.setattr(ws_module, "MODEL_WATCH_S", 0.01)
    engine = Engine(Settings(model="tiny"))
    client = await make_client(engine=engine)
    first, second = WsClient(await client.ws_connect(WS_PATH)), WsClient(await client.ws_connect(WS_PATH))
    for ws in (first, second):
        hello = await ws.hello()
        while hello.model.state.value != "ready":  # the server loads its model in the background
            hello = await ws.receive()
            assert hello.type == "model"
    engine._set_status(name="acme/big-model", state=ModelState.downloading, progress=0.42)
    for ws in (first, second):
        event = await ws.receive()
        assert event.type == "model" and event.model.state is ModelState.downloading and event.model.progress == 0.42
    engine._set_status(state=ModelState.ready, progress=None)
    assert (await first.receive()).model.state is ModelState.ready


async def test_txt2img_flow_with_previews_and_result(ws_connect):
    ws = await ws_connect()
    await ws.hello()
    await ws.send({"type": "submit", "client_ref": "r1", "request": tiny_request(steps=3, seed=11)})
    accepted = await ws.receive()
    assert accepted.type == "accepted" and accepted.client_ref == "r1" and accepted.position == 0
    done, seen = await ws.until("done", accepted.job_id)
    assert done.count == 1
    types = [getattr(s, "type", None) or s[0].kind for s in seen]
    assert types[0] == "started" and seen[0].seed == 11
    assert [s.step for s in seen if getattr(s, "type", None) == "progress"] == [1, 2, 3]
    previews = [s for s in seen if isinstance(s, tuple) and s[0].kind == "preview"]
    assert previews, "previews arrive as binary frames"
    head, jpeg = previews[-1]
    assert head.job_id == accepted.job_id and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    result_event = next(s for s in seen if getattr(s, "type", None) == "result")
    head, png = next(s for s in seen if isinstance(s, tuple) and s[0].kind == "result")
    assert (head.index, head.width, head.height) == (0, 64, 64)
    assert result_event.seed == 11 and result_event.request.seed == 11
    assert images.read_png_request(png) == result_event.request  # the PNG regenerates itself


async def test_raw_rgb_previews_when_asked(ws_connect):
    """`preview.format = rgb`: raw rows, top first, sized as the header says (no decode needed)."""
    ws = await ws_connect()
    await ws.hello()
    request = tiny_request(steps=2, preview={"decoder": "vae", "max_size": 48, "format": "rgb"})
    await ws.send({"type": "submit", "request": request})
    accepted = await ws.receive()
    _, seen = await ws.until("done", accepted.job_id)
    previews = [s for s in seen if isinstance(s, tuple) and s[0].kind == "preview"]
    assert previews
    head, raw = previews[-1]
    assert (head.format, head.width, head.height) == ("rgb", 48, 48) and len(raw) == 48 * 48 * 3
    _, result_png = next(s for s in seen if isinstance(s, tuple) and s[0].kind == "result")
    final = np.asarray(Image.open(io.BytesIO(result_png)).convert("RGB").resize((48, 48), Image.Resampling.BILINEAR), np.float32)
    last = np.frombuffer(raw, np.uint8).reshape(48, 48, 3).astype(np.float32)
    assert np.abs(final - last).mean() < 8  # the last VAE preview is the final image, rows top first


async def test_inpaint_with_uploaded_vector_frames(ws_connect):
    ws = await ws_connect()
    await ws.hello()
    for name in ("upload_init", "upload_mask"):  # the shared vectors, byte for byte
        await ws.ws.send_bytes((VECTORS / "binary" / f"{name}.bin").read_bytes())
    submit = json.loads((VECTORS / "client" / "submit_inpaint.json").read_text())
    submit["request"]["steps"] = 2
    await ws.send(submit)
    accepted = await ws.receive()
    assert accepted.type == "accepted", accepted
    done, seen = await ws.until("done", accepted.job_id)
    head, png = next(s for s in seen if isinstance(s, tuple) and s[0].kind == "result")
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    # Uploads are consumed by the submit that names them.
    await ws.send(submit)
    error = await ws.receive()
    assert error.type == "error" and error.code is ErrorCode.missing_image and error.field == "images.init"


async def test_cancel_running_and_queued_two_clients(client, ws_connect):
    a, b = await ws_connect(), await ws_connect()
    await a.hello()
    await b.hello()
    await a.send({"type": "submit", "request": tiny_request(steps=150)})
    long_job = (await a.receive()).job_id
    await b.send({"type": "submit", "request": tiny_request(steps=2)})
    queued = await b.receive()
    assert queued.type == "accepted" and queued.position == 0
    await a.until("progress", long_job)  # it is running
    await b.send({"type": "cancel", "job_id": queued.job_id})
    await b.until("cancelled", queued.job_id)
    await a.send({"type": "cancel", "job_id": long_job})
    await a.until("cancelled", long_job)
    # Both clients keep working; b submits again and gets its result.
    await b.send({"type": "submit", "request": tiny_request()})
    job = (await b.receive()).job_id
    await b.until("done", job)
    status = await (await client.get(f"/api/v1/jobs/{long_job}")).json()
    assert status["state"] == "cancelled"


async def test_reconnect_and_attach(client, ws_connect):
    ws = await ws_connect()
    await ws.hello()
    await ws.send({"type": "submit", "request": tiny_request(steps=6)})
    job_id = (await ws.receive()).job_id
    await ws.ws.close()  # drop the connection mid-job: the job carries on
    again = await ws_connect()
    await again.hello()
    await again.send({"type": "attach", "job_id": job_id})
    status = await again.receive()
    assert status.type == "status" and status.job_id == job_id
    done, seen = await again.until("done", job_id)
    assert any(isinstance(s, tuple) and s[0].kind == "result" for s in seen)
    # Attaching to a finished job re-sends its result and end.
    third = await ws_connect()
    await third.send({"type": "attach", "job_id": job_id})
    assert (await third.receive()).state.value == "done"
    result = await third.receive()
    assert result.type == "result"
    head, png = await third.receive()
    assert head.kind == "result" and images.read_png_request(png).seed == 7
    assert (await third.receive()).type == "done"
    await third.send({"type": "attach", "job_id": "0" * 32})
    error = await third.receive()
    assert error.code is ErrorCode.unknown_job and error.job_id == "0" * 32 and error.field == "job_id"
    await third.send({"type": "cancel", "job_id": "1" * 32})
    error = await third.receive()
    assert error.code is ErrorCode.unknown_job and error.job_id == "1" * 32


async def test_queue_full_is_an_error_event(make_client):
    client = await make_client(max_queue=1)
    ws = WsClient(await client.ws_connect("/api/v1/ws"))
    await ws.send({"type": "submit", "request": tiny_request(steps=150)})
    running = (await ws.receive()).job_id
    await ws.until("started", running)
    await ws.send({"type": "submit", "request": tiny_request()})
    queued = (await ws.receive()).job_id
    await ws.send({"type": "submit", "request": tiny_request()})
    error = await ws.receive()
    assert error.type == "error" and error.code is ErrorCode.queue_full
    for job in (queued, running):
        await ws.send({"type": "cancel", "job_id": job})
    await ws.until("cancelled", running)


async def test_bad_frames_give_typed_errors_and_the_server_still_serves(make_client):
    client = await make_client(max_message_bytes=256 * 1024, max_pixels=128 * 128)
    ws = WsClient(await client.ws_connect("/api/v1/ws"))
    index = json.loads((VECTORS / "invalid" / "index.json").read_text())
    for name, expected in sorted(index.items()):
        data = (VECTORS / "invalid" / name).read_bytes()
        if name.endswith(".bin"):
            await ws.ws.send_bytes(data)
        else:
            await ws.ws.send_str(data.decode())
        error = await ws.receive()
        assert error.type == "error" and error.code.value == expected["code"], (name, error)
        if "field" in expected:
            assert error.field == expected["field"], name

    async def submit_with(upload: bytes, mask: bytes | None = None, **request):
        await ws.upload("i", upload)
        images_map = {"init": "i"}
        if mask is not None:
            await ws.upload("m", mask)
            images_map["mask"] = "m"
        await ws.send({"type": "submit", "request": tiny_request(**request), "images": images_map})
        return await ws.receive()

    good = png_bytes()
    truncated = await submit_with(good[: len(good) // 2], mode="img2img")
    assert truncated.code is ErrorCode.bad_image and truncated.field == "images.init"
    corrupt = await submit_with(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, mode="img2img")
    assert corrupt.code is ErrorCode.bad_image
    mismatch = await submit_with(good, png_bytes((32, 32), mode="L"), mode="inpaint")
    assert mismatch.code is ErrorCode.bad_image and mismatch.field == "mask"
    huge = await submit_with(png_bytes((256, 256)), mode="img2img")
    assert huge.code is ErrorCode.too_large
    await ws.send({"type": "submit", "request": tiny_request(mode="img2img")})
    assert (await ws.receive()).code is ErrorCode.missing_image
    await ws.send({"type": "submit", "request": tiny_request(width=512, height=512)})
    assert (await ws.receive()).code is ErrorCode.too_large
    await ws.send({"type": "submit", "request": tiny_request(model="../../etc/passwd")})
    error = await ws.receive()
    assert error.code is ErrorCode.unknown_model and error.field == "model"
    await ws.send({"type": "hello", "protocol": 99})
    assert (await ws.receive()).field == "protocol"
    await ws.ws.send_bytes(b"\x00\x00\x00\x30" + b'{"kind":"result","format":"png","job_id":"x"}   ')
    assert (await ws.receive()).field == "header.kind"  # clients may not send result frames

    # Still serving on the same connection.
    await ws.send({"type": "submit", "request": tiny_request()})
    job = (await ws.receive()).job_id
    await ws.until("done", job)

    # A message over the size limit closes that connection (1009) ...
    await ws.ws.send_str("x" * (300 * 1024))
    closed = await ws.receive()
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
    # ... and the server keeps serving others.
    other = WsClient(await client.ws_connect("/api/v1/ws"))
    assert (await other.hello()).type == "hello"


async def test_shutdown_closes_with_going_away(make_client):
    client = await make_client()
    ws = await client.ws_connect("/api/v1/ws")
    await client.server.app.shutdown()
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == WSCloseCode.GOING_AWAY
