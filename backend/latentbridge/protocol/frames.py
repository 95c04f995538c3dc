"""Binary websocket frames: u32 big-endian header length, UTF-8 JSON header, the payload."""

from __future__ import annotations

import struct
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from .requests import MAX_CONTROLS, PreviewFormat, StrictNumbers
from .errors import ErrorCode, LatentBridgeError, error_from_validation, loads_json


BinaryKind = Literal["upload", "preview", "result", "live_frame", "live_result"]
ImageFormat = Literal["png", "jpeg", "webp"]
MAX_BINARY_HEADER = 4096
# Kinds whose payload may be raw `rgb` pixels (with width and height in the header).
RAW_KINDS = ("preview", "live_frame", "live_result")
# The images one live frame may carry: the frame itself and the control units' maps.
LIVE_ROLE_PATTERN = rf"^(init|control\.[0-{MAX_CONTROLS - 1}])$"


class LivePart(StrictNumbers):
    """One image of a `live_frame`: its role and its length in the payload (parts follow each other)."""

    role: str = Field(..., pattern=LIVE_ROLE_PATTERN, max_length=16, description="init (the frame) or control.<i>")
    bytes: int = Field(..., ge=1, description="Length of this image in the payload")


class LiveTimings(StrictNumbers):
    """Where a live frame's time went on the server, in milliseconds (None: the stage did not run)."""

    wait: float | None = Field(None, description="From arrival to the start of its render (queue, other work)")
    decode: float | None = Field(None, description="Decoding the frame's images")
    setup: float | None = Field(None, description="Loading, LoRAs, pipeline and prompt (once per settings)")
    denoise: float | None = Field(None, description="Encoding the frame and the denoising steps")
    vae: float | None = Field(None, description="Decoding the latents (TAESD or the VAE)")
    encode: float | None = Field(None, description="Encoding the result frame")


class BinaryHeader(StrictNumbers):
    kind: BinaryKind
    format: PreviewFormat = Field(..., description="png, jpeg or webp; `rgb` (raw pixels) on preview, live_frame and "
                                  "live_result frames, with width and height")
    job_id: str | None = Field(None, max_length=100, description="Set on preview/result frames and on live frames "
                               "(the live session)")
    upload_id: str | None = Field(None, max_length=100, description="Set on upload frames; named in `submit.images`")
    index: int = Field(0, ge=0, le=1024)
    step: Annotated[int, Field(ge=0)] | None = Field(None, description="Preview frames: the step it shows")
    total: Annotated[int, Field(ge=0)] | None = None
    width: Annotated[int, Field(ge=1)] | None = None
    height: Annotated[int, Field(ge=1)] | None = None
    frame: Annotated[int, Field(ge=0, le=2**53)] | None = Field(None, description="Live frames: the client's frame "
                                                                 "number (increasing); live results name the frame")
    revision: Annotated[int, Field(ge=0)] | None = Field(None, description="Live results: the settings revision used")
    parts: list[LivePart] | None = Field(None, min_length=1, max_length=1 + MAX_CONTROLS,
                                         description="live_frame: the images in the payload, in order")
    timings: LiveTimings | None = Field(None, description="Live results: milliseconds spent per stage on the server")

    @model_validator(mode="after")
    def _ids(self) -> "BinaryHeader":
        if self.kind == "upload" and not self.upload_id:
            raise ValueError("upload frames need `upload_id`")
        if self.kind != "upload" and not self.job_id:
            raise ValueError(f"{self.kind} frames need `job_id`")
        if self.format == "rgb" and (self.kind not in RAW_KINDS or not self.width or not self.height):
            raise ValueError("raw `rgb` payloads are for preview, live_frame and live_result frames only, with width "
                             "and height")
        if self.kind.startswith("live_") and self.frame is None:
            raise ValueError(f"{self.kind} frames need `frame`")
        if (self.kind == "live_frame") != (self.parts is not None):
            raise ValueError("`parts` is required on live_frame frames and only there")
        if self.parts is not None:
            roles = [part.role for part in self.parts]
            if "init" not in roles and not any(role.startswith("control.") for role in roles):
                raise ValueError("a live frame needs an `init` or a `control.<i>` part")
            if len(set(roles)) != len(roles):
                raise ValueError("each role appears once in `parts`")
            if self.format == "rgb" and any(part.bytes != self.width * self.height * 3 for part in self.parts):
                raise ValueError("raw `rgb` parts are width * height * 3 bytes each")
        return self


def split_live_parts(header: BinaryHeader, payload: bytes) -> dict[str, bytes]:
    """A live frame's payload cut into its parts (role → bytes), or `bad_message` saying why."""
    assert header.parts is not None
    if sum(part.bytes for part in header.parts) != len(payload):
        raise LatentBridgeError(f"live frame payload is {len(payload)} bytes, its parts add up to "
                                f"{sum(part.bytes for part in header.parts)}", field="header.parts",
                                code=ErrorCode.bad_message)
    out, offset = {}, 0
    for part in header.parts:
        out[part.role] = payload[offset:offset + part.bytes]
        offset += part.bytes
    return out


def encode_binary_frame(header: BinaryHeader, payload: bytes) -> bytes:
    head = header.model_dump_json(exclude_none=True).encode()
    return struct.pack(">I", len(head)) + head + payload


def decode_binary_frame(frame: bytes) -> tuple[BinaryHeader, bytes]:
    """Split a binary frame, or raise a typed `bad_message` error saying what is wrong."""
    if len(frame) < 4:
        raise LatentBridgeError("binary frame shorter than its 4-byte header length", code=ErrorCode.bad_message)
    (n,) = struct.unpack(">I", frame[:4])
    if n == 0 or n > MAX_BINARY_HEADER:
        raise LatentBridgeError(f"binary header length {n} out of range 1..{MAX_BINARY_HEADER}", code=ErrorCode.bad_message)
    if len(frame) < 4 + n:
        raise LatentBridgeError("binary frame truncated inside its header", code=ErrorCode.bad_message)
    data = loads_json(frame[4 : 4 + n], what="binary header")
    if not isinstance(data, dict):
        raise LatentBridgeError("binary header must be a JSON object", code=ErrorCode.bad_message)
    try:
        header = BinaryHeader.model_validate(data)
    except ValidationError as exc:
        err = error_from_validation(exc, prefix="header")
        err.code = ErrorCode.bad_message
        raise err from None
    return header, frame[4 + n :]
