"""Websocket messages, client → server (JSON text frames), live-session messages included."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError

from .requests import (MAX_CONTROLS, MAX_REFERENCES, PROTOCOL_VERSION, GenerationRequest, ImageRole, Strict,
                       StrictNumbers)
from .errors import ErrorCode, LatentBridgeError, error_from_validation, loads_json


class HelloMessage(Strict):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    client: str = Field("", max_length=200)
    token: str | None = Field(None, max_length=512, description="Alternative to the Authorization header")


class SubmitMessage(Strict):
    """Submit a job. Images are uploaded first as binary `upload` frames; `images` maps a role
    ("init", "mask", "control.0", "reference.0", ...) to the `upload_id` of such a frame."""

    type: Literal["submit"] = "submit"
    client_ref: str | None = Field(None, max_length=200, description="Echoed in `accepted` to correlate")
    request: GenerationRequest
    images: dict[ImageRole, str] = Field(default_factory=dict, max_length=2 + MAX_CONTROLS + MAX_REFERENCES)
    priority: Literal["interactive", "normal", "batch"] = "normal"


class CancelMessage(Strict):
    type: Literal["cancel"] = "cancel"
    job_id: str = Field(..., max_length=100)


class AttachMessage(Strict):
    """Re-attach to a job (after a reconnect): the server replies with its status and, for a
    finished job, re-sends its results."""

    type: Literal["attach"] = "attach"
    job_id: str = Field(..., max_length=100)


class PingMessage(Strict):
    type: Literal["ping"] = "ping"


# --------------------------------------------------------------------------------------------
# Live mode (docs/live.md): a session renders every frame the client sends, latest wins.


class LivePreset(str, Enum):
    """Few-step settings a live session runs with (docs/live.md lists the checkpoints and LoRAs
    each one is for; a LoRA goes in `request.loras`)."""

    custom = "custom"  # the request's own sampler, schedule, steps and guidance
    turbo = "turbo"  # SD-Turbo / SDXL-Turbo checkpoints: euler, trailing timesteps, guidance off
    lcm = "lcm"  # LCM checkpoints, or an LCM-LoRA: LCM scheduler, guidance off
    lightning = "lightning"  # SDXL-Lightning LoRAs or UNets: euler, trailing timesteps, guidance off
    hyper = "hyper"  # Hyper-SD N-step LoRAs: DDIM, trailing timesteps, guidance off
    tcd = "tcd"  # TCD LoRAs: the TCD scheduler, guidance off


class LiveOptions(StrictNumbers):
    """How a live session renders its frames (fixed for the session; `live_update` changes them)."""

    preset: LivePreset = Field(LivePreset.turbo, description="Few-step settings (custom: the request's own)")
    steps: int | None = Field(None, ge=1, le=50, description="Denoising steps each frame runs (img2img: after "
                              "`strength`); the preset's when absent (turbo 1, the others 4; custom: the request's)")
    decoder: Literal["taesd", "vae"] = Field("taesd", description="taesd: the tiny autoencoder (AutoencoderTiny) "
                                             "encodes and decodes the frames (fast); vae: the model's own VAE. "
                                             "Without a configured TAESD the server uses the VAE and says so")
    format: Literal["jpeg", "png", "rgb"] = Field("jpeg", description="Encoding of the result frames; rgb: raw "
                                                  "8-bit RGB rows, for clients on the same machine")


class LiveStartMessage(Strict):
    """Start a live session: every `live_frame` it is sent becomes one img2img (or, with control
    units, txt2img) generation of `request`, at most one pending per session (a newer frame
    replaces it). The server answers `live_started` with the session's `job_id`."""

    type: Literal["live_start"] = "live_start"
    client_ref: str | None = Field(None, max_length=200, description="Echoed in `live_started` to correlate")
    request: GenerationRequest
    live: LiveOptions = Field(default_factory=LiveOptions)


class LiveUpdateMessage(Strict):
    """Change a running session's request and/or options (a new prompt, strength, seed, units...)
    without restarting it; the last frame is rendered again with them when it carries the parts
    they take (a change of control units waits for the client's next frame)."""

    type: Literal["live_update"] = "live_update"
    job_id: str = Field(..., max_length=100)
    request: GenerationRequest | None = None
    live: LiveOptions | None = None


class LiveStopMessage(Strict):
    type: Literal["live_stop"] = "live_stop"
    job_id: str = Field(..., max_length=100)


ClientMessage = Annotated[
    Union[HelloMessage, SubmitMessage, CancelMessage, AttachMessage, PingMessage, LiveStartMessage, LiveUpdateMessage,
          LiveStopMessage], Field(discriminator="type")
]
_client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


CLIENT_MESSAGE_TYPES = ("hello", "submit", "cancel", "attach", "ping", "live_start", "live_update", "live_stop")


def parse_client_message(text: str | bytes) -> Any:
    """Decode one JSON text frame from a client, or raise a typed LatentBridgeError."""
    data = loads_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise LatentBridgeError("message must be a JSON object with a string `type`", field="type", code=ErrorCode.bad_message)
    if data["type"] not in CLIENT_MESSAGE_TYPES:
        raise LatentBridgeError(f"unknown message type {data['type']!r}", field="type", code=ErrorCode.bad_message)
    try:
        return _client_message_adapter.validate_python(data)
    except ValidationError as exc:
        err = error_from_validation(exc)
        # The discriminator is the first element of pydantic's location; drop it.
        if err.field and err.field.startswith(data["type"] + "."):
            err.field = err.field[len(data["type"]) + 1 :]
            err.message = err.message[len(data["type"]) + 1 :]
        raise err from None
