"""Hostile input gets a typed 4xx (or a clean close) and one log line, never a 500 or a traceback:
deep JSON, NaN/Infinity, broken multipart, names longer than a file name, a 405 without `Allow`,
image formats we do not decode. Against the real app, on every route family (REST, websocket,
A1111)."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from PIL import Image
from server_helpers import WsClient, tiny_request

from latentbridge.protocol import WS_PATH, BinaryHeader, encode_binary_frame

CLIENT = {"X-LatentBridge-Client": "tests"}
DEEP = "[" * 1000 + "]" * 1000
VERY_DEEP = '{"a":' * 100_000 + "1" + "}" * 100_000


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"response contains {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


async def expect_error(resp, status: int, code: str, field: str | None = None) -> dict:
    """A typed error; A1111 routes answer client errors with 422 as A1111 (FastAPI) does, except its
    404 "not found" answers (a model or sampler it does not have) and 405."""
    text = await resp.text()
    if resp.url.path.startswith("/sdapi/") and 400 <= status < 500 and status not in (404, 405):
        status = 422
    assert resp.status == status, text
    body = strict_json(text)
    assert body["type"] == "error" and body["code"] == code, body
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.fixture
def no_tracebacks(caplog):
    caplog.set_level(logging.INFO)
    yield caplog
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize("body", [DEEP, VERY_DEEP, '{"request": ' + DEEP + "}"])
async def test_deeply_nested_json_is_a_typed_400(client, no_tracebacks, body):
    for path in ("/api/v1/jobs", "/api/v1/models/load", "/sdapi/v1/txt2img", "/sdapi/v1/options"):
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        await expect_error(resp, 400, "bad_message", "body")
    assert [r for r in no_tracebacks.records if "nested too deeply" in r.getMessage()]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
async def test_nan_and_infinity_are_refused_everywhere(client, ws_connect, no_tracebacks, constant):
    bodies = {
        "/api/v1/jobs": '{"request": {"prompt": "x", "guidance": %s}}',
        "/api/v1/models/load": '{"model": "tiny", "extra": [%s]}',
        "/sdapi/v1/txt2img": '{"prompt": "x", "steps": 1, "width": 64, "height": 64, "cfg_scale": %s}',
        "/sdapi/v1/options": '{"unrelated": {"deep": [1, %s]}}',
    }
    for path, template in bodies.items():
        resp = await client.post(path, data=template % constant, headers={"Content-Type": "application/json"})
        body = await expect_error(resp, 400, "bad_message")
        assert "NaN and Infinity are not JSON numbers" in body["message"], (path, body)
    # multipart `request` part
    form = "--B\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{\"strength\": %s}\r\n--B--\r\n" % constant
    resp = await client.post("/api/v1/jobs", data=form.encode(),
                             headers={"Content-Type": "multipart/form-data; boundary=B", **CLIENT})
    await expect_error(resp, 400, "bad_message", "request")
    # websocket text frames and binary headers
    ws = await ws_connect()
    await ws.hello()
    await ws.ws.send_str('{"type": "submit", "request": {"strength": %s}}' % constant)
    event = await ws.receive()
    assert event.type == "error" and event.code.value == "bad_message"
    header = ('{"kind": "upload", "format": "png", "upload_id": "a", "index": %s}' % constant).encode()
    await ws.ws.send_bytes(len(header).to_bytes(4, "big") + header + b"png")
    event = await ws.receive()
    assert event.type == "error" and event.code.value == "bad_message"


async def test_the_response_encoder_refuses_nan():
    from latentbridge.server.jsonio import json_response

    with pytest.raises(ValueError):
        json_response({"progress": float("nan")})
    assert json_response({"progress": 0.5}).text == '{"progress": 0.5}'


async def test_a_nan_inside_the_server_is_a_logged_500_never_nan_on_the_wire(make_client, caplog):
    """No route may put NaN on the wire: a non-finite number the server made itself (here the model's
    download progress) becomes a typed 500 with the traceback in the log."""
    from latentbridge.engine import Engine
    from latentbridge.settings import Settings

    engine = Engine(Settings(model="tiny"))
    client = await make_client(engine=engine)
    engine._set_status(progress=float("nan"))
    for path in ("/api/v1/health", "/api/v1/models", "/sdapi/v1/progress"):
        resp = await client.get(path)
        text = await resp.text()
        assert "NaN" not in text, (path, text)
        strict_json(text)


# ---------------------------------------------------------------------------------------------
# Multipart


MULTIPART_CASES = {
    "control byte in a part header": b'--B\r\nContent-Disposition: form-data; name="request"\x01\r\n\r\n{}\r\n--B--\r\n',
    "malformed header line": b"--B\r\nnot a header line\r\n\r\n{}\r\n--B--\r\n",
    "no closing boundary": b'--B\r\nContent-Disposition: form-data; name="request"\r\n\r\n{}',
    "wrong boundary": b"--C\r\n\r\n{}\r\n--C--\r\n",
    "part not UTF-8": b'--B\r\nContent-Disposition: form-data; name="request"\r\n\r\n\xff\xfe\r\n--B--\r\n',
    "part sent twice": (b'--B\r\nContent-Disposition: form-data; name="request"\r\n\r\n{"steps": 1}\r\n'
                        b'--B\r\nContent-Disposition: form-data; name="request"\r\n\r\n{"steps": 2}\r\n--B--\r\n'),
}


@pytest.mark.parametrize("case", list(MULTIPART_CASES))
async def test_malformed_multipart_is_a_typed_4xx(client, no_tracebacks, case):
    resp = await client.post("/api/v1/jobs", data=MULTIPART_CASES[case],
                             headers={"Content-Type": "multipart/form-data; boundary=B", **CLIENT})
    text = await resp.text()
    assert resp.status in (400, 422), (case, resp.status, text)
    assert strict_json(text)["code"] in ("bad_message", "invalid_request"), text


async def test_multipart_without_a_boundary_is_a_typed_400(client, no_tracebacks):
    for ctype in ("multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "x" * 80):
        resp = await client.post("/api/v1/jobs", data=b"--x\r\n", headers={"Content-Type": ctype, **CLIENT})
        await expect_error(resp, 400, "bad_message")


# ---------------------------------------------------------------------------------------------
# Names that become file names


LONG_NAMES = ["a" * 256, "é" * 128, "sub/" + "b" * 300, "c" * 1000]


async def test_names_over_255_bytes_are_typed_404s_on_every_route(make_client, tmp_path, no_tracebacks):
    (tmp_path / "models").mkdir()
    (tmp_path / "loras").mkdir()
    client = await make_client(model_dirs=[tmp_path / "models"], lora_dirs=[tmp_path / "loras"])
    for name in LONG_NAMES:
        resp = await client.post("/api/v1/jobs", json={"request": tiny_request(model=name)})
        await expect_error(resp, 404, "unknown_model", "model")
        resp = await client.post("/api/v1/models/load", json={"model": name})
        await expect_error(resp, 404, "unknown_model", "model")
        resp = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        await expect_error(resp, 404, "unknown_model")
        resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                           "override_settings": {"sd_model_checkpoint": name}})
        await expect_error(resp, 404, "unknown_model")
        if "/" not in name and len(name) <= 512:
            resp = await client.post("/api/v1/jobs", json={"request": tiny_request(loras=[{"name": name}])})
            await expect_error(resp, 404, "unknown_model", "loras.0.name")
    ws = WsClient(await client.ws_connect(WS_PATH))
    await ws.hello()
    await ws.send({"type": "submit", "request": tiny_request(model="d" * 300)})
    event = await ws.receive()
    assert event.type == "error" and event.code.value == "unknown_model" and event.field == "model"
    await ws.send({"type": "submit", "request": tiny_request(loras=[{"name": "e" * 300}])})
    event = await ws.receive()
    assert event.type == "error" and event.code.value == "unknown_model" and event.field == "loras.0.name"


async def test_a_name_too_long_for_the_os_anywhere_is_a_typed_error(client, monkeypatch, no_tracebacks):
    """The safety net: ENAMETOOLONG from any route is a typed 4xx, not a 500."""
    from latentbridge.server import rest

    def too_long(*args, **kwargs):
        raise OSError(36, "File name too long", "x" * 300)

    monkeypatch.setattr(rest, "list_models", too_long)
    resp = await client.get("/api/v1/models")
    await expect_error(resp, 422, "invalid_request")


# ---------------------------------------------------------------------------------------------
# Methods


async def test_405_carries_allow(client):
    for method, path, allowed in [("PUT", "/api/v1/jobs", {"GET", "POST"}),
                                  ("DELETE", "/api/v1/jobs/abc", {"GET"}),
                                  ("TRACE", "/api/v1/models/load", {"POST"}),
                                  ("PATCH", "/sdapi/v1/txt2img", {"POST"}),
                                  ("POST", "/api/v1/health", {"GET"})]:
        resp = await client.request(method, path, headers=CLIENT)
        await expect_error(resp, 405, "bad_message")
        assert allowed <= {m.strip() for m in resp.headers["Allow"].split(",")}, (path, resp.headers.get("Allow"))


# ---------------------------------------------------------------------------------------------
# Images


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n"


def _encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["EPS", "GIF", "BMP", "TIFF", "ICO"])
async def test_only_png_jpeg_and_webp_are_decoded(client, ws_connect, monkeypatch, no_tracebacks, fmt):
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript must never run on client bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    data = EPS if fmt == "EPS" else _encoded(fmt)
    b64 = base64.b64encode(data).decode()
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(mode="img2img"), "init_image": b64})
    body = await expect_error(resp, 422, "bad_image", "init_image")
    assert "PNG, JPEG or WebP" in body["message"]
    resp = await client.post("/sdapi/v1/img2img", json={"init_images": [b64], "steps": 1, "width": 64, "height": 64})
    assert resp.status == 422 and strict_json(await resp.text())["code"] == "bad_image"
    ws = await ws_connect()
    await ws.hello()
    await ws.upload("u1", data)
    await ws.send({"type": "submit", "request": tiny_request(mode="img2img"), "images": {"init": "u1"}})
    event = await ws.receive()
    assert event.type == "error" and event.code.value == "bad_image" and event.field == "images.init"


async def test_png_jpeg_and_webp_still_decode(client):
    for fmt in ("PNG", "JPEG", "WEBP"):
        b64 = base64.b64encode(_encoded(fmt)).decode()
        resp = await client.post("/api/v1/jobs", json={"request": tiny_request(mode="img2img", steps=1),
                                                       "init_image": b64})
        assert resp.status == 202, (fmt, await resp.text())


# ---------------------------------------------------------------------------------------------
# Websocket frames the websocket layer refuses


async def test_invalid_utf8_and_oversized_frames_close_cleanly(make_client, no_tracebacks):
    client = await make_client(max_message_bytes=1000)
    ws = await client.ws_connect(WS_PATH)
    await ws.send_bytes(encode_binary_frame(BinaryHeader(kind="upload", format="png", upload_id="a"), b"x" * 2000))
    msg = await ws.receive()
    assert msg.type.name in ("CLOSE", "CLOSED", "CLOSING") or ws.closed
    assert ws.close_code == 1009  # message too big
    assert [r for r in no_tracebacks.records if "broke the websocket protocol" in r.getMessage()]
    ws = WsClient(await client.ws_connect(WS_PATH))
    await ws.hello()
    await ws.send({"type": "ping"})
    assert (await ws.receive()).type == "pong"  # the server keeps serving
