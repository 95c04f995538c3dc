"""AUTOMATIC1111-compatible `/sdapi/v1`, so existing plug-ins and scripts work unchanged.

Each module translates one part of A1111's API into the server core underneath (one request type,
one job queue, the same limits and security): generation (txt2img/img2img), progress, options,
models (checkpoints, VAEs, LoRAs, embeddings), extras (upscaling, PNG info) and info (scripts,
styles, flags). Routes A1111 has only through extensions answer as A1111 does without them.
docs/a1111.md lists what is covered, route by route and field by field.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from ...model_hash import HashCache
from . import controlnet, extras, info, models, options, progress, samplers
from .errors import not_found_middleware
from .generation import img2img, txt2img
from .imaging import apply_inpainting_fill
from .progress import _png_b64
from .samplers import resolve_sampler
from .state import PREFIX, STATE_KEY, A1111State

__all__ = ["add_a1111_routes", "apply_inpainting_fill", "resolve_sampler", "_png_b64", "PREFIX"]

_HASHER_KEY = web.AppKey("latentbridge_a1111_hasher", asyncio.Task)

ROUTES = (
    ("POST", "txt2img", txt2img),
    ("POST", "img2img", img2img),
    ("GET", "progress", progress.progress),
    ("POST", "interrupt", progress.interrupt),
    ("POST", "skip", progress.skip),
    ("GET", "options", options.get_options),
    ("POST", "options", options.set_options),
    ("GET", "samplers", samplers.samplers),
    ("GET", "schedulers", samplers.schedulers),
    ("GET", "sd-models", models.sd_models),
    ("POST", "refresh-checkpoints", models.refresh),
    ("GET", "sd-vae", models.sd_vae),
    ("POST", "refresh-vae", models.refresh),
    ("GET", "loras", models.loras),
    ("POST", "refresh-loras", models.refresh),
    ("GET", "embeddings", models.embeddings),
    ("POST", "refresh-embeddings", models.refresh),
    ("GET", "hypernetworks", models.hypernetworks),
    ("GET", "memory", models.memory),
    ("GET", "upscalers", extras.upscalers),
    ("GET", "latent-upscale-modes", extras.latent_upscale_modes),
    ("GET", "realesrgan-models", extras.realesrgan_models),
    ("GET", "face-restorers", extras.face_restorers),
    ("POST", "extra-single-image", extras.extra_single_image),
    ("POST", "extra-batch-images", extras.extra_batch_images),
    ("POST", "png-info", extras.png_info),
    ("GET", "scripts", info.scripts),
    ("GET", "script-info", info.script_info),
    ("GET", "extensions", info.extensions),
    ("GET", "prompt-styles", info.prompt_styles),
    ("GET", "cmd-flags", info.cmd_flags),
)


async def _start(app: web.Application) -> None:
    state = app[STATE_KEY]
    state.options = await asyncio.to_thread(options.load_stored, app)
    app[_HASHER_KEY] = asyncio.create_task(models.hash_in_background(app), name="latentbridge-a1111-hashes")


async def _stop(app: web.Application) -> None:
    task = app.get(_HASHER_KEY)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def add_a1111_routes(app: web.Application) -> None:
    """Register the /sdapi/v1 routes (called by server.app.create_app)."""
    from ..app import SETTINGS_KEY

    data_dir = app[SETTINGS_KEY].data_dir
    app[STATE_KEY] = A1111State(hashes=HashCache(data_dir / "model-hashes.json"))
    app.middlewares.append(not_found_middleware())
    for method, path, handler in ROUTES:
        app.router.add_route(method, f"{PREFIX}/{path}", handler)
    for method, path, handler in controlnet.ROUTES:  # sd-webui-controlnet's own routes
        app.router.add_route(method, path, handler)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
