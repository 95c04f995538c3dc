"""Upscaling and image info: /upscalers, /latent-upscale-modes, /realesrgan-models,
/face-restorers, /extra-single-image, /extra-batch-images, /png-info.

Extras upscale as A1111's postprocessing does (scale by `upscaling_resize`, or to
`upscaling_resize_w` x `upscaling_resize_h` and crop; a second upscaler blended in by its
visibility) with Lanczos, Nearest or a model upscaler (engine/upscale.py). The upscaling runs on
the GPU worker between jobs (`JobManager.run_exclusive`), tiled by the ESRGAN_tile options; an
output is bounded by the server's --max-width / --max-height.
"""

from __future__ import annotations

import asyncio
import html
import io
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, PngImagePlugin

from ..jsonio import json_response
from ... import images as image_utils
from ...infotext import LATENT_UPSCALE_MODES, a1111_parameters, parse_parameters
from ...model_hash import safetensors_header
from ...protocol import InvalidRequest, LatentBridgeError, TooLarge, Unsupported
from ..compat import b64_bytes, while_connected
from .errors import a1111_route, parse_body, read_json
from .imaging import encode_result, read_infotext
from .options import effective
from .payloads import ExtrasBatchImagesPayload, ExtrasSingleImagePayload, PngInfoPayload, _ExtrasBase
from .state import engine, jobs, settings

BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
# Image info A1111's read_info_from_image leaves out of `items`.
_IGNORED_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
                 "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop"}


def _model_upscalers(app: web.Application) -> list[dict[str, Any]]:
    """The model upscalers that can run here (spandrel installed), from the upscaler folders."""
    return [u for u in engine(app).upscalers() if u["available"]]


@a1111_route
async def upscalers(request: web.Request) -> web.Response:
    models = await asyncio.to_thread(_model_upscalers, request.app)
    items = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
             for n in BUILTIN_UPSCALERS]
    items += [{"name": u["name"], "model_name": u["name"], "model_path": u["path"], "model_url": None,
               "scale": u["scale"]} for u in models]
    return json_response(items)


def _is_esrgan_family(path: Path) -> bool:
    """ESRGAN / Real-ESRGAN weights (RRDB blocks, or the compact SRVGG net), known from the names of
    the tensors alone."""
    keys = [k for k in safetensors_header(path) if k != "__metadata__"] if path.suffix == ".safetensors" else []
    if any(".rdb1." in k.lower() for k in keys):
        return True
    return bool(keys) and all(k.startswith("body.") for k in keys) and "body.0.weight" in keys


@a1111_route
async def realesrgan_models(request: web.Request) -> web.Response:
    models = await asyncio.to_thread(_model_upscalers, request.app)
    found = await asyncio.to_thread(lambda: [u for u in models if _is_esrgan_family(Path(u["path"]))])
    return json_response([{"name": u["name"], "path": u["path"], "scale": int(u["scale"])} for u in found])


@a1111_route
async def latent_upscale_modes(request: web.Request) -> web.Response:
    return json_response([{"name": name} for name in LATENT_UPSCALE_MODES])


@a1111_route
async def face_restorers(request: web.Request) -> web.Response:
    return json_response([])  # none here: a call asking for face restoration is refused


# ---------------------------------------------------------------------------------------------
# Extras


def _check(payload: _ExtrasBase) -> None:
    if payload.gfpgan_visibility > 0 or payload.codeformer_visibility > 0:
        field = "gfpgan_visibility" if payload.gfpgan_visibility > 0 else "codeformer_visibility"
        raise Unsupported("face restoration is not available here (GET /sdapi/v1/face-restorers lists none)", field=field)
    if payload.resize_mode not in (0, 1):
        raise InvalidRequest("resize_mode must be 0 (scale by) or 1 (scale to)", field="resize_mode")
    if payload.resize_mode == 0 and not payload.upscaling_resize > 0:
        raise InvalidRequest("upscaling_resize must be above 0", field="upscaling_resize")
    if payload.resize_mode == 1 and (payload.upscaling_resize_w < 1 or payload.upscaling_resize_h < 1):
        raise InvalidRequest("upscaling_resize_w and upscaling_resize_h must be at least 1", field="upscaling_resize_w")
    if not 0 <= payload.extras_upscaler_2_visibility <= 1:
        raise InvalidRequest("extras_upscaler_2_visibility must be between 0 and 1", field="extras_upscaler_2_visibility")


