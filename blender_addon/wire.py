"""The Latent Bridge wire format, for the add-on (no bpy, no backend imports).

Blender's Python cannot import the backend package, so this module re-states the parts of
`backend/latentbridge/protocol.py` a client needs: client messages, server events and binary
frames (`u32` big-endian header length + UTF-8 JSON header + payload). The shared test vectors in
`tests/vectors/` hold both implementations to the same bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PROTOCOL_VERSION = 1
WS_PATH = "/api/v1/ws"
DEFAULT_PORT = 7423
MAX_BINARY_HEADER = 4096

BINARY_KINDS = ("upload", "preview", "result", "live_frame", "live_result")
IMAGE_FORMATS = ("png", "jpeg", "webp")
RAW_PREVIEW = "rgb"  # raw 8-bit RGB rows, top first: preview and live frames only
RAW_KINDS = ("preview", "live_frame", "live_result")
MAX_CONTROLS = 4
LIVE_ROLES = ("init",) + tuple(f"control.{i}" for i in range(MAX_CONTROLS))
TIMING_FIELDS = ("wait", "decode", "setup", "denoise", "vae", "encode")
# Header fields in the order the server serialises them (pydantic model order).
_HEADER_FIELDS = ("kind", "format", "job_id", "upload_id", "index", "step", "total", "width", "height", "frame",
                  "revision", "parts", "timings")

# Required fields of every server event type; anything more is kept as given.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "hello": ("protocol", "server", "capabilities", "model"),
    "accepted": ("job_id", "position"),
    "started": ("job_id", "seed"),
    "progress": ("job_id", "step", "total"),
    "preview": ("job_id",),  # JSON form used only by the HTTP event stream
    "result": ("job_id", "index", "seed", "width", "height", "request"),
    "done": ("job_id", "count", "elapsed_s"),
    "cancelled": ("job_id",),
    "error": ("code", "message"),
    "status": ("job_id", "state"),
    "pong": (),
    "model": ("model",),
    "live_started": ("job_id", "revision", "request", "live", "decoder"),
    "live_updated": ("job_id", "revision", "request", "live", "decoder"),
    "live_stopped": ("job_id", "reason", "frames"),
}


class WireError(Exception):
    """A frame that does not follow the protocol; `code` and `field` as the server names them."""

    def __init__(self, message: str, *, code: str = "bad_message", field: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Client messages (JSON text frames)


def hello_message(client: str = "blender", token: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL_VERSION, "client": client}
    if token:
        msg["token"] = token
    return _dumps(msg)


def submit_message(
    request: dict[str, Any],
    images: dict[str, str] | None = None,
    client_ref: str | None = None,
    priority: str | None = None,
) -> str:
    msg: dict[str, Any] = {"type": "submit", "request": request}
    if client_ref is not None:
        msg["client_ref"] = client_ref
    if images:
        msg["images"] = dict(images)
    if priority is not None:
        msg["priority"] = priority
    return _dumps(msg)


def cancel_message(job_id: str) -> str:
    return _dumps({"type": "cancel", "job_id": job_id})


def attach_message(job_id: str) -> str:
    return _dumps({"type": "attach", "job_id": job_id})


def ping_message() -> str:
    return _dumps({"type": "ping"})


def live_start_message(request: dict[str, Any], live: dict[str, Any] | None = None, client_ref: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "live_start", "request": request}
    if client_ref is not None:
        msg["client_ref"] = client_ref
    if live:
        msg["live"] = dict(live)
    return _dumps(msg)


def live_update_message(job_id: str, request: dict[str, Any] | None = None, live: dict[str, Any] | None = None) -> str:
    msg: dict[str, Any] = {"type": "live_update", "job_id": job_id}
    if request is not None:
        msg["request"] = request
    if live is not None:
        msg["live"] = dict(live)
    return _dumps(msg)


def live_stop_message(job_id: str) -> str:
    return _dumps({"type": "live_stop", "job_id": job_id})


def live_frame(job_id: str, frame: int, parts: dict[str, bytes], fmt: str = "png", width: int | None = None,
               height: int | None = None) -> bytes:
    """One live frame: its images (role → bytes: `init`, `control.<i>`) one after the other."""
    header = {"kind": "live_frame", "format": fmt, "job_id": job_id, "width": width, "height": height, "frame": frame,
              "parts": [{"role": role, "bytes": len(data)} for role, data in parts.items()]}
    return encode_binary(header, b"".join(parts.values()))


def live_parts(header: dict[str, Any], payload: bytes) -> dict[str, bytes]:
    """A live frame's payload cut into its parts (role → bytes)."""
    if sum(part["bytes"] for part in header["parts"]) != len(payload):
        raise WireError("live frame payload does not match its parts", field="header.parts")
    out, offset = {}, 0
    for part in header["parts"]:
        out[part["role"]] = payload[offset:offset + part["bytes"]]
        offset += part["bytes"]
    return out


