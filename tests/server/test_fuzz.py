"""Property-based fuzzing of the message decoders: any input gives a message or a typed error."""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentbridge.protocol import (
    BinaryHeader,
    ErrorCode,
    LatentBridgeError,
    decode_binary_frame,
    encode_binary_frame,
    parse_client_message,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "submit", "cancel", "attach", "ping", "nope"])},
    optional={
        "request": st.dictionaries(st.sampled_from(["prompt", "steps", "width", "mode", "seed", "mask", "x"]),
                                   json_values, max_size=5),
        "job_id": json_values, "protocol": json_values, "images": json_values, "token": json_values,
    },
)


def _typed(exc: LatentBridgeError) -> None:
    assert isinstance(exc.code, ErrorCode) and exc.message


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps), message_like.map(json.dumps)))
def test_client_decoder_never_crashes(data):
    try:
        message = parse_client_message(data)
    except LatentBridgeError as exc:
        _typed(exc)
    else:
        assert message.type in {"hello", "submit", "cancel", "attach", "ping"}


header_like = st.dictionaries(
    st.sampled_from(["kind", "format", "job_id", "upload_id", "index", "step", "width", "extra"]),
    st.sampled_from(["upload", "preview", "result", "png", "jpeg", "x", "", 0, -1, 5, None, 10**9]),
    max_size=6,
)


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(header_like, st.binary(max_size=50)).map(lambda t: struct.pack(">I", len(json.dumps(t[0]))) +
                                                       json.dumps(t[0]).encode() + t[1]),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=100)).map(lambda t: struct.pack(">I", t[0]) + t[1]),
))
def test_binary_decoder_never_crashes(frame):
    try:
        header, payload = decode_binary_frame(frame)
    except LatentBridgeError as exc:
        _typed(exc)
        assert exc.code is ErrorCode.bad_message
    else:
        assert decode_binary_frame(encode_binary_frame(header, payload)) == (header, payload)


@FUZZ
@given(st.text(min_size=1, max_size=50), st.binary(max_size=100), st.integers(0, 1024))
def test_binary_round_trip(upload_id, payload, index):
    header = BinaryHeader(kind="upload", format="png", upload_id=upload_id[:100], index=index)
    decoded, data = decode_binary_frame(encode_binary_frame(header, payload))
    assert decoded == header and data == payload