def _upscale(app: web.Application, image: Image.Image, name: str, payload: _ExtrasBase, info: dict[str, Any],
             options: dict[str, Any], cancel: threading.Event) -> Image.Image:
    """A1111's postprocessing upscale with one upscaler (runs on the worker thread)."""
    cfg = settings(app)
    if payload.resize_mode == 1:
        scale = max(payload.upscaling_resize_w / image.width, payload.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{payload.upscaling_resize_w}x{payload.upscaling_resize_h}"
    else:
        scale = payload.upscaling_resize
        info["Postprocess upscale by"] = scale
    # A1111 upscales to a multiple of 8 of the scaled size.
    size = (int(image.width * scale) // 8 * 8 or 8, int(image.height * scale) // 8 * 8 or 8)
    if size[0] > cfg.max_width or size[1] > cfg.max_height:
        raise TooLarge(f"the upscaled image would be {size[0]}x{size[1]}, above this server's limit of "
                       f"{cfg.max_width}x{cfg.max_height}", field="upscaling_resize")
    out = engine(app).upscale(image, name, size, tile=int(options.get("ESRGAN_tile", 192)),
                              overlap=int(options.get("ESRGAN_tile_overlap", 8)), cancel=cancel)
    if payload.resize_mode == 1 and payload.upscaling_crop:
        w, h = payload.upscaling_resize_w, payload.upscaling_resize_h
        cropped = Image.new("RGB", (w, h))
        cropped.paste(out, box=(w // 2 - out.width // 2, h // 2 - out.height // 2))
        out = cropped
        info["Postprocess crop to"] = f"{w}x{h}"
    return out


def _postprocess(app: web.Application, image: Image.Image, payload: _ExtrasBase, options: dict[str, Any],
                 cancel: threading.Event) -> tuple[Image.Image, str]:
    """One image through A1111's upscale step: the result and its postprocessing infotext."""
    info: dict[str, Any] = {}
    first = payload.upscaler_1.strip()
    if first.lower() == "none" or not first:
        return image, ""  # A1111: no first upscaler, no upscaling
    rgb = image.convert("RGB")
    out = _upscale(app, rgb, first, payload, info, options, cancel)
    info["Postprocess upscaler"] = first
    second = payload.upscaler_2.strip()
    if second and second.lower() != "none" and payload.extras_upscaler_2_visibility > 0:
        other = _upscale(app, rgb, second, payload, info, options, cancel)
        out = Image.blend(out, other.convert(out.mode), payload.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    return out, ", ".join(f"{k}: {v}" for k, v in info.items())


def _png(image: Image.Image, source_info: dict[str, str], postprocessing: str) -> bytes:
    """The result PNG, carrying the source image's text items and the postprocessing infotext."""
    meta = PngImagePlugin.PngInfo()
    for key, value in source_info.items():
        if key != "postprocessing":
            meta.add_itxt(key, value)
    if postprocessing:
        meta.add_itxt("postprocessing", postprocessing)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta, compress_level=4)
    return out.getvalue()


async def _run_extras(request: web.Request, sources: list[tuple[str, str]], payload: _ExtrasBase) -> tuple[list[str], str]:
    app = request.app
    _check(payload)
    options = effective(app)
    max_pixels = settings(app).max_pixels
    images = [await asyncio.to_thread(_decode, data, field, max_pixels) for data, field in sources]
    cancel = threading.Event()

    def work() -> tuple[list[str], str]:
        encoded, last = [], ""
        for image in images:
            out, last = _postprocess(app, image, payload, options, cancel)
            text = {str(k): v for k, v in image.info.items() if isinstance(v, str)}
            parameters = text.pop(image_utils.PARAMETERS_CHUNK, None)
            encoded.append(encode_result(_png(out, text, last), parameters, options))
        return encoded, last

    # If the client leaves, the upscale stops at its next tile.
    encoded, info = await while_connected(request, jobs(app).run_exclusive(work), cancel.set)
    return encoded, f"<p>{html.escape(info)}</p>" if info else ""


def _decode(data: str, field: str, max_pixels: int) -> Image.Image:
    try:
        return image_utils.decode_image(b64_bytes(data, field), max_pixels=max_pixels)
    except LatentBridgeError as exc:
        exc.field = field
        raise


@a1111_route
async def extra_single_image(request: web.Request) -> web.Response:
    payload = parse_body(ExtrasSingleImagePayload, await read_json(request))
    if not payload.image:
        raise InvalidRequest("image is required", field="image")
    images, info = await _run_extras(request, [(payload.image, "image")], payload)
    return json_response({"html_info": info, "image": images[0]})


@a1111_route
async def extra_batch_images(request: web.Request) -> web.Response:
    payload = parse_body(ExtrasBatchImagesPayload, await read_json(request))
    if len(payload.imageList) > settings(request.app).max_queue:
        raise InvalidRequest(f"at most {settings(request.app).max_queue} images per call", field="imageList")
    sources = [(item.data, f"imageList.{i}.data") for i, item in enumerate(payload.imageList)]
    images, info = await _run_extras(request, sources, payload)
    return json_response({"html_info": info, "images": images})


# ---------------------------------------------------------------------------------------------
# PNG info


def _png_info(data: bytes, max_pixels: int) -> dict[str, Any]:
    image = _open(data, max_pixels)
    text, items = read_infotext(image)
    items = {k: v for k, v in items.items() if k not in _IGNORED_INFO}
    if text is None and image_utils.REQUEST_CHUNK in items:
        # Our own request, as the A1111 infotext it stands for.
        request = image_utils.read_png_request(data)
        text = a1111_parameters(request, request.seed) if request is not None else None
    return {"info": text or "", "items": items, "parameters": parse_parameters(text or "")}


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image with its metadata (pixels not decoded), after the same safety checks as always."""
    image_utils.decode_image(data, max_pixels=max_pixels)  # refuses what is not an image, or too large
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@a1111_route
async def png_info(request: web.Request) -> web.Response:
    payload = parse_body(PngInfoPayload, await read_json(request))
    data = b64_bytes(payload.image, "image")
    try:
        body = await asyncio.to_thread(_png_info, data, settings(request.app).max_pixels)
    except LatentBridgeError as exc:
        exc.field = "image"
        raise
    return json_response(body)
