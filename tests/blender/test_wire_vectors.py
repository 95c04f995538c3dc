"""The add-on's own codec (blender_addon/wire.py) against the shared vectors in tests/vectors/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lb_blender

wire = lb_blender.source_module("wire")
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
INVALID = json.loads((VECTORS / "invalid" / "index.json").read_text())


def _load(folder: str, name: str) -> dict:
    return json.loads((VECTORS / folder / name).read_text())


def _names(folder: str, pattern: str) -> list[str]:
    return sorted(p.name for p in (VECTORS / folder).glob(pattern))


def test_vectors_are_there():
    assert len(_names("server", "*.json")) >= 11
    assert {"upload_init.bin", "upload_mask.bin", "preview.bin", "result.bin"} <= set(_names("binary", "*.bin"))


@pytest.mark.parametrize("name", _names("server", "*.json"))
def test_server_event_decodes(name):
    text = (VECTORS / "server" / name).read_text()
    event = wire.parse_event(text)
    assert event == json.loads(text)
    assert set(wire.EVENT_FIELDS[event["type"]]) <= set(event)


@pytest.mark.parametrize("name", _names("binary", "*.bin"))
def test_binary_frame_decodes_and_reencodes_byte_for_byte(name):
    frame = (VECTORS / "binary" / name).read_bytes()
    header, payload = wire.decode_binary(frame)
    assert header == _load("binary", name.replace(".bin", ".header.json"))
    whole = payload
    if header["kind"] == "live_frame":
        parts = wire.live_parts(header, payload)
        assert list(parts) == [p["role"] for p in header["parts"]]
        payload = parts["init"]
    if header["format"] == "rgb":  # raw rows, top first
        assert len(payload) == header["width"] * header["height"] * 3
    else:
        assert payload[:2] in (b"\x89P", b"\xff\xd8")  # PNG or JPEG bytes, untouched
    assert wire.encode_binary(header, whole) == frame


def test_raw_preview_becomes_blender_pixels():
    """Bottom row first, float RGBA: what `foreach_set` takes, computed off the main thread."""
    header, payload = wire.decode_binary((VECTORS / "binary" / "preview_rgb.bin").read_bytes())
    pixels = wire.raw_preview_pixels(payload, header["width"], header["height"])
    rows = pixels.reshape(header["height"], header["width"], 4)
    assert pixels.dtype.name == "float32"
    assert rows[1, :, :3].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]  # the top row, last
    assert rows[0, :, :3].tolist() == [[0, 0, 0]] * 4 and (rows[:, :, 3] == 1).all()
    with pytest.raises(wire.WireError):
        wire.raw_preview_pixels(payload[:-1], header["width"], header["height"])


def test_loopback_servers_get_raw_previews():
    for url in ("http://127.0.0.1:7423", "localhost:7423", "ws://[::1]:7423", "127.0.0.2"):
        assert wire.is_loopback(url), url
    for url in ("http://192.168.1.20:7423", "https://gpu.example.com", "10.0.0.1:7423"):
        assert not wire.is_loopback(url), url


def test_upload_frames_match_the_vectors():
    submit = _load("client", "submit_inpaint.json")
    for role in ("init", "mask"):
        expected = (VECTORS / "binary" / f"upload_{role}.bin").read_bytes()
        _, payload = wire.decode_binary(expected)
        assert wire.upload_frame(submit["images"][role], payload) == expected


@pytest.mark.parametrize(
    "name, build",
    [
        ("hello.json", lambda v: wire.hello_message(v["client"]) if "client" in v else wire.hello_message()),
        ("hello_token.json", lambda v: wire.hello_message(v["client"], v["token"])),
        ("cancel.json", lambda v: wire.cancel_message(v["job_id"])),
        ("attach.json", lambda v: wire.attach_message(v["job_id"])),
        ("ping.json", lambda v: wire.ping_message()),
        ("submit_txt2img.json", lambda v: wire.submit_message(v["request"], v.get("images"), v.get("client_ref"), v.get("priority"))),
        ("submit_inpaint.json", lambda v: wire.submit_message(v["request"], v.get("images"), v.get("client_ref"), v.get("priority"))),
        ("live_start.json", lambda v: wire.live_start_message(v["request"], v.get("live"), v.get("client_ref"))),
        ("live_update.json", lambda v: wire.live_update_message(v["job_id"], v.get("request"), v.get("live"))),
        ("live_stop.json", lambda v: wire.live_stop_message(v["job_id"])),
    ],
)
def test_client_messages_match_the_vectors(name, build):
    vector = _load("client", name)
    built = json.loads(build(vector))
    if name == "hello.json" and "client" not in vector:
        built.pop("client")
    assert built == vector


@pytest.mark.parametrize("name", [n for n in INVALID if n.endswith(".bin")])
def test_invalid_binary_frames_are_refused_with_the_servers_code(name):
    with pytest.raises(wire.WireError) as info:
        wire.decode_binary((VECTORS / "invalid" / name).read_bytes())
    assert info.value.code == INVALID[name]["code"]
    if "field" in INVALID[name]:
        assert info.value.field == INVALID[name]["field"]


@pytest.mark.parametrize("name", [n for n in INVALID if not n.endswith(".bin")])
def test_invalid_text_frames_are_not_events(name):
    # Malformed frames (bad_message) and client messages the server refuses are, to a client,
    # nothing it may take for a server event.
    with pytest.raises(wire.WireError) as info:
        wire.parse_event((VECTORS / "invalid" / name).read_bytes())
    assert info.value.code == "bad_message"


def test_encode_refuses_headers_the_server_would_refuse():
    with pytest.raises(wire.WireError):
        wire.encode_binary({"kind": "preview", "format": "jpeg"}, b"")  # no job_id
    with pytest.raises(wire.WireError):
        wire.encode_binary({"kind": "upload", "format": "gif", "upload_id": "u"}, b"")


@pytest.mark.parametrize(
    "given, ws, http",
    [
        ("http://127.0.0.1:7423", "ws://127.0.0.1:7423/api/v1/ws", "http://127.0.0.1:7423"),
        ("127.0.0.1:9000/", "ws://127.0.0.1:9000/api/v1/ws", "http://127.0.0.1:9000"),
        ("https://gpu.example:443", "wss://gpu.example:443/api/v1/ws", "https://gpu.example:443"),
        ("ws://localhost:7423/api/v1/ws", "ws://localhost:7423/api/v1/ws", "http://localhost:7423"),
    ],
)
def test_server_urls(given, ws, http):
    assert wire.ws_url(given) == ws
    assert wire.http_url(given) == http


def test_live_frames_match_the_vectors():
    for name in ("live_frame", "live_frame_rgb"):
        expected = (VECTORS / "binary" / f"{name}.bin").read_bytes()
        header, payload = wire.decode_binary(expected)
        built = wire.live_frame(header["job_id"], header["frame"], wire.live_parts(header, payload), header["format"],
                                header.get("width"), header.get("height"))
        assert built == expected
