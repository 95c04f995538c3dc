"""The Python SDK against the real server (real app, real tiny-model Engine, real TCP port)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from latentbridge.client import AsyncClient, Client, ImageFrame
from latentbridge.protocol import (
    BadImage,
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    GenerationRequest,
    LatentBridgeError,
    ProgressEvent,
    ResultEvent,
    StartedEvent,
)
from latentbridge.server.app import create_app
from latentbridge.settings import load_settings

SIZE = 64


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "bronze", "seed": 11, "steps": 3, "width": SIZE, "height": SIZE, **fields})


async def start_server(aiohttp_server, tmp_path, **overrides):
    settings = load_settings(environ={}, model="tiny", data_dir=tmp_path / "data", preview_interval_s=0.0,
                             max_steps=100, **overrides)
    server = await aiohttp_server(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    async with AsyncClient(url, token=overrides.get("token")) as client:
        for _ in range(600):
            if (await client.health())["model"]["state"] == "ready":
                break
            await asyncio.sleep(0.05)
    return url


@pytest.fixture
async def url(aiohttp_server, tmp_path):
    return await start_server(aiohttp_server, tmp_path)


async def first_progress(job) -> list:
    seen = []
    async for item in job:
        seen.append(item)
        if isinstance(item, ProgressEvent):
            return seen
    raise AssertionError(f"job ended before any progress: {seen}")


async def test_ws_job_stream_previews_and_http_transport_agree(url):
    async with AsyncClient(url) as client:
        hello = await client.connect()
        assert hello.model.name == "tiny" and hello.capabilities.limits.max_steps == 100
        job = await client.submit(request(steps=4))
        items = [item async for item in job]
        kinds = [type(i).__name__ if not isinstance(i, ImageFrame) else i.kind for i in items]
        assert isinstance(items[0], StartedEvent) and isinstance(items[-1], DoneEvent), kinds
        assert [i.step for i in items if isinstance(i, ProgressEvent)] == [1, 2, 3, 4]
        previews = [i for i in items if isinstance(i, ImageFrame) and i.kind == "preview"]
        assert previews and all(p.header.job_id == job.job_id and p.data[:3] == b"\xff\xd8\xff" for p in previews)
        result = next(i for i in items if isinstance(i, ResultEvent))
        assert result.seed == 11 and result.request.seed == 11
        (ws_png,) = job.images()
        assert pixels(ws_png).shape == (SIZE, SIZE, 3)

        progress, preview_headers = [], []
        pngs = await client.generate(request(steps=4), on_progress=progress.append,
                                     on_preview=lambda data, header: preview_headers.append(header))
        assert [p.step for p in progress] == [1, 2, 3, 4] and preview_headers
        assert np.array_equal(pixels(pngs[0]), pixels(ws_png))  # same request + seed → same image

        http_progress, http_previews = [], []
        (http_png,) = await client.generate(request(steps=4), on_progress=http_progress.append, transport="http",
                                            on_preview=lambda data, header: http_previews.append((data, header)))
        assert np.array_equal(pixels(http_png), pixels(ws_png))
        assert [p.step for p in http_progress] == [1, 2, 3, 4]
        # SSE previews come as base64 JSON; the SDK hands them over exactly like websocket ones.
        assert http_previews and all(d[:3] == b"\xff\xd8\xff" and h.kind == "preview" for d, h in http_previews)


async def test_inpaint_uploads_over_ws_and_http(url):
    init = Image.new("RGB", (SIZE, SIZE), (30, 120, 200))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    req = request(mode="inpaint", strength=0.9, mask={"blur": 0})
    async with AsyncClient(url) as client:
        (ws_png,) = await client.generate(req, init_image=png(init), mask=png(mask))
        (http_png,) = await client.generate(req, init_image=png(init), mask=png(mask), transport="http")
    for data in (ws_png, http_png):
        out = pixels(data)
        assert (out[:8] == (30, 120, 200)).all()  # outside the mask: the original pixels
        assert not (out[24:40, 24:40] == (30, 120, 200)).all()
    assert np.array_equal(pixels(ws_png), pixels(http_png))


async def test_sync_client_generate_health_models(url):
    def use_sync_client():
        steps = []
        with Client(url) as client:
            health = client.health()
            models = client.models()
            pngs = client.generate(request(steps=2, batch_size=2), on_progress=lambda p: steps.append(p.step))
            job_id = client.submit(request(steps=2, seed=5))
            waited = client.wait(job_id)
            fetched = client.result(job_id, 0)
        return health, models, pngs, steps, waited, fetched

    # The sync client blocks its caller; the server runs on this test's loop, so call it from a thread.
    health, models, pngs, steps, waited, fetched = await asyncio.to_thread(use_sync_client)
    assert health["model"]["state"] == "ready"
    assert models
    assert len(pngs) == 2 and steps and steps == sorted(steps)
    assert not np.array_equal(pixels(pngs[0]), pixels(pngs[1]))  # seeds 11 and 12
    assert waited == [fetched]


async def test_cancel_running_job(url):
    async with AsyncClient(url) as client:
        job = await client.submit(request(steps=100))
        await first_progress(job)
        await client.cancel(job.job_id)
        rest = [item async for item in job]
        assert isinstance(rest[-1], CancelledEvent)
        with pytest.raises(LatentBridgeError) as err:
            job.images()
        assert err.value.code is ErrorCode.cancelled
        status = await client.status(job.job_id)
        assert status.state.value == "cancelled"


async def test_attach_after_reconnect_and_fetch_results(url):
    first = AsyncClient(url)
    job = await first.submit(request(steps=8, seed=21))
    await first_progress(job)
    await first.close()  # the connection drops mid-job; the job goes on on the server

    async with AsyncClient(url) as second:
        attached = await second.attach(job.job_id)
        (png_bytes,) = await attached.wait()
        # A finished job: attaching again re-sends its results; HTTP serves the same bytes.
        again = await (await second.attach(job.job_id)).wait()
        assert again == [png_bytes]
        assert await second.result(job.job_id, 0) == png_bytes
        assert (await second.status(job.job_id)).result_count == 1


async def test_errors_are_typed(url):
    async with AsyncClient(url) as client:
        with pytest.raises(LatentBridgeError) as err:
            await client.submit(request(steps=120))  # valid for the protocol, above this server's limit
        assert err.value.code is ErrorCode.invalid_request and err.value.field == "steps"
        with pytest.raises(LatentBridgeError) as err:
            await client.submit(request(mode="inpaint"), init_image=png(Image.new("RGB", (SIZE, SIZE))))
        assert err.value.code is ErrorCode.missing_image and err.value.field == "mask"
        with pytest.raises(LatentBridgeError) as err:
            await client.generate(request(mode="img2img"), transport="http")
        assert err.value.code is ErrorCode.missing_image and err.value.field == "init_image"
        with pytest.raises(BadImage):
            await client.submit(request(mode="img2img"), init_image=b"not an image")
        with pytest.raises(LatentBridgeError) as err:
            await client.status("0" * 32)
        assert err.value.code is ErrorCode.unknown_job
        with pytest.raises(LatentBridgeError) as err:
            await (await client.attach("0" * 32)).wait()
        assert err.value.code is ErrorCode.unknown_job
        # The connection survives all of that.
        assert len(await client.generate(request(steps=2))) == 1


async def test_token_is_sent_and_required(aiohttp_server, tmp_path):
    url = await start_server(aiohttp_server, tmp_path, token="s3cret")
    async with AsyncClient(url) as anonymous:
        with pytest.raises(LatentBridgeError) as err:
            await anonymous.connect()
        assert err.value.code is ErrorCode.unauthorized
        with pytest.raises(LatentBridgeError) as err:
            await anonymous.health()
        assert err.value.code is ErrorCode.unauthorized
    async with AsyncClient(url, token="s3cret") as client:
        assert len(await client.generate(request(steps=2))) == 1
        assert len(await client.generate(request(steps=2), transport="http")) == 1


async def test_hello_model_follows_the_servers_model_events(aiohttp_server, tmp_path, monkeypatch):
    from latentbridge.protocol import ModelState
    from latentbridge.server import ws as ws_module
    from latentbridge.server.app import ENGINE_KEY

    monkeypatch.setattr(ws_module, "MODEL_WATCH_S", 0.01)
    settings = load_settings(environ={}, model="tiny", data_dir=tmp_path / "data")
    app = create_app(settings)
    server = await aiohttp_server(app)
    async with AsyncClient(str(server.make_url("")).rstrip("/")) as client:
        await client.connect()
        for _ in range(600):
            if client.hello.model.state is ModelState.ready:
                break
            await asyncio.sleep(0.05)
        app[ENGINE_KEY]._set_status(state=ModelState.downloading, progress=0.5)
        for _ in range(200):
            if client.hello.model.state is ModelState.downloading:
                break
            await asyncio.sleep(0.01)
        assert client.hello.model.state is ModelState.downloading and client.hello.model.progress == 0.5
