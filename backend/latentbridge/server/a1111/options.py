"""`/options` (and the model switch it can make) and the model listing routes."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ...protocol import InvalidRequest, LatentBridgeError
from .errors import _read_json, error_response
from .payloads import _a1111_field
from .state import _list_models, _load_model, _loaded_model, _state
from .translate import _checkpoint_name

def _model_item(name: str, filename: str) -> dict[str, Any]:
    stem = name.rsplit(".", 1)[0] if name.endswith((".safetensors", ".ckpt")) else name
    return {"title": name, "model_name": stem, "hash": None, "sha256": None, "filename": filename, "config": None}


async def sd_models(request: web.Request) -> web.Response:
    listed = await asyncio.to_thread(_list_models, request.app)  # scans the model folders
    return web.json_response([_model_item(name, filename) for name, filename in listed])


# Options A1111 clients commonly read; all round-trip, the model one also loads the model.
DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_format": "png",
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 1,
    "live_previews_image_format": "png",
    "img2img_color_correction": False,
    "inpainting_mask_weight": 1.0,
    "save_images_default": False,
}


async def get_options(request: web.Request) -> web.Response:
    options = {**DEFAULT_OPTIONS, **_state(request.app).options}
    options["sd_model_checkpoint"] = _loaded_model(request.app)
    return web.json_response(options)


def _check_option_types(data: dict[str, Any]) -> None:
    for key, value in data.items():
        default = DEFAULT_OPTIONS.get(key)
        if default is None or value is None:
            continue
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise InvalidRequest(f"option {key} must be a {type(default).__name__}", field=key)


async def set_options(request: web.Request) -> web.Response:
    app = request.app
    try:
        data = await _read_json(request)
        if not isinstance(data, dict):
            raise InvalidRequest("options must be a JSON object", field="body")
        _check_option_types(data)
        checkpoint = _checkpoint_name(data.get("sd_model_checkpoint"))
        if checkpoint is not None and checkpoint != _loaded_model(app):
            # A1111 loads the checkpoint before answering; so do we (on the worker, not the loop).
            await _load_model(app, checkpoint)
    except LatentBridgeError as exc:
        return error_response(_a1111_field(exc))
    # Unknown options are ignored, as A1111's opts.set ignores them.
    _state(app).options.update({k: v for k, v in data.items() if k in DEFAULT_OPTIONS and v is not None})
    return web.json_response(None)
