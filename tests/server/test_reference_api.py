"""Reference images (IP-Adapter) through the server: uploads by role `reference.<i>` on the
websocket, in REST JSON and multipart, stored with the job and served back, together with
ControlNet units; typed errors naming the field; capabilities; the SDK and the CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
import numpy as np
from PIL import Image
from server_helpers import finished_status, tiny_request as plain_request

from latentbridge import cli
from latentbridge.client import AsyncClient
from latentbridge.protocol import GenerationRequest


def tiny_request(**fields) -> dict:
    # With classifier-free guidance: guidance amplifies what the references add, as it does in use.
    return plain_request(**{"guidance": 5.0, **fields})


def _picture_png(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8))
    out = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(out, format="PNG")
    return out.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _result(client, body: dict) -> bytes:
    resp = await client.post("/api/v1/jobs", json=body)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    assert (await finished_status(client, job_id))["state"] == "done"
    return await (await client.get(f"/api/v1/jobs/{job_id}/results/0")).read()


async def test_capabilities_say_references_work(ws_connect, client):
    hello = await (await ws_connect()).hello()
    assert hello.capabilities.reference is True
    listed = (await (await client.get("/api/v1/models")).json())["controlnets"]
    assert {"name": "tiny-ip-adapter", "kind": "builtin"} in listed


async def test_websocket_uploads_by_role_run_with_a_control_unit_and_are_stored(ws_connect, client):
    ws = await ws_connect()
    await ws.hello()
    first, second, depth = _picture_png(1), _picture_png(2), _picture_png(3, (64, 64))
    for upload_id, data in (("u-ref0", first), ("u-ref1", second), ("u-depth", depth)):
        await ws.upload(upload_id, data)
    request = tiny_request(reference={"images": 2, "weight": 0.9}, controls=[{"type": "depth"}])
    await ws.send({"type": "submit", "request": request,
                   "images": {"reference.0": "u-ref0", "reference.1": "u-ref1", "control.0": "u-depth"}})
    accepted, _ = await ws.until("accepted")
    result, _ = await ws.until("result", accepted.job_id)
    assert result.request.reference.images == 2 and result.request.reference.weight == 0.9  # the recipe keeps them
    await ws.until("done", accepted.job_id)
    stored = await (await client.get(f"/api/v1/jobs/{accepted.job_id}/inputs/reference.1")).read()
    assert np.array_equal(_pixels(stored), _pixels(second))
    assert (await client.get(f"/api/v1/jobs/{accepted.job_id}/inputs/reference.2")).status == 404

    referenced = await (await client.get(f"/api/v1/jobs/{accepted.job_id}/results/0")).read()
    control_only = await _result(client, {"request": tiny_request(controls=[{"type": "depth"}]),
                                          "images": {"control.0": _b64(depth)}})
    assert np.abs(_pixels(referenced).astype(int) - _pixels(control_only)).max() > 8
    again = await _result(client, {"request": request, "images": {"reference.0": _b64(first), "reference.1": _b64(second),
                                                                  "control.0": _b64(depth)}})
    assert np.array_equal(_pixels(again), _pixels(referenced))  # websocket and REST: the same image


async def test_rest_json_and_multipart_give_the_same_image(client):
    picture = _picture_png(4)
    request = tiny_request(reference={"images": 1, "model": "tiny-ip-adapter"})
    from_json = await _result(client, {"request": request, "images": {"reference.0": _b64(picture)}})
    form = aiohttp.FormData()
    form.add_field("request", json.dumps(request), content_type="application/json")
    form.add_field("reference.0", picture, filename="style.png", content_type="image/png")
    resp = await client.post("/api/v1/jobs", data=form, headers={"X-LatentBridge-Client": "tests"})
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    assert (await finished_status(client, job_id))["state"] == "done"
    from_multipart = await (await client.get(f"/api/v1/jobs/{job_id}/results/0")).read()
    assert np.array_equal(_pixels(from_json), _pixels(from_multipart))
    plain = await _result(client, {"request": tiny_request()})
    assert np.abs(_pixels(from_json).astype(int) - _pixels(plain)).max() > 8


async def test_typed_errors_name_the_field(client):
    picture = _b64(_picture_png(5))
    cases = [
        ({"request": tiny_request(reference={"images": 2}), "images": {"reference.0": picture}}, 422, "missing_image",
         "reference"),
        ({"request": tiny_request(), "images": {"reference.0": picture}}, 422, "invalid_request", "images.reference.0"),
        ({"request": tiny_request(reference={"images": 1, "model": "../x.safetensors"}),
          "images": {"reference.0": picture}}, 404, "unknown_model", "reference.model"),
        ({"request": tiny_request(reference={"images": 1, "model": "/etc/passwd"}),
          "images": {"reference.0": picture}}, 404, "unknown_model", "reference.model"),
        ({"request": tiny_request(reference={"images": 1}), "images": {"reference.0": "not base64!"}}, 422,
         "bad_image", "images.reference.0"),
        ({"request": tiny_request(reference={"images": 5})}, 422, "invalid_request", "request.reference.images"),
    ]
    for body, status, code, field in cases:
        resp = await client.post("/api/v1/jobs", json=body)
        error = await resp.json()
        assert (resp.status, error["code"], error["field"]) == (status, code, field), error
    # An adapter that does not fit the loaded model is refused when the job runs, naming the field.
    body = {"request": tiny_request(reference={"images": 1, "model": "tiny-ip-adapter-sdxl"}),
            "images": {"reference.0": picture}}
    job_id = (await (await client.post("/api/v1/jobs", json=body)).json())["job_id"]
    status = await finished_status(client, job_id)
    assert status["state"] == "failed" and status["error"]["code"] == "unsupported"
    assert status["error"]["field"] == "reference.model"


async def test_sdk_and_cli_send_reference_images(client, tmp_path):
    url = str(client.make_url(""))
    picture = _picture_png(6)
    async with AsyncClient(url) as sdk:
        request = GenerationRequest(**tiny_request(reference={"images": 1, "weight": 0.7}))
        pngs = await sdk.generate(request, images={"reference.0": picture})
        over_http = await sdk.generate(request, images={"reference.0": picture}, transport="http")
    assert np.array_equal(_pixels(pngs[0]), _pixels(over_http[0]))
    (tmp_path / "style.png").write_bytes(picture)
    out = tmp_path / "out.png"
    args = ["generate", "--server", url, "--prompt", "bronze", "--steps", "2", "-W", "64", "-H", "64", "--seed", "7",
            "--cfg", "5", "--reference", str(tmp_path / "style.png"), "--reference-weight", "0.7",
            "--reference-model", "tiny-ip-adapter", "--out", str(out), "-q"]
    assert await asyncio.to_thread(cli.main, args) == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), _pixels(pngs[0]))
    local = tmp_path / "local.png"  # the CLI's own engine gives the very same image
    assert await asyncio.to_thread(cli.main, [*args[:1], *args[3:-3], "--model", "tiny", "--out", str(local), "-q"]) == 0
    assert np.array_equal(np.asarray(Image.open(local).convert("RGB")), _pixels(pngs[0]))
