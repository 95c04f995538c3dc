"""Live sessions over the real websocket, on the real engine (tiny model): latest wins, stop/start,
settings changed mid-session, disconnects, several clients, and the queue's fairness."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from latentbridge.protocol import WS_PATH, BinaryHeader, encode_binary_frame
from latentbridge.server.app import JOBS_KEY

from server_helpers import GatedEngine, WsClient, png_bytes, tiny_request

LIVE_REQUEST = {"mode": "img2img", "prompt": "bronze", "width": 64, "height": 64, "strength": 0.5, "seed": 5}


async def start(ws: WsClient, request=None, **live) -> object:
    await ws.send({"type": "live_start", "client_ref": "lv", "request": request or LIVE_REQUEST,
                   "live": {"format": "rgb", **live}})
    started = await ws.receive()
    assert started.type == "live_started", started
    return started


async def send_frame(ws: WsClient, session: str, frame: int, color=(200, 40, 40), parts=None) -> None:
    parts = parts or {"init": png_bytes(color=color)}
    header = BinaryHeader(kind="live_frame", format="png", job_id=session, frame=frame,
                          parts=[{"role": role, "bytes": len(data)} for role, data in parts.items()])
    await ws.ws.send_bytes(encode_binary_frame(header, b"".join(parts.values())))


async def next_result(ws: WsClient, timeout: float = 30.0):
    """The next live_result frame (header, pixels), skipping nothing else silently."""
    item = await ws.receive(timeout)
    assert isinstance(item, tuple), item
    header, data = item
    assert header.kind == "live_result", header
    return header, np.frombuffer(data, np.uint8).reshape(header.height, header.width, 3)


async def stop(ws: WsClient, session: str):
    await ws.send({"type": "live_stop", "job_id": session})
    stopped, _ = await ws.until("live_stopped", session)
    return stopped


@pytest.fixture
async def gated(make_client, tiny_engine):
    engine = GatedEngine(tiny_engine)
    client = await make_client(engine=engine)
    return engine, client


async def test_a_frame_comes_back_as_a_live_result(ws_connect):
    ws = await ws_connect()
    started = await start(ws)
    request = started.request
    # The turbo preset: one denoising step at strength 0.5 → a schedule of 2, euler, trailing, no CFG.
    assert (request.sampler.value, request.schedule.value, request.guidance, request.steps) == ("euler", "trailing", 0.0, 2)
    assert request.seed == 5 and started.client_ref == "lv" and started.revision == 0
    assert started.decoder == "vae"  # no TAESD configured: the model's VAE, and the server says so
    await send_frame(ws, started.job_id, 1)
    header, pixels = await next_result(ws)
    assert (header.frame, header.revision, header.width, header.height) == (1, 0, 64, 64)
    assert all(getattr(header.timings, stage) is not None for stage in ("wait", "decode", "denoise", "vae", "encode"))
    assert pixels.shape == (64, 64, 3)
    stopped = await stop(ws, started.job_id)
    assert stopped.reason == "stopped"
    assert stopped.frames.model_dump() == {"received": 1, "rendered": 1, "dropped": 0, "stale_rendered": 0, "failed": 0}


async def test_a_still_scene_gives_a_still_image(ws_connect):
    """The seed is fixed for the session: the same frame renders the same pixels every time."""
    ws = await ws_connect()
    started = await start(ws)
    results = []
    for frame in (1, 2, 3):
        await send_frame(ws, started.job_id, frame)
        results.append((await next_result(ws))[1])
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[1], results[2])
    await send_frame(ws, started.job_id, 4, color=(20, 200, 90))
    assert not np.array_equal((await next_result(ws))[1], results[0])  # the scene changed: so does the image


async def test_a_burst_of_50_frames_while_one_renders_renders_at_most_2(gated):
    engine, client = gated
    ws = WsClient(await client.ws_connect(WS_PATH))
    started = await start(ws)
    engine.gate.clear()
    await send_frame(ws, started.job_id, 0)
    assert await asyncio.to_thread(engine.entered.wait, 30)  # frame 0 is rendering (held at the gate)
    for frame in range(1, 51):
        await send_frame(ws, started.job_id, frame, color=(frame * 5, 0, 0))
    await ws.send({"type": "ping"})
    assert (await ws.receive()).type == "pong"  # every frame of the burst has reached the server
    engine.gate.set()
    first, _ = await next_result(ws)
    second, _ = await next_result(ws)
    assert (first.frame, second.frame) == (0, 50)  # the one rendering, then the newest: 1..49 were stale
    stopped = await stop(ws, started.job_id)
    assert stopped.frames.model_dump() == {"received": 51, "rendered": 2, "dropped": 49, "stale_rendered": 0,
                                           "failed": 0}
    assert len([s for s, _ in engine.rendered if s == started.job_id]) == 2


async def test_stop_then_start_again_and_stopping_twice(ws_connect):
    ws = await ws_connect()
    first = await start(ws)
    await send_frame(ws, first.job_id, 1)
    await next_result(ws)
    await stop(ws, first.job_id)
    await ws.send({"type": "live_stop", "job_id": first.job_id})
    error = await ws.receive()
    assert error.type == "error" and error.code.value == "unknown_job" and error.field == "job_id"
    await send_frame(ws, first.job_id, 2)
    assert (await ws.receive()).code.value == "unknown_job"  # a frame for a stopped session
    second = await start(ws)
    assert second.job_id != first.job_id
    await send_frame(ws, second.job_id, 1)
    assert (await next_result(ws))[0].frame == 1


async def test_changing_the_prompt_mid_session_renders_the_last_frame_again(ws_connect):
    ws = await ws_connect()
    started = await start(ws)
    await send_frame(ws, started.job_id, 7)
    _, before = await next_result(ws)
    await ws.send({"type": "live_update", "job_id": started.job_id,
                   "request": {**LIVE_REQUEST, "prompt": "weathered verdigris", "seed": None}})
    updated = await ws.receive()
    assert updated.type == "live_updated" and updated.revision == 1
    assert updated.request.prompt == "weathered verdigris" and updated.request.seed == 5  # the seed stays
    header, after = await next_result(ws)  # no new frame was sent: the last one is rendered again
    assert (header.frame, header.revision) == (7, 1)
    assert not np.array_equal(before, after)
    await ws.send({"type": "live_update", "job_id": started.job_id, "live": {"preset": "lcm", "format": "png"}})
    updated = await ws.receive()
    assert updated.revision == 2 and updated.request.sampler.value == "lcm" and updated.live.format == "png"
    item = await ws.receive()
    assert isinstance(item, tuple) and item[0].format == "png" and item[0].revision == 2


async def test_disconnecting_mid_session_ends_it_and_frees_everything(gated, tiny_engine):
    engine, client = gated
    jobs = client.server.app[JOBS_KEY]
    ws = WsClient(await client.ws_connect(WS_PATH))
    started = await start(ws)
    engine.gate.clear()
    await send_frame(ws, started.job_id, 1)
    assert await asyncio.to_thread(engine.entered.wait, 30)
    await send_frame(ws, started.job_id, 2)  # pending behind the rendering one
    session = jobs.live.sessions[started.job_id]
    await ws.ws.close()
    for _ in range(200):
        if started.job_id not in jobs.live.sessions:
            break
        await asyncio.sleep(0.02)
    assert started.job_id not in jobs.live.sessions
    assert session.stopped and session.pending is None and session.newest is None
    assert session.cancel_event is None or session.cancel_event.is_set()  # the rendering frame was told to stop
    engine.gate.set()
    other = WsClient(await client.ws_connect(WS_PATH))  # the server serves on
    second = await start(other)
    await send_frame(other, second.job_id, 1)
    assert (await next_result(other))[0].frame == 1
    await asyncio.sleep(0.2)  # the engine dropped the first session's warm state on its worker thread
    assert started.job_id not in tiny_engine._live._warm
    assert session.subscription.finished
    assert len([s for s, _ in engine.rendered if s == started.job_id]) == 1  # frame 2 never rendered


async def test_two_live_clients_at_once(ws_connect):
    a, b = await ws_connect(), await ws_connect()
    sa = await start(a)
    sb = await start(b, request={**LIVE_REQUEST, "prompt": "marble"})
    for frame in range(1, 4):
        await send_frame(a, sa.job_id, frame)
        await send_frame(b, sb.job_id, frame, color=(10, 10, 220))
        ha, _ = await next_result(a)
        hb, _ = await next_result(b)
        assert ha.job_id == sa.job_id and hb.job_id == sb.job_id and ha.frame == hb.frame == frame
    await a.send({"type": "live_stop", "job_id": sb.job_id})  # another connection's session: not yours
    assert (await a.receive()).code.value == "unknown_job"
    assert (await stop(b, sb.job_id)).frames.rendered == 3
    assert (await stop(a, sa.job_id)).frames.rendered == 3


async def test_a_queued_job_runs_between_live_frames(gated):
    """Fairness: a client streaming live frames does not starve another client's job."""
    engine, client = gated
    live, other = WsClient(await client.ws_connect(WS_PATH)), WsClient(await client.ws_connect(WS_PATH))
    started = await start(live)
    engine.gate.clear()
    await send_frame(live, started.job_id, 1)
    assert await asyncio.to_thread(engine.entered.wait, 30)
    await other.send({"type": "submit", "request": tiny_request(), "priority": "normal"})
    accepted = await other.receive()
    await send_frame(live, started.job_id, 2)  # an interactive live frame waits too
    engine.gate.set()
    done, _ = await other.until("done", accepted.job_id)
    frames = [h.frame for h, _ in [await next_result(live), await next_result(live)]]
    assert frames == [1, 2] and done.count == 1
    # The job (normal priority) ran before live frame 2 (interactive): live frames and queued jobs take turns.
    assert engine.order == ["live", "job", "live"]


