"""Schemathesis hooks for fuzzing our OpenAPI document (loaded with SCHEMATHESIS_HOOKS).

- Images: the spec says `format: byte` / multipart parts `image/png, image/jpeg, image/webp`.
  Schemathesis would send random base64 / random bytes, which the server rightly refuses with a
  documented 422 (`bad_image`). To fuzz everything *around* the images, valid images are
  generated instead: 64x64 PNG, JPEG and WebP (all one size, so a mask always matches its init).
- `no_nan_in_responses`: every JSON response parses as strict JSON (no NaN / Infinity).
- `valid_bodies_accepted`: schemathesis' positive_data_acceptance, except for the one rejection
  the spec documents but cannot express: 413 for a request over the pixel budget. It is allowed
  only when the request really is over the budget (computed here, independently of the server).
"""

from __future__ import annotations

import base64
import io
import json
import os

import jsonschema_rs
import schemathesis
from hypothesis import strategies as st
from PIL import Image

MAX_PIXELS = int(os.environ.get("LATENTBRIDGE_FUZZ_MAX_PIXELS", "32768"))
IMAGE_SIDE = 64
ACCEPTED = set(range(200, 400)) | {401, 403, 404, 409, 429}  # as positive_data_acceptance; 5xx: not_a_server_error


def _image(fmt: str, color: tuple[int, int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (IMAGE_SIDE, IMAGE_SIDE), color if mode == "RGB" else color[0]).save(out, format=fmt)
    return out.getvalue()


IMAGES = {
    "image/png": [_image("PNG", (200, 40, 40)), _image("PNG", (255, 0, 0), "L")],
    "image/jpeg": [_image("JPEG", (40, 200, 40))],
    "image/webp": [_image("WEBP", (40, 40, 200))],
}
for media_type, payloads in IMAGES.items():
    schemathesis.openapi.media_type(media_type, st.sampled_from(payloads))
schemathesis.openapi.format("byte", st.sampled_from(
    [base64.b64encode(p).decode() for payloads in IMAGES.values() for p in payloads]))


@schemathesis.check
def no_nan_in_responses(ctx, response, case):
    if "json" not in response.headers.get("content-type", [""])[0]:
        return None

    def refuse(name: str):
        raise AssertionError(f"response contains {name}, which is not JSON")

    json.loads(response.content, parse_constant=refuse)
    return None


def _over_pixel_budget(body) -> bool:
    request = body.get("request") if isinstance(body, dict) else None
    if not isinstance(request, dict):
        return False
    batch = request.get("batch_size", 1)
    if request.get("mode") == "outpaint":
        extent = request.get("outpaint") or {}
        width = IMAGE_SIDE + extent.get("left", 0) + extent.get("right", 0)
        height = IMAGE_SIDE + extent.get("top", 0) + extent.get("bottom", 0)
    else:
        width, height = request.get("width", 512), request.get("height", 512)
        hires = _hires_size(request)
        if hires is not None:  # the second pass's size is what the budget counts
            width, height = hires
    return width * height * batch > MAX_PIXELS


def _hires_size(request: dict) -> tuple[int, int] | None:
    """The final size of a hires request, from the protocol's own rule (HiresOptions.final_size)."""
    from latentbridge.protocol import HiresOptions

    hires = request.get("hires")
    if not isinstance(hires, dict):
        return None
    try:
        return HiresOptions.model_validate(hires).final_size(request.get("width", 512), request.get("height", 512))
    except (ValueError, ZeroDivisionError):
        return None


def _hires_out_of_range(body) -> bool:
    """A hires pass whose final size leaves 64..MAX_SIDE: a documented 422 (arithmetic on fields)."""
    from latentbridge.protocol import MAX_SIDE

    request = body.get("request") if isinstance(body, dict) else None
    size = _hires_size(request) if isinstance(request, dict) else None
    return size is not None and not all(64 <= side <= MAX_SIDE for side in size)


def _control_ends_before_it_starts(body) -> bool:
    """A control unit whose `end` is not after its `start`: refused with 422 (documented; JSON
    Schema cannot compare two fields)."""
    request = body.get("request") if isinstance(body, dict) else None
    units = request.get("controls") if isinstance(request, dict) else None
    return isinstance(units, list) and any(
        isinstance(u, dict) and u.get("end", 1.0) <= u.get("start", 0.0) for u in units)


_validators: dict[tuple, object] = {}


def _body_is_schema_valid(case) -> bool:
    """Whether the body really is valid against the operation's schema. Schemathesis marks a case
    positive by how it was generated; its stateful and coverage phases sometimes send one that is
    not (a negative `seed` from a link, "" for the object-valued multipart `request` part), and
    refusing those is right."""
    if case.body is None:
        return True
    raw = case.operation.schema.raw_schema
    media = case.media_type or "application/json"
    content = raw["paths"][case.path][case.method.lower()].get("requestBody", {}).get("content", {})
    if media not in content:
        return True
    key = (case.path, case.method, media)
    if key not in _validators:
        _validators[key] = jsonschema_rs.validator_for({**content[media]["schema"], "components": raw["components"]})
    body = case.body
    if media.startswith("multipart/") and isinstance(body, dict):
        body = {k: "" if isinstance(v, (bytes, bytearray)) else v for k, v in body.items()}  # binary parts
    try:
        return _validators[key].is_valid(body)
    except (TypeError, ValueError):
        return False


@schemathesis.check
def valid_bodies_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not _body_is_schema_valid(case):
        return None
    status = response.status_code
    if status in ACCEPTED:
        return None
    if status == 413 and _over_pixel_budget(case.body):
        return None  # the documented pixel budget
    if status == 422 and _control_ends_before_it_starts(case.body):
        return None  # the documented order of a control unit's start and end
    if status == 422 and _hires_out_of_range(case.body):
        return None  # the documented size rule of the hires pass
    raise AssertionError(f"a schema-valid request was refused with {status}: {response.content[:300]!r}")
