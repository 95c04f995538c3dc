import pytest

from latentbridge import protocol as p


def test_request_defaults_roundtrip_json():
    req = p.parse_request({"prompt": "bronze", "seed": 3})
    again = p.GenerationRequest.model_validate_json(req.model_dump_json())
    assert again == req


@pytest.mark.parametrize(
    "data, field",
    [
        ({"width": 100}, "width"),
        ({"steps": 0}, "steps"),
        ({"strength": 1.5}, "strength"),
        ({"sampler": "nope"}, "sampler"),
        ({"mask": {"blur": -1}}, "mask.blur"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_request_names_field(data, field):
    with pytest.raises(p.InvalidRequest) as info:
        p.parse_request(data)
    assert info.value.field == field
    assert info.value.code is p.ErrorCode.invalid_request


def test_outpaint_needs_extent():
    with pytest.raises(p.InvalidRequest):
        p.parse_request({"mode": "outpaint"})
    assert p.parse_request({"mode": "outpaint", "outpaint": {"right": 64}}).outpaint.right == 64


def test_binary_frame_roundtrip_and_errors():
    header = p.BinaryHeader(kind="preview", format="jpeg", job_id="j1", step=3, total=10)
    frame = p.encode_binary_frame(header, b"\xff\xd8data")
    assert p.decode_binary_frame(frame) == (header, b"\xff\xd8data")
    for bad in [b"", b"\x00\x00", b"\x00\x00\x00\x00", b"\x00\x00\x00\x10{}", b"\x00\x00\x00\x02[]",
                b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x03abc"]:
        with pytest.raises(p.LatentBridgeError) as info:
            p.decode_binary_frame(bad)
        assert info.value.code is p.ErrorCode.bad_message


def test_client_message_errors():
    with pytest.raises(p.LatentBridgeError) as info:
        p.parse_client_message("{not json")
    assert info.value.code is p.ErrorCode.bad_message
    with pytest.raises(p.LatentBridgeError) as info:
        p.parse_client_message('{"type": "explode"}')
    assert info.value.field == "type"
    with pytest.raises(p.InvalidRequest) as info:
        p.parse_client_message('{"type": "submit", "request": {"steps": 0}}')
    assert info.value.field == "request.steps"