# ---------------------------------------------------------------------------------------------
# Server events (JSON text frames)


def parse_event(text: str | bytes) -> dict[str, Any]:
    """Decode one event from the server, or raise WireError (code `bad_message`)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise WireError("event is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise WireError("event must be a JSON object with a string `type`", field="type")
    required = EVENT_FIELDS.get(data["type"])
    if required is None:
        raise WireError(f"unknown event type {data['type']!r}", field="type")
    for name in required:
        if name not in data:
            raise WireError(f"{data['type']} event lacks `{name}`", field=name)
    return data


# ---------------------------------------------------------------------------------------------
# Binary frames


def _check_header(header: dict[str, Any]) -> None:
    for name in header:
        if name not in _HEADER_FIELDS:
            raise WireError(f"header.{name}: extra inputs are not permitted", field=f"header.{name}")
    if header.get("kind") not in BINARY_KINDS:
        raise WireError(f"header.kind: must be one of {', '.join(BINARY_KINDS)}", field="header.kind")
    if header.get("format") not in IMAGE_FORMATS + (RAW_PREVIEW,):
        raise WireError(f"header.format: must be one of {', '.join(IMAGE_FORMATS + (RAW_PREVIEW,))}", field="header.format")
    for name in ("job_id", "upload_id"):
        value = header.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 100):
            raise WireError(f"header.{name}: must be a string of at most 100 characters", field=f"header.{name}")
    for name, low, high in (("index", 0, 1024), ("step", 0, None), ("total", 0, None), ("width", 1, None), ("height", 1, None),
                            ("frame", 0, 2**53), ("revision", 0, None)):
        value = header.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise WireError(f"header.{name}: out of range", field=f"header.{name}")
    if header["kind"] == "upload" and not header.get("upload_id"):
        raise WireError("header: upload frames need `upload_id`", field="header")
    if header["kind"] != "upload" and not header.get("job_id"):
        raise WireError(f"header: {header['kind']} frames need `job_id`", field="header")
    if header["format"] == RAW_PREVIEW and (header["kind"] not in RAW_KINDS or not header.get("width") or not header.get("height")):
        raise WireError("header: raw `rgb` payloads are for preview and live frames only, with width and height", field="header")
    _check_live(header)


def _check_live(header: dict[str, Any]) -> None:
    kind, parts, timings = header["kind"], header.get("parts"), header.get("timings")
    if kind.startswith("live_") and header.get("frame") is None:
        raise WireError(f"header: {kind} frames need `frame`", field="header")
    if (kind == "live_frame") != (parts is not None):
        raise WireError("header: `parts` is required on live_frame frames and only there", field="header")
    if timings is not None and (not isinstance(timings, dict) or set(timings) - set(TIMING_FIELDS)
                                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in timings.values())):
        raise WireError("header.timings: stage → milliseconds", field="header.timings")
    if parts is None:
        return
    if not isinstance(parts, list) or not 1 <= len(parts) <= 1 + MAX_CONTROLS:
        raise WireError("header.parts: 1 to 5 parts", field="header.parts")
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or set(part) != {"role", "bytes"}:
            raise WireError(f"header.parts.{i}: needs `role` and `bytes`", field=f"header.parts.{i}")
        if part["role"] not in LIVE_ROLES:
            raise WireError(f"header.parts.{i}.role: init or control.<i>", field=f"header.parts.{i}.role")
        size = part["bytes"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise WireError(f"header.parts.{i}.bytes: a positive length", field=f"header.parts.{i}.bytes")
    roles = [part["role"] for part in parts]
    if len(set(roles)) != len(roles):
        raise WireError("header: each role appears once in `parts`", field="header")
    if header["format"] == RAW_PREVIEW and any(p["bytes"] != header["width"] * header["height"] * 3 for p in parts):
        raise WireError("header: raw `rgb` parts are width * height * 3 bytes each", field="header")


def encode_binary(header: dict[str, Any], payload: bytes) -> bytes:
    """Header fields that are None are left out; `index` defaults to 0, as the server writes it."""
    full = {"index": 0, **{k: v for k, v in header.items() if v is not None}}
    _check_header(full)
    ordered = {name: full[name] for name in _HEADER_FIELDS if name in full}
    if isinstance(ordered.get("timings"), dict):
        ordered["timings"] = {k: ordered["timings"][k] for k in TIMING_FIELDS if k in ordered["timings"]}
    if isinstance(ordered.get("parts"), list):
        ordered["parts"] = [{"role": p.get("role"), "bytes": p.get("bytes")} for p in ordered["parts"]]
    head = _dumps(ordered).encode("utf-8")
    if len(head) > MAX_BINARY_HEADER:
        raise WireError("binary header too long")
    return struct.pack(">I", len(head)) + head + bytes(payload)


def upload_frame(upload_id: str, data: bytes, fmt: str = "png") -> bytes:
    return encode_binary({"kind": "upload", "format": fmt, "upload_id": upload_id}, data)


def decode_binary(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a binary frame into (header, payload), or raise WireError saying what is wrong."""
    if len(frame) < 4:
        raise WireError("binary frame shorter than its 4-byte header length")
    (n,) = struct.unpack(">I", frame[:4])
    if n == 0 or n > MAX_BINARY_HEADER:
        raise WireError(f"binary header length {n} out of range 1..{MAX_BINARY_HEADER}")
    if len(frame) < 4 + n:
        raise WireError("binary frame truncated inside its header")
    try:
        header = json.loads(bytes(frame[4 : 4 + n]))
    except (ValueError, UnicodeDecodeError):
        raise WireError("binary header is not valid JSON") from None
    if not isinstance(header, dict):
        raise WireError("binary header must be a JSON object")
    header.setdefault("index", 0)
    _check_header(header)
    return header, bytes(frame[4 + n :])


