"""`/options`: every A1111 option, the values clients set kept in the data folder across restarts.

GET answers every key A1111 answers (option_defaults.py) with what clients set over them, and
`sd_model_checkpoint` / `sd_checkpoint_hash` describing the selected model. POST keeps any key
(also ones only an extension reads, as a client expects to read back what it set), refuses values
that are not JSON (NaN, infinities) or not of the option's type, and loads the model
`sd_model_checkpoint` names before answering, as A1111 does. The options that change behaviour
here are listed in `HONOURED` (docs/a1111.md says how).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

from aiohttp import web

from ..jsonio import json_response
from ...protocol import InvalidRequest, LatentBridgeError
from ...store import atomic_write
from .errors import a1111_route, read_json
from .models import digest, find_checkpoint, loaded_checkpoint, switch_model
from .option_defaults import OPTION_DEFAULTS
from .state import settings, state

log = logging.getLogger(__name__)

OPTIONS_FILE = "a1111-options.json"
MAX_OPTIONS = 2000  # keys kept; a bound on what a client can make the server store
HONOURED = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format", "jpeg_quality",
            "webp_lossless", "enable_pnginfo", "tiling", "face_restoration", "img2img_fix_steps", "ESRGAN_tile",
            "ESRGAN_tile_overlap", "live_previews_enable", "upscaler_for_img2img")
_DYNAMIC = ("sd_model_checkpoint", "sd_checkpoint_hash")  # describe the model: never stored


def options_path(app: web.Application) -> Path:
    return Path(settings(app).data_dir) / OPTIONS_FILE


def load_stored(app: web.Application) -> dict[str, Any]:
    """The options clients set before (blocking; a broken file is logged and ignored)."""
    path = options_path(app)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring the A1111 options file %s: %s", path, exc)
        return {}
    return {k: v for k, v in data.items() if k not in _DYNAMIC} if isinstance(data, dict) else {}


def effective(app: web.Application, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < what clients set < this call's `override_settings`."""
    return {**OPTION_DEFAULTS, **state(app).options, **(overrides or {})}


def check_values(data: dict[str, Any], what: str = "options") -> None:
    """Refuse non-finite numbers anywhere, and known options given a value of another type."""
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise InvalidRequest(f"{what}: keys must be non-empty strings", field="body")
        if not _finite(value):
            raise InvalidRequest(f"option {key}: NaN and infinite numbers are not valid values", field=key)
        default = OPTION_DEFAULTS.get(key)
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                ok = value.is_integer()
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise InvalidRequest(f"option {key} must be a {type(default).__name__}, not {type(value).__name__}", field=key)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


async def store(app: web.Application, data: dict[str, Any]) -> None:
    """Keep `data` (already checked) over the current options, on disk too."""
    current = state(app).options
    merged = {**current, **{k: v for k, v in data.items() if k not in _DYNAMIC}}
    if len(merged) > MAX_OPTIONS:
        raise InvalidRequest(f"too many options: this server keeps at most {MAX_OPTIONS}", field="body")
    path = options_path(app)
    payload = json.dumps(merged, indent=1, sort_keys=True).encode("utf-8")
    await asyncio.to_thread(lambda: (path.parent.mkdir(parents=True, exist_ok=True), atomic_write(path, payload)))
    state(app).options = merged


async def selected_title(app: web.Application) -> tuple[str | None, str]:
    """(title, sha256) of the model A1111 calls use now."""
    current = state(app).selected_checkpoint

    def work():
        checkpoint = find_checkpoint(app, current) if current else loaded_checkpoint(app)
        if checkpoint is None:
            return None, ""
        sha = digest(app, checkpoint)
        return checkpoint.title(sha), sha

    return await asyncio.to_thread(work)


@a1111_route
async def get_options(request: web.Request) -> web.Response:
    options = effective(request.app)
    options["sd_model_checkpoint"], options["sd_checkpoint_hash"] = await selected_title(request.app)
    return json_response(options)


@a1111_route
async def set_options(request: web.Request) -> web.Response:
    app = request.app
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidRequest("options must be a JSON object", field="body")
    check_values(data)
    await select_checkpoint(app, data.get("sd_model_checkpoint"))
    await store(app, data)
    return json_response(None)


async def select_checkpoint(app: web.Application, value: Any) -> None:
    """Load the checkpoint `value` names and make it the one A1111 calls use (None: no change)."""
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise InvalidRequest("sd_model_checkpoint must be a string", field="sd_model_checkpoint")
    try:
        checkpoint = await asyncio.to_thread(find_checkpoint, app, value)
    except LatentBridgeError as exc:
        exc.field = "sd_model_checkpoint"
        raise
    await switch_model(app, checkpoint)
    state(app).selected_checkpoint = checkpoint.name