async def test_live_control_units_take_their_maps_with_each_frame(make_client, tiny_engine):
    client = await make_client()
    ws = WsClient(await client.ws_connect(WS_PATH))
    request = {**LIVE_REQUEST, "mode": "txt2img", "controls": [{"type": "depth", "model": "tiny-controlnet"}]}
    started = await start(ws, request=request)
    await send_frame(ws, started.job_id, 1, parts={"control.0": png_bytes(color=(255, 255, 255))})
    header, _ = await next_result(ws)
    assert header.frame == 1
    await send_frame(ws, started.job_id, 2)  # an init part this session does not take
    error = await ws.receive()
    assert error.type == "error" and error.code.value == "missing_image" and error.field == "header.parts"
    assert error.job_id == started.job_id  # a refused frame names its session


async def test_an_update_that_changes_the_parts_waits_for_a_frame_of_the_new_shape(ws_connect):
    """Adding a control unit mid-session: the last frame (init only) cannot render with it, so
    nothing renders until the client sends a frame with the new parts; no error either."""
    ws = await ws_connect()
    started = await start(ws)
    await send_frame(ws, started.job_id, 1)
    await next_result(ws)
    controlled = {**LIVE_REQUEST, "controls": [{"type": "depth", "model": "tiny-controlnet"}]}
    await ws.send({"type": "live_update", "job_id": started.job_id, "request": controlled})
    assert (await ws.receive()).type == "live_updated"
    await send_frame(ws, started.job_id, 2, parts={"init": png_bytes(), "control.0": png_bytes(color=(255, 255, 255))})
    header, _ = await next_result(ws)  # the next thing to arrive is frame 2's result, not an error about frame 1
    assert (header.frame, header.revision) == (2, 1)
    stopped = await stop(ws, started.job_id)
    assert stopped.frames.failed == 0 and stopped.frames.rendered == 2