def model_summary(model: dict[str, Any]) -> str:
    """`model X (ready)`, `model X (downloading 42%)`, `model X (failed: why)` for the UI."""
    state = model.get("state") or "unknown"
    if state == "downloading" and model.get("progress") is not None:
        state = f"downloading {int(model['progress'] * 100)}%"
    elif state == "failed" and model.get("error"):
        state = f"failed: {model['error']}"
    return f"model {model.get('name')} ({state})"


def raw_preview_pixels(payload: bytes, width: int, height: int):
    """A raw `rgb` preview (or live result) as Blender wants pixels: flat float32 RGBA, bottom row
    first. Runs on the network thread, so the main thread only has to `foreach_set` it."""
    import numpy as np  # Blender ships numpy; only this function needs it

    if len(payload) != width * height * 3:
        raise WireError(f"raw preview is {len(payload)} bytes, expected {width}x{height}x3", field="payload")
    rgb = np.frombuffer(payload, np.uint8).reshape(height, width, 3)[::-1]
    rgba = np.empty((height, width, 4), np.float32)
    np.multiply(rgb, np.float32(1.0 / 255.0), out=rgba[:, :, :3])
    rgba[:, :, 3] = 1.0
    return rgba.reshape(-1)


def is_loopback(server_url: str) -> bool:
    """Whether the server runs on this machine (then raw previews cost nothing to send)."""
    host = ws_url(server_url).split("://", 1)[1].split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    host = host.strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def ws_url(server_url: str) -> str:
    """`http://host:port` / `ws://host:port` / `host:port` → the websocket URL of the API."""
    url = server_url.strip().rstrip("/")
    if "://" not in url:
        url = "ws://" + url
    scheme, rest = url.split("://", 1)
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}{WS_PATH}"


def http_url(server_url: str) -> str:
    """The HTTP base URL (`http://host:port`) of a server URL given in any of the accepted forms."""
    ws = ws_url(server_url)
    scheme, rest = ws.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.split('/', 1)[0]}"
