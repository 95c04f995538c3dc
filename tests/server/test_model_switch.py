"""Models in --model-dirs load by the name the server lists, through every route and client; a
switch that fails leaves the previous model serving and tells the requester alone; --lock-model.

The model folder is written by the real save code: the tiny pipeline saved as diffusers folders
(top level and in a sub-folder) and as single-file LDM checkpoints with a config-only folder
beside them, plus a corrupt file. Every model in it has the tiny model's weights, so each one
must give the built-in tiny model's image bit for bit.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from server_helpers import WsClient, finished_status, tiny_request

from latentbridge import cli
from latentbridge.engine import Engine
from latentbridge.engine import tiny
from latentbridge.protocol import WS_PATH
from latentbridge.server import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from ldm_checkpoint import save_ldm_checkpoint  # noqa: E402

LISTED = {"folder-model", "sub/nested-model", "single.safetensors", "sub/nested.safetensors", "corrupt.safetensors"}
GOOD = sorted(LISTED - {"corrupt.safetensors"})


def _config_only(pipe, folder: Path) -> None:
    """A diffusers config folder without weights (what a single-file checkpoint needs beside it)."""
    pipe.save_pretrained(folder)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    pipe = tiny.build_pipeline("tiny")
    pipe.save_pretrained(root / "folder-model", safe_serialization=True)
    pipe.save_pretrained(root / "sub" / "nested-model", safe_serialization=True)
    save_ldm_checkpoint(pipe, root / "single.safetensors")
    _config_only(pipe, root / "single")
    save_ldm_checkpoint(pipe, root / "sub" / "nested.safetensors")
    _config_only(pipe, root / "sub" / "nested")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    (root.parent / "outside.safetensors").write_bytes((root / "single.safetensors").read_bytes())
    return root


@pytest.fixture
def make_server(aiohttp_client, make_settings, model_dir):
    """The real app with its own engine (these tests switch models), serving `tiny` at first."""
    async def make(**overrides):
        settings = make_settings(model_dirs=[model_dir], **overrides)
        client = await aiohttp_client(create_app(settings, Engine(settings)))
        await _wait_ready(client)
        return client

    return make


async def _wait_ready(client, name: str | None = None) -> dict:
    for _ in range(600):
        health = await (await client.get("/api/v1/health")).json()
        if health["model"]["state"] == "ready" and (name is None or health["model"]["name"] == name):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"model not ready: {health}")


async def _rest_image(client, **request) -> tuple[np.ndarray, dict]:
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(**request)})
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    status = await finished_status(client, job_id, timeout_s=30)
    assert status["state"] == "done", status
    png = await (await client.get(f"/api/v1/jobs/{job_id}/results/0")).read()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), status


@pytest.fixture(scope="module")
def reference(model_dir) -> np.ndarray:
    """The built-in tiny model's image for tiny_request()."""
    from latentbridge.protocol import GenerationRequest
    from latentbridge.settings import Settings

    engine = Engine(Settings(model="tiny"), local=True)
    return np.asarray(engine.generate(GenerationRequest(**tiny_request())).images[0])


async def test_every_listed_model_loads_by_name_through_the_load_route(make_server, reference):
    client = await make_server()
    listed = {m["name"] for m in (await (await client.get("/api/v1/models")).json())["models"]}
    assert listed == LISTED  # sub-folders included; the config-only folders are not models
    for name in GOOD:
        resp = await client.post("/api/v1/models/load", json={"model": name})
        body = await resp.json()
        assert resp.status == 200 and body["state"] == "ready" and body["name"] == name, body
        image, status = await _rest_image(client)
        assert status["request"]["model"] == name
        assert np.array_equal(image, reference), name


async def test_request_model_switches_on_rest_and_websocket(make_server, reference):
    client = await make_server()
    image, status = await _rest_image(client, model="sub/nested.safetensors")
    assert np.array_equal(image, reference) and status["request"]["model"] == "sub/nested.safetensors"

    ws = WsClient(await client.ws_connect(WS_PATH))
    await ws.hello()
    await ws.send({"type": "submit", "request": tiny_request(model="folder-model")})
    accepted, _ = await ws.until("accepted")
    model_event, _ = await ws.until("model")  # every greeted client hears the switch
    result, _ = await ws.until("result", accepted.job_id)
    assert result.request.model == "folder-model"
    header, png = await ws.receive()
    assert header.kind == "result" and np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), reference)
    await ws.until("done", accepted.job_id)
    assert (await _wait_ready(client, "folder-model"))["model"]["name"] == "folder-model"
    assert model_event.model.name == "folder-model"