async def test_bad_live_input_gets_typed_errors_and_the_session_carries_on(ws_connect):
    ws = await ws_connect()
    await ws.send({"type": "live_start", "request": {**LIVE_REQUEST, "mode": "inpaint"}})
    error = await ws.receive()
    assert (error.code.value, error.field) == ("unsupported", "request.mode")
    await ws.send({"type": "live_start", "request": {**LIVE_REQUEST, "mode": "txt2img"}})
    assert (await ws.receive()).field == "request.mode"
    await ws.send({"type": "live_start", "request": {**LIVE_REQUEST, "width": 8192}})
    assert (await ws.receive()).code.value == "invalid_request"
    started = await start(ws)
    await ws.ws.send_bytes(encode_binary_frame(BinaryHeader(kind="live_frame", format="png", job_id=started.job_id,
                                                            frame=1, parts=[{"role": "init", "bytes": 9}]), b"not a png"))
    error = await ws.receive()
    assert (error.type, error.code.value, error.job_id) == ("error", "bad_image", started.job_id)
    await ws.ws.send_bytes(encode_binary_frame(BinaryHeader(kind="live_frame", format="png", job_id=started.job_id,
                                                            frame=2, parts=[{"role": "init", "bytes": 99}]), b"short"))
    error = await ws.receive()
    assert (error.code.value, error.job_id) == ("bad_message", started.job_id)
    await send_frame(ws, started.job_id, 2)
    assert (await next_result(ws))[0].frame == 2  # the session carries on
    await send_frame(ws, started.job_id, 2)
    error = await ws.receive()
    assert (error.code.value, error.field) == ("invalid_request", "header.frame")  # frame numbers increase
    stopped = await stop(ws, started.job_id)
    assert stopped.frames.failed == 1 and stopped.frames.rendered == 1


async def test_raw_rgb_frames(ws_connect):
    ws = await ws_connect()
    started = await start(ws)
    pixels = np.full((64, 64, 3), 120, np.uint8).tobytes()
    header = BinaryHeader(kind="live_frame", format="rgb", job_id=started.job_id, frame=1, width=64, height=64,
                          parts=[{"role": "init", "bytes": len(pixels)}])
    await ws.ws.send_bytes(encode_binary_frame(header, pixels))
    assert (await next_result(ws))[0].frame == 1


async def test_session_limits_per_connection(make_client):
    client = await make_client(live_sessions_per_client=1)
    ws = WsClient(await client.ws_connect(WS_PATH))
    await start(ws)
    await ws.send({"type": "live_start", "request": LIVE_REQUEST})
    error = await ws.receive()
    assert error.type == "error" and error.code.value == "queue_full"
    off = WsClient(await (await make_client(live_sessions=0)).ws_connect(WS_PATH))
    await off.send({"type": "live_start", "request": LIVE_REQUEST})
    assert (await off.receive()).code.value == "unsupported"


def test_a_runner_without_a_local_engine_refuses_live_sessions_naming_the_field():
    """Ray Serve replicas (cluster.runner) have no live path: the start is refused, typed."""
    from latentbridge.jobs.live import LiveBoard
    from latentbridge.protocol import GenerationRequest, LiveOptions, Unsupported
    from latentbridge.settings import Settings

    board = LiveBoard(object(), Settings(), wake=lambda: None, call=lambda *a: None, on_worker=lambda fn: None,
                      enabled=False)
    with pytest.raises(Unsupported) as refused:
        board.start("me", GenerationRequest(prompt="x", width=64, height=64), LiveOptions())
    assert refused.value.field == "type" and "--ray" in str(refused.value) and not board.sessions
