"""Every shared test vector decodes, and re-encodes to the same frame."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from latentbridge import images
from latentbridge.protocol import (
    BinaryHeader,
    LatentBridgeError,
    decode_binary_frame,
    encode_binary_frame,
    parse_client_message,
    parse_server_event,
    split_live_parts,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
INVALID_INDEX = json.loads((VECTORS / "invalid" / "index.json").read_text())


def _names(folder: str, pattern: str) -> list[str]:
    return sorted(p.name for p in (VECTORS / folder).glob(pattern))


def test_every_kind_of_vector_exists():
    assert {"hello.json", "submit_txt2img.json", "submit_inpaint.json", "cancel.json", "attach.json"} <= set(_names("client", "*.json"))
    server_types = {json.loads((VECTORS / "server" / n).read_text())["type"] for n in _names("server", "*.json")}
    assert server_types == {"hello", "accepted", "started", "progress", "result", "done", "cancelled", "error",
                            "status", "pong", "preview", "model", "live_started", "live_updated", "live_stopped"}
    assert {"upload_init.bin", "upload_mask.bin", "preview.bin", "result.bin"} <= set(_names("binary", "*.bin"))
    invalid_files = set(_names("invalid", "*")) - {"index.json"}
    assert invalid_files == set(INVALID_INDEX)


@pytest.mark.parametrize("name", _names("client", "*.json"))
def test_client_vector_round_trip(name):
    text = (VECTORS / "client" / name).read_text()
    message = parse_client_message(text)
    assert {**message.model_dump(mode="json", exclude_unset=True), "type": message.type} == json.loads(text)
    # Encoding the decoded message and decoding again is stable.
    again = parse_client_message(message.model_dump_json())
    assert again == message


@pytest.mark.parametrize("name", _names("server", "*.json"))
def test_server_vector_round_trip(name):
    text = (VECTORS / "server" / name).read_text()
    event = parse_server_event(text)
    assert event.model_dump(mode="json") == json.loads(text)


@pytest.mark.parametrize("name", [n[: -len(".bin")] for n in _names("binary", "*.bin")])
def test_binary_vector_round_trip(name):
    frame = (VECTORS / "binary" / f"{name}.bin").read_bytes()
    expected_header = json.loads((VECTORS / "binary" / f"{name}.header.json").read_text())
    header, payload = decode_binary_frame(frame)
    assert header.model_dump(mode="json", exclude_none=True) == expected_header
    assert encode_binary_frame(BinaryHeader.model_validate(expected_header), payload) == frame
    if header.kind == "live_frame":  # its parts, one after the other: each a whole image
        parts = split_live_parts(header, payload)
        assert list(parts) == [part.role for part in header.parts]
        payload = parts["init"]
    if header.format == "rgb":  # raw rows, top first
        assert len(payload) == header.width * header.height * 3
        image = images.preview_image(payload, "rgb", (header.width, header.height))
        assert image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((3, 0)) == (255, 255, 255)
        return
    image = Image.open(io.BytesIO(payload))
    image.load()  # a real, complete image
    assert image.format.lower() == header.format
    if header.width is not None:
        assert image.size == (header.width, header.height)


def test_inpaint_submit_names_the_upload_vectors():
    submit = parse_client_message((VECTORS / "client" / "submit_inpaint.json").read_text())
    uploads = {decode_binary_frame((VECTORS / "binary" / f"{n}.bin").read_bytes())[0].upload_id
               for n in ("upload_init", "upload_mask")}
    assert set(submit.images.values()) == uploads


@pytest.mark.parametrize("name", sorted(INVALID_INDEX))
def test_invalid_vector_gives_its_error(name):
    data = (VECTORS / "invalid" / name).read_bytes()
    expected = INVALID_INDEX[name]
    with pytest.raises(LatentBridgeError) as info:
        if name.endswith(".bin"):
            decode_binary_frame(data)
        else:
            parse_client_message(data)
    assert info.value.code.value == expected["code"]
    if "field" in expected:
        assert info.value.field == expected["field"]


def test_live_frame_parts_must_add_up_to_the_payload():
    header, payload = decode_binary_frame((VECTORS / "binary" / "live_frame.bin").read_bytes())
    parts = split_live_parts(header, payload)
    assert parts["control.0"][:4] == b"\x89PNG"
    with pytest.raises(LatentBridgeError) as info:
        split_live_parts(header, payload[:-1])
    assert (info.value.code.value, info.value.field) == ("bad_message", "header.parts")
