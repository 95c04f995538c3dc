"""The routes added for browsing clients (LoRA list, a job's stored inputs) and the published
OpenAPI document that types every response and websocket frame (the TypeScript SDK's source)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from pydantic import TypeAdapter
from server_helpers import finished_status, png_bytes, tiny_request

from latentbridge.protocol import ServerEvent
from latentbridge.server.openapi import (  # re-exported from server.responses
    CancelResponse,
    HealthResponse,
    HistoryResponse,
    LorasResponse,
    ModelsResponse,
    build_openapi,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
CLIENT_HEADER = {"X-LatentBridge-Client": "tests"}


async def _run(client, **request) -> str:
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(**request)})
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    await finished_status(client, job_id, timeout_s=30)
    return job_id


async def test_loras_lists_safetensors_files_of_every_lora_folder(make_client, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "bronze.safetensors").write_bytes(b"")
    (first / "notes.txt").write_text("not a LoRA")
    (first / "pickled.ckpt").write_bytes(b"")
    (first / "folder.safetensors").mkdir()
    (second / "Wood.SAFETENSORS").write_bytes(b"")
    (second / "bronze.safetensors").write_bytes(b"")  # the same name twice is listed once
    client = await make_client(lora_dirs=[first, second, tmp_path / "missing"])
    body = await (await client.get("/api/v1/loras")).json()
    assert LorasResponse.model_validate(body).loras
    assert body == {"loras": [{"name": "Wood.SAFETENSORS"}, {"name": "bronze.safetensors"}]}
    assert await (await (await make_client()).get("/api/v1/loras")).json() == {"loras": []}


async def test_capabilities_over_http_follow_the_loaded_model(client, ws_connect):
    ws = await ws_connect()
    hello = await ws.hello()
    assert await (await client.get("/api/v1/capabilities")).json() == hello.capabilities.model_dump(mode="json")
    # A transformer family samples with flow-matching Euler only and cannot tile (the session's
    # shared engine gets its tiny model back below: same seeded weights).
    loaded = await client.post("/api/v1/models/load", json={"model": "tiny-sd3"})
    assert loaded.status == 200, await loaded.text()
    try:
        caps = await (await client.get("/api/v1/capabilities")).json()
        assert caps["samplers"] == ["euler", "euler_a"] and caps["seamless"] == ["none"]
    finally:
        assert (await client.post("/api/v1/models/load", json={"model": "tiny"})).status == 200
    assert (await (await client.get("/api/v1/capabilities")).json())["seamless"] == ["none", "x", "y", "xy"]


async def test_a_jobs_inputs_come_back(client):
    init, mask = png_bytes((64, 64), (200, 30, 30)), png_bytes((64, 64), mode="L")
    resp = await client.post("/api/v1/jobs", json={
        "request": tiny_request(mode="inpaint", strength=0.6),
        "init_image": base64.b64encode(init).decode(), "mask": base64.b64encode(mask).decode()})
    job_id = (await resp.json())["job_id"]
    for _ in range(600):
        if (await (await client.get(f"/api/v1/jobs/{job_id}")).json())["state"] == "done":
            break
        await asyncio.sleep(0.05)
    got_init = await client.get(f"/api/v1/jobs/{job_id}/inputs/init")
    assert got_init.status == 200 and got_init.content_type == "image/png"
    assert Image.open(io.BytesIO(await got_init.read())).getpixel((0, 0)) == (200, 30, 30)
    got_mask = Image.open(io.BytesIO(await (await client.get(f"/api/v1/jobs/{job_id}/inputs/mask")).read()))
    assert got_mask.mode == "L" and got_mask.getpixel((32, 32)) == 255 and got_mask.getpixel((0, 0)) == 0


async def test_input_errors_are_typed(client):
    txt2img = await _run(client)
    missing = await client.get(f"/api/v1/jobs/{txt2img}/inputs/init")
    assert missing.status == 404 and (await missing.json())["field"] == "role"
    for role in ("depth", "a..b", "init.png", "x" * 300):
        bad_role = await client.get(f"/api/v1/jobs/{txt2img}/inputs/{role}")
        assert bad_role.status == 404 and (await bad_role.json())["field"] == "role", role
    unknown = await client.get(f"/api/v1/jobs/{'0' * 32}/inputs/init")
    assert unknown.status == 404 and (await unknown.json())["code"] == "unknown_job"
    traversal = await client.get("/api/v1/jobs/..%2f..%2fetc/inputs/init")
    assert traversal.status == 404


async def test_rest_responses_match_their_published_models(make_client, tmp_path):
    client = await make_client(lora_dirs=[tmp_path])
    job_id = await _run(client)
    HealthResponse.model_validate(await (await client.get("/api/v1/health")).json())
    ModelsResponse.model_validate(await (await client.get("/api/v1/models")).json())
    HistoryResponse.model_validate(await (await client.get("/api/v1/jobs")).json())
    CancelResponse.model_validate(await (await client.post(f"/api/v1/jobs/{job_id}/cancel")).json())
    LorasResponse.model_validate(await (await client.get("/api/v1/loras")).json())


def test_openapi_types_every_websocket_frame():
    schemas = build_openapi()["components"]["schemas"]
    server_types = {json.loads(p.read_text())["type"] for p in (VECTORS / "server").glob("*.json")}
    assert set(schemas["ServerEvent"]["discriminator"]["mapping"]) == server_types
    # The union is the protocol's own: every server vector parses with protocol.ServerEvent.
    adapter = TypeAdapter(ServerEvent)
    for path in (VECTORS / "server").glob("*.json"):
        adapter.validate_json(path.read_text())
    client_types = {json.loads(p.read_text())["type"] for p in (VECTORS / "client").glob("*.json")}
    assert set(schemas["ClientMessage"]["discriminator"]["mapping"]) == client_types
    for name in ("BinaryHeader", "Capabilities", "HelloEvent", "SubmitMessage"):
        assert name in schemas
    # Frames always carry their `type`: typed clients narrow on it.
    assert all("type" in schemas[name]["required"] for name in ("ProgressEvent", "HelloMessage", "StatusEvent"))
    for route in ("/api/v1/capabilities", "/api/v1/loras", "/api/v1/jobs/{job_id}/inputs/{role}"):
        assert route in build_openapi()["paths"]


@pytest.mark.parametrize("route", ["/api/v1/health", "/api/v1/models", "/api/v1/jobs", "/api/v1/loras",
                                   "/api/v1/capabilities"])
def test_json_routes_reference_a_response_model(route):
    response = build_openapi()["paths"][route]["get"]["responses"]["200"]
    assert response["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")
