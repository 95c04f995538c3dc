"""HTTP API flows against the real app and the real engine on the tiny model."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
from PIL import Image
from server_helpers import png_bytes, tiny_request

from latentbridge import images
from latentbridge.protocol import parse_server_event
from latentbridge.server import create_app

CLIENT_HEADER = {"X-LatentBridge-Client": "tests"}


async def sse_events(client, job_id: str) -> list:
    resp = await client.get(f"/api/v1/jobs/{job_id}/events")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            events.append(parse_server_event(line[6:]))
    return events


async def test_submit_json_events_result_history(client):
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(steps=3, batch_size=2)})
    assert resp.status == 202, await resp.text()
    accepted = await resp.json()
    job_id = accepted["job_id"]
    assert resp.headers["Location"] == f"/api/v1/jobs/{job_id}"
    events = await sse_events(client, job_id)
    types = [e.type for e in events]
    assert types[-1] == "done" and types.count("result") == 2 and "progress" in types
    previews = [e for e in events if e.type == "preview"]
    assert previews and Image.open(io.BytesIO(base64.b64decode(previews[0].data))).format == "JPEG"
    results = [e for e in events if e.type == "result"]
    png = await (await client.get(results[1].url)).read()
    assert images.read_png_request(png) == results[1].request and results[1].seed == 8
    status = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert status["state"] == "done" and status["result_count"] == 2
    history = await (await client.get("/api/v1/jobs?limit=5")).json()
    assert history["jobs"][0]["job_id"] == job_id
    # The events of a finished job replay its results and end.
    replay = await sse_events(client, job_id)
    assert [e.type for e in replay] == ["result", "result", "done"]


async def test_multipart_img2img_and_cancel(client):
    form = aiohttp.FormData()
    form.add_field("request", json.dumps(tiny_request(mode="img2img", strength=0.5)), content_type="application/json")
    form.add_field("init_image", png_bytes(), filename="init.png", content_type="image/png")
    resp = await client.post("/api/v1/jobs", data=form, headers=CLIENT_HEADER)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    events = await sse_events(client, job_id)
    assert events[-1].type == "done"
    # Cancel a long job over HTTP.
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(steps=150)})
    long_id = (await resp.json())["job_id"]
    cancel = await (await client.post(f"/api/v1/jobs/{long_id}/cancel")).json()
    assert cancel["cancelled"] is True
    events = await sse_events(client, long_id)
    assert events[-1].type == "cancelled"
    assert (await client.post(f"/api/v1/jobs/{'0' * 32}/cancel")).status == 404


async def test_bad_inputs_are_typed_errors(make_client):
    client = await make_client(max_body_bytes=200_000)

    async def error(resp, status, code, field=None):
        body = await resp.json()
        assert resp.status == status, body
        assert body["type"] == "error" and body["code"] == code, body
        if field is not None:
            assert body["field"] == field, body
        assert "Traceback" not in json.dumps(body)

    post = client.post
    await error(await post("/api/v1/jobs", data=b"{nope", headers={"Content-Type": "application/json"}), 400, "bad_message")
    await error(await post("/api/v1/jobs", json=[1]), 422, "invalid_request", "body")
    await error(await post("/api/v1/jobs", json={"request": tiny_request(steps=0)}), 422, "invalid_request", "request.steps")
    await error(await post("/api/v1/jobs", json={"request": tiny_request(), "color": 1}), 422, "invalid_request", "color")
    await error(await post("/api/v1/jobs", json={"request": tiny_request(mode="img2img")}), 422, "missing_image", "init_image")
    await error(await post("/api/v1/jobs", json={"request": tiny_request(mode="img2img"), "init_image": "%%%"}),
                422, "bad_image", "init_image")
    truncated = base64.b64encode(png_bytes()[:60]).decode()
    await error(await post("/api/v1/jobs", json={"request": tiny_request(mode="img2img"), "init_image": truncated}),
                422, "bad_image", "init_image")
    mask = base64.b64encode(png_bytes((32, 32), mode="L")).decode()
    init = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    await error(await post("/api/v1/jobs", json={"request": tiny_request(mode="inpaint"), "init_image": init, "mask": mask}),
                422, "bad_image", "mask")
    await error(await post("/api/v1/jobs", json={"request": tiny_request(), "pad": "x" * 300_000}), 413, "too_large")
    await error(await post("/api/v1/jobs", json={"request": tiny_request(loras=[{"name": "../x.safetensors"}])}),
                422, "invalid_request", "loras.0.name")
    await error(await post("/api/v1/jobs", data=b"x", headers={"Content-Type": "application/xml"}), 400, "bad_message")
    await error(await client.get(f"/api/v1/jobs/{'0' * 32}"), 404, "unknown_job")
    await error(await client.get("/api/v1/jobs/nope/results/0"), 404, "unknown_job")
    await error(await client.get("/api/v1/jobs?limit=x"), 422, "invalid_request", "limit")
    await error(await client.get("/api/v1/nothing-here"), 404, "bad_message")
    await error(await post("/api/v1/models/load", json={"model": "/etc/passwd"}), 404, "unknown_model", "model")
    await error(await post("/api/v1/models/load", json={"model": "../outside"}), 404, "unknown_model", "model")
    # Still serving.
    assert (await client.get("/api/v1/health")).status == 200


async def test_queue_full_is_429_with_retry_after(make_client):
    client = await make_client(max_queue=1)
    first = (await (await client.post("/api/v1/jobs", json={"request": tiny_request(steps=150)})).json())["job_id"]
    while (await (await client.get(f"/api/v1/jobs/{first}")).json())["state"] != "running":
        await asyncio.sleep(0.02)
    second = (await (await client.post("/api/v1/jobs", json={"request": tiny_request()})).json())["job_id"]
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request()})
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "queue_full" and int(resp.headers["Retry-After"]) >= 1
    for job_id in (second, first):
        await client.post(f"/api/v1/jobs/{job_id}/cancel")


async def test_restart_keeps_results(aiohttp_client, tiny_engine, make_settings):
    settings = make_settings()
    client = await aiohttp_client(create_app(settings, tiny_engine))
    job_id = (await (await client.post("/api/v1/jobs", json={"request": tiny_request()})).json())["job_id"]
    events = await sse_events(client, job_id)
    assert events[-1].type == "done"
    png = await (await client.get(f"/api/v1/jobs/{job_id}/results/0")).read()
    await client.close()  # the whole server goes away

    restarted = await aiohttp_client(create_app(settings, tiny_engine))
    status = await (await restarted.get(f"/api/v1/jobs/{job_id}")).json()
    assert status["state"] == "done" and status["request"]["seed"] == 7
    resp = await restarted.get(f"/api/v1/jobs/{job_id}/results/0")
    assert resp.status == 200 and resp.content_type == "image/png" and await resp.read() == png
    assert (settings.data_dir / "jobs" / job_id / "job.json").exists()


async def test_models_health_openapi(make_client, tmp_path):
    models = tmp_path / "models"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "model_index.json").write_text("{}")
    (models / "mine" / "unet").mkdir()
    (models / "mine" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (models / "configs-only").mkdir()  # a single file's config folder is not a model of its own
    (models / "configs-only" / "model_index.json").write_text("{}")
    (models / "single.safetensors").write_bytes(b"")
    client = await make_client(model_dirs=[models])
    body = await (await client.get("/api/v1/models")).json()
    assert body["current"]["state"] == "ready"
    assert {m["name"] for m in body["models"]} == {"mine", "single.safetensors"}
    loaded = await (await client.post("/api/v1/models/load", json={"model": "tiny"})).json()
    assert loaded["state"] == "ready" and loaded["name"] == "tiny"
    health = await (await client.get("/api/v1/health")).json()
    assert health["status"] == "ok" and health["model"]["name"] == "tiny" and health["queue_length"] == 0
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert "GenerationRequest" in doc["components"]["schemas"]
    assert "/api/v1/jobs/{job_id}/events" in doc["paths"]
    submit_schema = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert submit_schema["$ref"].endswith("/SubmitBody")


async def test_failed_model_leaves_server_up_with_the_reason(make_client, make_settings):
    from latentbridge.engine import Engine

    settings = make_settings(model="/nonexistent/model.safetensors")
    client = await make_client(settings=settings, engine=Engine(settings))
    for _ in range(200):
        health = await (await client.get("/api/v1/health")).json()
        if health["model"]["state"] != "loading":
            break
        await asyncio.sleep(0.05)
    assert health["status"] == "error" and health["model"]["state"] == "failed"
    assert health["model"]["error"]
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request()})
    body = await resp.json()
    assert resp.status == 503 and body["code"] == "model_load_failed"
