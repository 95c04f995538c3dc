"""The Python SDK's live sessions against the real server (real app, real tiny-model engine, a
real TCP port): frames and results, latest wins on the client side, settings changed without a
restart, typed errors that leave the session running, raw RGB, a dropped connection, the
blocking client."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from latentbridge.client import AsyncClient, Client, ConnectionLost, LiveResult
from latentbridge.protocol import BadImage, ControlUnit, ErrorCode, GenerationRequest, LatentBridgeError, LiveOptions
from latentbridge.server.app import JOBS_KEY, create_app

from server_helpers import GatedEngine

SIZE = 64


def png(color=(200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), color).save(out, format="PNG")
    return out.getvalue()


def live_request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"mode": "img2img", "prompt": "bronze", "width": SIZE, "height": SIZE, "strength": 0.5,
                                "seed": 5, **fields})


def rgb(result: LiveResult) -> np.ndarray:
    return np.frombuffer(result.data, np.uint8).reshape(result.height, result.width, 3)


@pytest.fixture
async def serve(aiohttp_server, make_settings, tiny_engine):
    """`serve(engine=None, **settings)` → (url, app) of a real server on a free port."""
    async def start(engine=None, **overrides):
        app = create_app(make_settings(**overrides), engine or tiny_engine)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/"), app

    return start


async def test_frames_come_back_as_results_and_an_update_rerenders_the_last_frame(serve):
    url, _app = await serve()
    async with AsyncClient(url) as client:
        session = await client.live_start(live_request(), LiveOptions(format="rgb"))
        assert session.request.sampler.value == "euler" and session.request.seed == 5  # the turbo preset applied
        assert session.decoder == "vae" and session.revision == 0
        number = await session.send_frame(init=png())
        first = await session.next_result(timeout=30)
        assert (first.frame, first.revision, first.width, first.height, first.format) == (number, 0, SIZE, SIZE, "rgb")
        assert first.timings is not None and first.timings.denoise is not None
        assert session.latest == first
        updated = await session.update(request=live_request(prompt="weathered verdigris"))
        assert updated.revision == 1 and session.revision == 1 and session.request.prompt == "weathered verdigris"
        again = await session.next_result(timeout=30)  # nothing new sent: the last frame, with the new prompt
        assert (again.frame, again.revision) == (number, 1)
        assert not np.array_equal(rgb(first), rgb(again))
        stopped = await session.stop()
        assert stopped.reason == "stopped" and stopped.frames.rendered == 2 and stopped.frames.received == 1
        assert not session.running and await session.stop() == stopped  # stopping twice is harmless
        with pytest.raises(LatentBridgeError) as ended:
            await session.send_frame(init=png())
        assert ended.value.code.value == "unknown_job"
        with pytest.raises(LatentBridgeError):
            await session.next_result(timeout=1)  # the end stays visible
        assert [r async for r in session] == []


async def test_a_burst_while_one_frame_renders_sends_only_the_newest(serve, tiny_engine):
    """Latest wins before the network: with frame 0 rendering, 50 more frames leave the client as
    one (the newest); the other 49 never cost the server anything."""
    engine = GatedEngine(tiny_engine)
    url, app = await serve(engine=engine)
    async with AsyncClient(url) as client:
        session = await client.live_start(live_request(), LiveOptions(format="rgb"))
        engine.gate.clear()
        await session.send_frame(init=png())
        assert await asyncio.to_thread(engine.entered.wait, 30)
        for i in range(1, 51):
            await session.send_frame(init=png(color=(i * 5, 0, 0)))
        assert (session.sent, session.dropped) == (1, 49)
        engine.gate.set()
        results = [await session.next_result(timeout=30), await session.next_result(timeout=30)]
        assert [r.frame for r in results] == [0, 50]
        stopped = await session.stop()
        assert session.sent == 2
        assert stopped.frames.model_dump() == {"received": 2, "rendered": 2, "dropped": 0, "stale_rendered": 0,
                                               "failed": 0}
    assert app[JOBS_KEY].live.sessions == {}


async def test_errors_are_typed_and_the_session_carries_on(serve):
    url, _app = await serve()
    async with AsyncClient(url) as client:
        with pytest.raises(LatentBridgeError) as refused:
            await client.live_start(live_request(mode="inpaint"))
        assert (refused.value.code.value, refused.value.field) == ("unsupported", "request.mode")
        controlled = live_request(mode="txt2img", controls=[ControlUnit(type="depth", model="tiny-controlnet")])
        async with await client.live_start(controlled, LiveOptions(format="png")) as session:
            with pytest.raises(BadImage):
                await session.send_frame(init=b"not an image")  # refused here, before anything is sent
            with pytest.raises(BadImage):
                await session.send_frame()
            await session.send_frame(init=png())  # an init part this session does not take: the server says so
            for _ in range(200):
                if session.errors:
                    break
                await asyncio.sleep(0.02)
            assert [(e.code.value, e.field, e.job_id) for e in session.errors] == [
                ("missing_image", "header.parts", session.job_id)]
            # The refusal answered the frame: the next one goes out at once and renders.
            number = await session.send_frame(controls={0: png(color=(255, 255, 255))})
            result = await session.next_result(timeout=30)
            assert result.frame == number and result.format == "png"
            assert Image.open(io.BytesIO(result.data)).size == (SIZE, SIZE)
            with pytest.raises(LatentBridgeError) as bad_update:
                await session.update(request=controlled.model_copy(update={"width": 4096, "height": 4096}))
            assert bad_update.value.code.value == "too_large"
            assert session.running and session.revision == 0  # the old settings stay
        # The refused frame never entered the session: only the rendered one counts.
        assert session.stopped is not None and session.stopped.frames.model_dump() == {
            "received": 1, "rendered": 1, "dropped": 0, "stale_rendered": 0, "failed": 0}


async def test_raw_rgb_frames_and_a_size_that_does_not_match(serve):
    url, _app = await serve()
    async with AsyncClient(url) as client:
        async with await client.live_start(live_request(), LiveOptions(format="jpeg")) as session:
            pixels = np.full((SIZE, SIZE, 3), 120, np.uint8).tobytes()
            with pytest.raises(BadImage) as short:
                await session.send_frame(init=pixels[:-3], size=(SIZE, SIZE))
            assert short.value.field == "init"
            number = await session.send_frame(init=pixels, size=(SIZE, SIZE))
            result = await session.next_result(timeout=30)
            assert result.frame == number and result.format == "jpeg" and result.data[:3] == b"\xff\xd8\xff"


async def test_a_dropped_connection_ends_the_session_on_both_sides(serve):
    url, app = await serve()
    client = AsyncClient(url)
    session = await client.live_start(live_request(), LiveOptions(format="rgb"))
    await session.send_frame(init=png())
    await session.next_result(timeout=30)
    await client._ws.close()  # the link drops (as a server restart or a network failure would)
    with pytest.raises(ConnectionLost):
        await session.next_result(timeout=30)
    with pytest.raises(ConnectionLost):
        await session.send_frame(init=png())
    for _ in range(200):
        if not app[JOBS_KEY].live.sessions:
            break
        await asyncio.sleep(0.02)
    assert app[JOBS_KEY].live.sessions == {}
    again = await client.live_start(live_request(), LiveOptions(format="rgb"))  # a new session on a new link
    await again.send_frame(init=png())
    assert (await again.next_result(timeout=30)).frame == 0
    await client.close()


async def test_the_blocking_client(serve):
    url, _app = await serve()

    def use_blocking_client():
        with Client(url) as client:
            with client.live_start(live_request(), LiveOptions(format="rgb")) as session:
                frames = [session.send_frame(init=png(color=(c, 90, 20))) for c in (30, 200)]
                results = [session.next_result(30)]
                if results[0].frame != frames[-1]:
                    results.append(session.next_result(30))
                updated = session.update(live=LiveOptions(format="png", preset="lcm"))
                rerendered = session.next_result(30)
            return frames, results, updated, rerendered, session.session.stopped

    frames, results, updated, rerendered, stopped = await asyncio.to_thread(use_blocking_client)
    assert results[-1].frame == frames[-1]  # the newest frame always renders
    assert updated.revision == 1 and updated.live.format == "png"
    assert rerendered.revision == 1 and rerendered.format == "png"
    assert stopped is not None and stopped.reason == "stopped"


class FailingLiveEngine(GatedEngine):
    """Every live frame fails the way settings that cannot render fail (not the frame's fault)."""

    def live_frame(self, *args, **kwargs):
        raise LatentBridgeError("the model cannot render this", field="request.model", code=ErrorCode.model_not_ready)


async def test_a_session_the_server_ends_as_failed_raises_its_error(serve, tiny_engine):
    url, _app = await serve(engine=FailingLiveEngine(tiny_engine))
    async with AsyncClient(url) as client:
        session = await client.live_start(live_request(), LiveOptions(format="rgb"))
        await session.send_frame(init=png())
        with pytest.raises(LatentBridgeError) as failed:
            async for _result in session:
                pass
        assert (failed.value.code.value, failed.value.field) == ("model_not_ready", "request.model")
        assert session.stopped is not None and session.stopped.reason == "failed"
        assert session.stopped.frames.failed == 1 and not session.running
        with pytest.raises(LatentBridgeError):
            await session.send_frame(init=png())
