"""ControlNet through the server: control maps uploaded by role on the websocket, in REST JSON and
multipart, stored with the job and served back; typed errors naming the field; capabilities; the
SDK and the CLI."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
from PIL import Image
from server_helpers import finished_status, png_bytes, tiny_request

from latentbridge import cli
from latentbridge.client import AsyncClient
from latentbridge.protocol import GenerationRequest

DEPTH = png_bytes(color=(200, 200, 200))


def _map_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def test_capabilities_list_control(ws_connect):
    ws = await ws_connect()
    hello = await ws.hello()
    caps = hello.capabilities
    assert "depth" in [t.value for t in caps.control_types] and "tiny-controlnet" in caps.controlnets
    assert {"none", "canny"} <= set(caps.preprocessors)


async def test_websocket_upload_by_role_runs_the_units_and_stores_the_maps(ws_connect, client):
    ws = await ws_connect()
    await ws.hello()
    depth, normal = _map_png(1), _map_png(2)
    await ws.upload("u-depth", depth)
    await ws.upload("u-normal", normal)
    request = tiny_request(controls=[{"type": "depth"}, {"type": "normal", "weight": 0.5}])
    await ws.send({"type": "submit", "request": request, "images": {"control.0": "u-depth", "control.1": "u-normal"}})
    accepted, _ = await ws.until("accepted")
    result, _ = await ws.until("result", accepted.job_id)
    assert [u.type.value for u in result.request.controls] == ["depth", "normal"]  # the recipe keeps them
    await ws.until("done", accepted.job_id)
    stored = await (await client.get(f"/api/v1/jobs/{accepted.job_id}/inputs/control.1")).read()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(Image.open(io.BytesIO(normal))))
    assert (await client.get(f"/api/v1/jobs/{accepted.job_id}/inputs/control.3")).status == 404

    plain = await client.post("/api/v1/jobs", json={"request": tiny_request()})
    plain_png = await (await client.get(f"/api/v1/jobs/{(await plain.json())['job_id']}/results/0")).read() \
        if (await finished_status(client, (await plain.json())["job_id"]))["state"] == "done" else None
    controlled_png = await (await client.get(f"/api/v1/jobs/{accepted.job_id}/results/0")).read()
    assert plain_png != controlled_png


async def test_rest_json_and_multipart_give_the_same_image(client):
    depth = _map_png(3)
    body = {"request": tiny_request(controls=[{"type": "depth"}]), "images": {"control.0": base64.b64encode(depth).decode()}}
    job_json = (await (await client.post("/api/v1/jobs", json=body)).json())["job_id"]
    import aiohttp

    form = aiohttp.FormData()
    import json

    form.add_field("request", json.dumps(tiny_request(controls=[{"type": "depth"}])), content_type="application/json")
    form.add_field("control.0", depth, filename="depth.png", content_type="image/png")
    resp = await client.post("/api/v1/jobs", data=form, headers={"X-LatentBridge-Client": "tests"})
    assert resp.status == 202, await resp.text()
    job_multipart = (await resp.json())["job_id"]
    results = []
    for job_id in (job_json, job_multipart):
        assert (await finished_status(client, job_id))["state"] == "done"
        results.append(await (await client.get(f"/api/v1/jobs/{job_id}/results/0")).read())
    pixels = [np.asarray(Image.open(io.BytesIO(r))) for r in results]
    assert np.array_equal(pixels[0], pixels[1])


async def test_typed_errors_name_the_field(client, ws_connect):
    cases = [
        ({"request": tiny_request(controls=[{"type": "depth"}])}, 422, "missing_image", "controls.0"),
        ({"request": tiny_request(), "images": {"control.0": base64.b64encode(DEPTH).decode()}}, 422,
         "invalid_request", "images.control.0"),
        ({"request": tiny_request(controls=[{"type": "depth", "model": "../x.safetensors"}]),
          "images": {"control.0": base64.b64encode(DEPTH).decode()}}, 404, "unknown_model", "controls.0.model"),
        ({"request": tiny_request(controls=[{"type": "depth"}]), "images": {"control.0": "not base64!"}}, 422,
         "bad_image", "images.control.0"),
        ({"request": tiny_request(controls=[{"type": "depth", "end": 0.1, "start": 0.5}])}, 422, "invalid_request",
         "request.controls.0"),
    ]
    for body, status, code, field in cases:
        resp = await client.post("/api/v1/jobs", json=body)
        error = await resp.json()
        assert (resp.status, error["code"], error["field"]) == (status, code, field), error
    # A bad preprocessor is refused when the job runs: the job fails with the field named.
    body = {"request": tiny_request(controls=[{"type": "canny", "preprocessor": "magic"}]),
            "images": {"control.0": base64.b64encode(DEPTH).decode()}}
    job_id = (await (await client.post("/api/v1/jobs", json=body)).json())["job_id"]
    status = await finished_status(client, job_id)
    assert status["state"] == "failed" and status["error"]["field"] == "controls.0.preprocessor"


async def test_preprocessor_turns_a_picture_into_the_map(client):
    photo = _map_png(4)
    body = {"request": tiny_request(controls=[{"type": "canny", "preprocessor": "canny",
                                               "preprocessor_options": {"low": 50, "high": 100}}]),
            "images": {"control.0": base64.b64encode(photo).decode()}}
    job_id = (await (await client.post("/api/v1/jobs", json=body)).json())["job_id"]
    assert (await finished_status(client, job_id))["state"] == "done"


async def test_sdk_and_cli_send_control_units(client, tmp_path):
    url = str(client.make_url(""))
    depth = _map_png(5)
    async with AsyncClient(url) as sdk:
        request = GenerationRequest(**tiny_request(controls=[{"type": "depth"}]))
        pngs = await sdk.generate(request, images={"control.0": depth})
        over_http = await sdk.generate(request, images={"control.0": depth}, transport="http")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pngs[0]))), np.asarray(Image.open(io.BytesIO(over_http[0]))))
    (tmp_path / "depth.png").write_bytes(depth)
    out = tmp_path / "out.png"
    args = ["generate", "--server", url, "--prompt", "bronze", "--steps", "2", "-W", "64", "-H", "64", "--seed", "7",
            "--cfg", "1", "--control", f"depth:{tmp_path / 'depth.png'}:1", "--out", str(out), "-q"]
    assert await asyncio.to_thread(cli.main, args) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(io.BytesIO(pngs[0]))))