async def test_a1111_checkpoint_overrides_and_options_switch_by_listed_name(make_server):
    client = await make_server()
    resp = await client.post("/sdapi/v1/txt2img", json={
        "prompt": "bronze", "steps": 2, "width": 64, "height": 64, "seed": 7,
        "override_settings": {"sd_model_checkpoint": "single.safetensors"},
        "override_settings_restore_afterwards": False})
    assert resp.status == 200, await resp.text()
    assert (await _wait_ready(client))["model"]["name"] == "single.safetensors"
    resp = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sub/nested-model"})
    assert resp.status == 200, await resp.text()
    assert (await _wait_ready(client))["model"]["name"] == "sub/nested-model"


async def test_cli_generate_on_a_server_with_a_listed_model(make_server, tmp_path, reference):
    client = await make_server()
    out = tmp_path / "out.png"
    args = ["generate", "--server", str(client.make_url("")), "--model", "sub/nested-model", "--prompt", "bronze",
            "--steps", "2", "-W", "64", "-H", "64", "--seed", "7", "--cfg", "1", "--out", str(out), "-q"]
    assert await asyncio.to_thread(cli.main, args) == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), reference)


@pytest.mark.parametrize("name, code, words", [
    ("corrupt.safetensors", "model_load_failed", "corrupt"),
    ("nope.safetensors", "unknown_model", "unknown model"),
    ("../outside.safetensors", "unknown_model", "outside"),
    ("sub/../../outside.safetensors", "unknown_model", "outside"),
    ("x" * 300 + ".safetensors", "unknown_model", "255 bytes"),
    ("/etc/passwd", "unknown_model", "not by path"),
])
async def test_a_failed_switch_keeps_the_model_serving_and_tells_the_requester_alone(
        make_server, reference, name, code, words):
    client = await make_server()
    watcher = WsClient(await client.ws_connect(WS_PATH))
    await watcher.hello()

    resp = await client.post("/api/v1/models/load", json={"model": name})
    body = await resp.json()
    assert resp.status in (403, 404, 422, 503) and body["code"] == code and body["field"] == "model", body
    assert words in body["message"]
    health = await _wait_ready(client)
    assert health["model"]["name"] == "tiny" and health["accepting"]

    # Per request: the job fails with the typed error; the next job (no model named) still runs.
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(model=name)})
    if resp.status == 202:  # a name that passes the submit-time check fails when it loads
        job_id = (await resp.json())["job_id"]
        for _ in range(600):
            status = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if status["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.05)
        assert status["state"] == "failed" and status["error"]["code"] == code and status["error"]["field"] == "model"
    else:
        assert (await resp.json())["code"] == code
    image, _ = await _rest_image(client)
    assert np.array_equal(image, reference)
    assert (await _wait_ready(client))["model"]["name"] == "tiny"

    # The other client heard no error (the failure was the requester's alone).
    await watcher.send({"type": "ping"})
    pong, seen = await watcher.until("pong")
    assert not [e for e in seen if getattr(e, "type", None) == "error"]


async def test_a_switch_that_fails_while_loading_restores_the_old_model(make_server, model_dir, tmp_path, reference):
    """A folder whose UNet weights were cut short (an interrupted copy): refused as corrupt."""
    broken = model_dir / "cut-short"
    if not broken.exists():
        shutil.copytree(model_dir / "folder-model", broken)
        weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    try:
        client = await make_server()
        resp = await client.post("/api/v1/models/load", json={"model": "cut-short"})
        body = await resp.json()
        assert resp.status == 503 and body["field"] == "model" and "cut-short/unet" in body["message"], body
        health = await _wait_ready(client)
        assert health["model"]["name"] == "tiny" and health["model"]["error"] is None
        image, _ = await _rest_image(client)
        assert np.array_equal(image, reference)
    finally:
        shutil.rmtree(broken, ignore_errors=True)


async def test_lock_model_refuses_per_request_switches(make_server):
    client = await make_server(lock_model=True)
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(model="folder-model")})
    body = await resp.json()
    assert resp.status == 403 and body["code"] == "forbidden" and body["field"] == "model" and "--lock-model" in body["message"]
    resp = await client.post("/api/v1/models/load", json={"model": "folder-model"})
    assert resp.status == 403
    resp = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "folder-model"})
    assert resp.status == 403
    _image, status = await _rest_image(client, model="tiny")  # naming the serving model is fine
    assert status["request"]["model"] == "tiny"
