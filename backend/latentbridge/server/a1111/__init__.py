"""AUTOMATIC1111-compatible subset of `/sdapi/v1`, so existing plug-ins and scripts work unchanged.

Each module translates one part of A1111's API into the server core underneath (one request type,
one job queue, the same limits and security); docs/a1111.md lists what is and isn't covered.
"""

from __future__ import annotations

from aiohttp import web

from .generation import _png_b64, img2img, interrupt, progress, skip, txt2img
from .imaging import apply_inpainting_fill
from .options import get_options, sd_models, set_options
from .samplers import resolve_sampler, samplers, schedulers
from .state import PREFIX, STATE_KEY, A1111State

__all__ = ["add_a1111_routes", "apply_inpainting_fill", "resolve_sampler", "_png_b64"]


def add_a1111_routes(app: web.Application) -> None:
    """Register the /sdapi/v1 routes (called by server.app.create_app)."""
    app[STATE_KEY] = A1111State()
    app.router.add_post(f"{PREFIX}/txt2img", txt2img)
    app.router.add_post(f"{PREFIX}/img2img", img2img)
    app.router.add_get(f"{PREFIX}/progress", progress)
    app.router.add_post(f"{PREFIX}/interrupt", interrupt)
    app.router.add_post(f"{PREFIX}/skip", skip)
    app.router.add_get(f"{PREFIX}/samplers", samplers)
    app.router.add_get(f"{PREFIX}/schedulers", schedulers)
    app.router.add_get(f"{PREFIX}/sd-models", sd_models)
    app.router.add_get(f"{PREFIX}/options", get_options)
    app.router.add_post(f"{PREFIX}/options", set_options)
