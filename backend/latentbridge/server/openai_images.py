"""An OpenAI-compatible images API: `POST /v1/images/generations`, `POST /v1/images/edits`,
`GET /v1/models`, for chat front-ends and anything built on the `openai` SDK.

Each call translates into our `GenerationRequest` and runs as a job through the same queue,
limits and security as every other client (compat.run_job), so it is in the history too. The API
key is the server's bearer token (any key when it has none); Origin/Host checks apply as
everywhere. `quality` maps to steps, `size` to width x height; `seed`, `negative_prompt`, `steps`,
`guidance_scale`, `sampler` and (for edits) `strength` are extensions. docs/openai.md has the tables.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .jsonio import json_response, read_json
from ..protocol import (
    MAX_BATCH,
    MAX_SEED,
    MAX_STEPS,
    ErrorCode,
    GenerationRequest,
    InvalidRequest,
    LatentBridgeError,
    Mode,
    Sampler,
    Unsupported,
    error_from_validation,
)
from .app import ENGINE_KEY, SETTINGS_KEY
from .compat import decode_image, run_job
from .security import list_models

API = "/v1"
# Model names OpenAI clients send by default: they mean "the model this server has loaded".
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                 "chatgpt-image-latest")
QUALITY_STEPS = {"low": 12, "medium": 20, "standard": 20, "auto": 20, "high": 40, "hd": 40, "xhigh": 50, "max": 60}
NATIVE_SIZE = {"sd1": 512, "sd2": 768}  # "auto" size for these families; 1024 for the others
OUTPUT_FORMATS = ("png", "jpeg", "webp")
_STATUS = {ErrorCode.unauthorized: 401, ErrorCode.forbidden: 403, ErrorCode.unknown_model: 404,
           ErrorCode.too_large: 413, ErrorCode.queue_full: 429, ErrorCode.internal: 500,
           ErrorCode.out_of_memory: 500, ErrorCode.model_load_failed: 500, ErrorCode.model_not_ready: 503,
           ErrorCode.timeout: 504}


class _Params(BaseModel):
    """The fields both calls take (OpenAI's, then our extensions)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=10_000)
    model: str | None = None
    n: int | None = Field(1, ge=1, le=10)
    quality: str | None = None
    response_format: str | None = None
    size: str | None = None
    user: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: str | None = None
    stream: bool | None = None
    partial_images: int | None = None
    safety_identifier: str | None = None
    complexity: str | None = None
    frame_count: int | None = None
    frame_duration_ms: int | None = None
    svg: Any = None
    # Extensions
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: str = Field("", max_length=10_000)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    sampler: Sampler | None = None


class GenerationParams(_Params):
    style: str | None = None


class EditParams(_Params):
    input_fidelity: str | None = None
    strength: float | None = Field(None, ge=0.0, le=1.0)


def openai_error(exc: LatentBridgeError, status: int | None = None) -> web.Response:
    """Our typed error body plus OpenAI's `error` object, which the `openai` SDK reads."""
    status = status or _STATUS.get(exc.code, 400)
    body = exc.to_event().model_dump(mode="json")
    kind = "authentication_error" if status == 401 else ("server_error" if status >= 500 else "invalid_request_error")
    body["error"] = {"message": exc.message, "type": kind, "param": exc.field, "code": exc.code.value}
    headers = {"Retry-After": str(getattr(exc, "retry_after_s", 5))} if status in (429, 503) else None
    return json_response(body, status=status, headers=headers)


def _route(fn):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except LatentBridgeError as exc:
            return openai_error(exc)

    wrapped.__name__ = fn.__name__
    return wrapped


def _parse(model: type[_Params], data: Any) -> _Params:
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = error_from_validation(exc)
        if exc.errors()[0].get("type") == "extra_forbidden":
            error.message = f"Unrecognized request argument supplied: {error.field}"
        raise error from None


# ---------------------------------------------------------------------------------------------
# Translation


def _size(value: str | None, family: str | None, default: tuple[int, int] | None = None) -> tuple[int, int]:
    if value in (None, "", "auto"):
        if default is not None:
            return default
        side = NATIVE_SIZE.get(family or "sd1", 1024)
        return side, side
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise InvalidRequest(f"size {value!r}: use WIDTHxHEIGHT (e.g. 1024x1024) or auto", field="size") from None
    if width % 8 or height % 8:
        raise InvalidRequest(f"size {value!r}: width and height must be multiples of 8", field="size")
    return width, height


def _check(params: _Params) -> None:
    if params.stream:
        raise Unsupported("streaming (stream: true) is not supported: ask for the finished image", field="stream")
    if params.background == "transparent":
        raise Unsupported("transparent backgrounds are not supported: use opaque or auto", field="background")
    if params.output_format not in (None, *OUTPUT_FORMATS):
        raise Unsupported(f"output_format {params.output_format!r} is not supported: png, jpeg or webp", field="output_format")
    if (params.frame_count or 1) > 1 or params.svg is not None:
        raise Unsupported("animations and SVG output are not supported", field="frame_count" if params.svg is None else "svg")
    if params.response_format not in (None, "b64_json", "url"):
        raise InvalidRequest("response_format must be b64_json or url", field="response_format")
    if params.quality not in (None, *QUALITY_STEPS):
        raise InvalidRequest(f"quality must be one of {', '.join(QUALITY_STEPS)}", field="quality")


def _loaded_id(app: web.Application) -> str:
    """The loaded model as /v1/models lists it (a configured path shows as its file name)."""
    name = app[ENGINE_KEY].status.name or app[SETTINGS_KEY].model
    return Path(name).name if Path(name).is_absolute() else name


def _request(app: web.Application, params: _Params, size: tuple[int, int], mode: Mode = Mode.txt2img,
             **fields: Any) -> GenerationRequest:
    # OpenAI's model names and the loaded model's id mean the loaded model; others are ours.
    model = None if params.model in (None, "", *OPENAI_MODELS, _loaded_id(app)) else params.model
    values: dict[str, Any] = {
        "mode": mode,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "seed": params.seed,
        "steps": params.steps or QUALITY_STEPS.get(params.quality or "auto", 20),
        "width": size[0],
        "height": size[1],
        "model": model,
        **fields,
    }
    if params.guidance_scale is not None:
        values["guidance"] = params.guidance_scale
    if params.sampler is not None:
        values["sampler"] = params.sampler
    try:
        return GenerationRequest.model_validate(values)
    except ValidationError as exc:
        error = error_from_validation(exc)
        error.field = {"width": "size", "height": "size", "guidance": "guidance_scale"}.get(error.field, error.field)
        raise error from None


def _batches(n: int, limit: int) -> list[int]:
    limit = max(1, min(limit, MAX_BATCH))
    return [min(limit, n - start) for start in range(0, n, limit)]


async def _run(request: web.Request, params: _Params, generation: GenerationRequest,
               init: Image.Image | None = None, mask: Image.Image | None = None) -> web.Response:
    """Run `n` images (in batches the server allows) and answer OpenAI's ImagesResponse."""
    settings = request.app[SETTINGS_KEY]
    owner = f"openai:{request.remote or 'local'}"
    data: list[dict[str, Any]] = []
    seed = generation.seed
    for count in _batches(params.n or 1, settings.max_batch):
        batch = generation.model_copy(update={"batch_size": count, "seed": seed})
        outcome = await run_job(request, batch, init, mask, owner=owner)
        if outcome.state != "done":
            raise LatentBridgeError("the job was cancelled", code=ErrorCode.cancelled)
        seed = (outcome.seeds[-1] + 1) % (MAX_SEED + 1)
        for index, png in enumerate(outcome.pngs):
            item: dict[str, Any] = {"revised_prompt": generation.prompt}
            if params.response_format == "url":
                item["url"] = f"{request.scheme}://{request.host}/api/v1/jobs/{outcome.job_id}/results/{index}"
            else:
                item["b64_json"] = await asyncio.to_thread(_encode, png, params.output_format or "png",
                                                          params.output_compression)
            data.append(item)
    size = f"{generation.width}x{generation.height}"
    return json_response({"created": int(time.time()), "data": data, "background": "opaque",
                              "output_format": params.output_format or "png", "quality": params.quality or "auto",
                              "size": size})


def _encode(png: bytes, fmt: str, compression: int | None) -> str:
    if fmt == "png":
        return base64.b64encode(png).decode("ascii")
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
    out = io.BytesIO()
    quality = 100 - compression if compression is not None else 90  # OpenAI's compression is a percentage
    image.save(out, format="JPEG" if fmt == "jpeg" else "WEBP", quality=max(1, quality))
    return base64.b64encode(out.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Routes


async def _json(request: web.Request) -> Any:
    return await read_json(request)  # strict: NaN/Infinity and over-deep nesting refused


@_route
async def generations(request: web.Request) -> web.Response:
    params = _parse(GenerationParams, await _json(request))
    _check(params)
    family = request.app[ENGINE_KEY].status.family
    return await _run(request, params, _request(request.app, params, _size(params.size, family)))


async def _read_form(request: web.Request) -> tuple[dict[str, Any], list[bytes], bytes | None]:
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("images/edits takes multipart/form-data (the image as a file)", field="Content-Type")
    fields: dict[str, Any] = {}
    images: list[bytes] = []
    mask = None
    async for part in await request.multipart():
        name = part.name or ""
        if name in ("image", "image[]"):
            images.append(bytes(await part.read()))
        elif name == "mask":
            mask = bytes(await part.read())
        elif name == "markup":
            raise Unsupported("markup is not supported", field="markup")
        elif name:
            fields[name] = await part.text()
    return fields, images, mask


def _edit_mask(mask: Image.Image) -> Image.Image:
    """OpenAI's mask: its fully transparent pixels are the ones to edit → ours (white = repaint)."""
    if "A" not in mask.getbands():
        raise InvalidRequest("mask must be a PNG with transparency: transparent pixels are the ones to edit", field="mask")
    return mask.getchannel("A").point(lambda a: 255 if a < 128 else 0)


@_route
async def edits(request: web.Request) -> web.Response:
    app = request.app
    fields, images, mask_bytes = await _read_form(request)
    if len(images) != 1:
        raise InvalidRequest("send exactly one image (this server edits one image at a time)", field="image")
    params = _parse(EditParams, {k: _form_value(v) for k, v in fields.items()})
    _check(params)
    init = await asyncio.to_thread(decode_image, app, images[0], "image")
    mask = None
    if mask_bytes is not None:
        mask = _edit_mask(await asyncio.to_thread(decode_image, app, mask_bytes, "mask"))
    elif "A" in init.getbands() and init.getchannel("A").getextrema()[0] < 255:
        mask = _edit_mask(init)  # no mask: the image's own transparency says what to edit (as dall-e-2)
    default = (init.width - init.width % 8, init.height - init.height % 8)
    size = _size(params.size, app[ENGINE_KEY].status.family, default=default)
    if mask is not None:
        if mask.size != init.size:
            raise InvalidRequest(f"mask is {mask.width}x{mask.height} but the image is {init.width}x{init.height}",
                                 field="mask")
        generation = _request(app, params, size, Mode.inpaint, strength=params.strength or 1.0,
                              mask={"blur": 4, "invert": False})
    else:
        generation = _request(app, params, size, Mode.img2img, strength=params.strength or 0.75)
    return await _run(request, params, generation, init.convert("RGB"), mask)


def _form_value(text: str) -> Any:
    """Form fields arrive as text: numbers and booleans as JSON would have them."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _models(app: web.Application) -> list[dict[str, Any]]:
    settings = app[SETTINGS_KEY]
    started = int(app.get(_STARTED_KEY, time.time()))
    entries = [{"id": _loaded_id(app), "object": "model", "created": started, "owned_by": "latentbridge"}]
    for model in list_models(settings):
        if model["name"] != entries[0]["id"]:
            entries.append({"id": model["name"], "object": "model", "created": started, "owned_by": "latentbridge"})
    return entries


@_route
async def models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": await asyncio.to_thread(_models, request.app)})


@_route
async def model(request: web.Request) -> web.Response:
    wanted = request.match_info["model"]
    for entry in await asyncio.to_thread(_models, request.app):
        if entry["id"] == wanted:
            return json_response(entry)
    raise LatentBridgeError(f"The model '{wanted}' does not exist", field="model", code=ErrorCode.unknown_model)


def _not_found_middleware():
    """Unknown /v1 routes answer OpenAI's 404 "Invalid URL" error."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            if not request.path.startswith(API + "/"):
                raise
            return openai_error(LatentBridgeError(f"Invalid URL ({request.method} {request.path})",
                                                  code=ErrorCode.bad_message), status=404)

    return middleware


_STARTED_KEY = web.AppKey("latentbridge_openai_started", float)


def add_openai_routes(app: web.Application) -> None:
    """Register the /v1 images routes (called by server.app.create_app)."""
    app[_STARTED_KEY] = time.time()
    app.middlewares.append(_not_found_middleware())
    app.router.add_post(f"{API}/images/generations", generations)
    app.router.add_post(f"{API}/images/edits", edits)
    app.router.add_get(f"{API}/models", models)
    app.router.add_get(f"{API}/models/{{model}}", model)
