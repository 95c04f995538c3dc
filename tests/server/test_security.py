"""Security defaults on the real app: Host/Origin checks, simple content types, bearer token."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from server_helpers import WsClient, tiny_request

from latentbridge.protocol import WS_PATH, ErrorCode
from latentbridge.server import StartupRefused
from latentbridge.server.security import check_startup, host_allowed, resolve_model_name
from latentbridge.settings import Settings

TOKEN = "correct-horse-battery-staple"


async def _forbidden(resp, code="forbidden", status=403):
    body = await resp.json()
    assert resp.status == status and body["code"] == code, body


async def test_cross_origin_http_and_ws_refused(client):
    for origin in ("https://evil.example", "null", "http://localhost:3000"):
        await _forbidden(await client.post("/api/v1/jobs", json={"request": tiny_request()}, headers={"Origin": origin}))
        await _forbidden(await client.get("/api/v1/health", headers={"Origin": origin}))
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(WS_PATH, headers={"Origin": origin})
        assert info.value.status == 403
    await _forbidden(await client.get("/api/v1/jobs", headers={"Sec-Fetch-Site": "cross-site"}))
    # A1111 routes sit behind the same middleware.
    await _forbidden(await client.get("/sdapi/v1/samplers", headers={"Origin": "https://evil.example"}))
    assert (await client.get("/api/v1/health")).status == 200  # no Origin: a non-browser client


async def test_allowed_origin_passes(make_client):
    client = await make_client(allowed_origins=["https://my-tool.example"])
    assert (await client.get("/api/v1/health", headers={"Origin": "https://my-tool.example"})).status == 200
    ws = await client.ws_connect(WS_PATH, headers={"Origin": "https://my-tool.example"})
    await ws.close()
    await _forbidden(await client.get("/api/v1/health", headers={"Origin": "https://other.example"}))


async def test_dns_rebinding_host_refused(client):
    for host in ("evil.example", "evil.example:7423", "127.0.0.1.evil.example"):
        await _forbidden(await client.get("/api/v1/health", headers={"Host": host}))
    for host in ("localhost:7423", "127.0.0.1", "[::1]:7423", "192.168.1.20:7423"):
        assert (await client.get("/api/v1/health", headers={"Host": host})).status == 200


def test_host_rules():
    settings = Settings(allowed_hosts=["gpu-box.lan"])
    assert host_allowed("gpu-box.lan:7423", settings)
    assert host_allowed("app.localhost", settings)
    assert not host_allowed("gpu-box.lan.evil.example", settings)
    assert not host_allowed(None, settings)
    assert not host_allowed("", settings)


async def test_form_content_types_refused_on_state_changing_routes(client):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        await _forbidden(await client.post("/api/v1/jobs", data=b'{"request": {}}', headers={"Content-Type": ctype}))
        await _forbidden(await client.post(f"/api/v1/jobs/{'0' * 32}/cancel", data=b"x",
                                           headers={"Content-Type": ctype}))


async def test_token_enforced_http_and_ws(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = await make_client(token=TOKEN)
    await _forbidden(await client.get("/api/v1/health"), "unauthorized", 401)
    resp = await client.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"})
    await _forbidden(resp, "unauthorized", 401)
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    await _forbidden(await client.get("/sdapi/v1/sd-models"), "unauthorized", 401)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/api/v1/health", headers=auth)).status == 200
    # websocket: header token ...
    ws = WsClient(await client.ws_connect(WS_PATH, headers=auth))
    assert (await ws.hello()).type == "hello"
    await ws.ws.close()
    # ... or the token in hello; nothing else is served before it.
    ws = WsClient(await client.ws_connect(WS_PATH))
    await ws.send({"type": "submit", "request": tiny_request()})
    error = await ws.receive()
    assert error.code is ErrorCode.unauthorized
    ws = WsClient(await client.ws_connect(WS_PATH))
    await ws.send({"type": "hello", "token": "wrong"})
    assert (await ws.receive()).code is ErrorCode.unauthorized
    ws = WsClient(await client.ws_connect(WS_PATH))
    assert (await ws.hello(token=TOKEN)).type == "hello"
    await ws.send({"type": "ping"})
    assert (await ws.receive()).type == "pong"
    assert TOKEN not in caplog.text  # never logged


def test_non_loopback_needs_a_token():
    with pytest.raises(StartupRefused):
        check_startup(Settings(host="0.0.0.0"))
    check_startup(Settings(host="0.0.0.0", token=TOKEN))
    check_startup(Settings(host="127.0.0.1"))
    check_startup(Settings(host="::1"))


def test_model_names_stay_inside_model_dirs(tmp_path):
    models = tmp_path / "models"
    (models / "a").mkdir(parents=True)
    (tmp_path / "secret.safetensors").write_bytes(b"")
    (models / "link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    settings = Settings(model_dirs=[models], model="configured/model")
    # The name is what the engine loads (it resolves it with the same rule), in one spelling.
    assert resolve_model_name("a", settings) == "a"
    assert resolve_model_name("./a", settings) == "a"
    for builtin in ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-inpaint", "random-mid"):  # random weights: harmless
        assert resolve_model_name(builtin, settings) == builtin
    assert resolve_model_name("configured/model", settings) == "configured/model"
    for bad in ("../secret.safetensors", str(tmp_path / "secret.safetensors"), "link.safetensors",
                "runwayml/stable-diffusion-v1-5", "a\\..\\..\\x", "missing", "a/../../secret.safetensors"):
        with pytest.raises(Exception) as info:
            resolve_model_name(bad, settings)
        assert getattr(info.value, "code", None) is ErrorCode.unknown_model, bad
