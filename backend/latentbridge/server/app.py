"""The aiohttp application factory: settings, engine, job manager, middlewares and routes."""

from __future__ import annotations

import logging
import weakref
from typing import Any

from aiohttp import WSCloseCode, web

from .. import __version__
from ..jobs import JobManager
from ..protocol import PROTOCOL_VERSION, Capabilities, Limits, Mode
from ..settings import Settings
from ..store import ResultStore
from .errors import error_middleware
from .limits import body_limit_middleware
from .security import security_middleware
from .throttle import AuthThrottle
from .uploads import add_upload_budget

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("latentbridge_settings", Settings)
ENGINE_KEY = web.AppKey("latentbridge_engine", Any)
JOBS_KEY = web.AppKey("latentbridge_jobs", JobManager)
WEBSOCKETS_KEY = web.AppKey("latentbridge_websockets", weakref.WeakSet)  # live ws.Connection objects
AUTH_THROTTLE_KEY = web.AppKey("latentbridge_auth_throttle", AuthThrottle)

SERVER_NAME = f"latentbridge/{__version__}"


def capabilities(app: web.Application) -> Capabilities:
    """What this server can do now; samplers and seamless follow the loaded model's family
    (SD3/Flux sample with flow-matching Euler only and cannot tile)."""
    settings, engine = app[SETTINGS_KEY], app[ENGINE_KEY]
    samplers, seamless = engine.usable_samplers(), engine.usable_seamless()
    decoders = ["latent2rgb", "vae", "none"] + (["taesd"] if settings.taesd else [])
    return Capabilities(
        modes=list(Mode), samplers=samplers, families=list(engine.capabilities_families), seamless=seamless,
        preview_decoders=decoders, **engine.control_capabilities(),
        limits=Limits(max_width=settings.max_width, max_height=settings.max_height, max_pixels=settings.max_pixels,
                      max_steps=settings.max_steps, max_batch=settings.max_batch,
                      max_message_bytes=settings.max_message_bytes, max_queue=settings.max_queue),
    )


async def _start_jobs(app: web.Application) -> None:
    await app[JOBS_KEY].start()


async def _close_websockets(app: web.Application) -> None:
    # Graceful shutdown: tell every client we are going away; their jobs' results stay on disk.
    for conn in list(app[WEBSOCKETS_KEY]):
        await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


async def _stop_jobs(app: web.Application) -> None:
    await app[JOBS_KEY].stop()


def create_app(settings: Settings, engine: Any = None, *, runner: Any = None,
               store: ResultStore | None = None) -> web.Application:
    """Build the app. `engine` defaults to a new `latentbridge.engine.Engine(settings)`; the model
    loads in the background once the app starts, so the server answers at once. `runner` runs the
    jobs (default: the engine on one worker thread, jobs/local.py; with Ray: cluster/runner.py,
    given with the cluster's view of the engine and the store it reads inputs from)."""
    if engine is None:
        from ..engine import Engine

        engine = Engine(settings)
    throttle = AuthThrottle(settings.auth_backoff_max_s)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware(), security_middleware(settings, throttle), body_limit_middleware(settings)],
    )
    app[SETTINGS_KEY] = settings
    app[AUTH_THROTTLE_KEY] = throttle
    add_upload_budget(app, settings)
    app[ENGINE_KEY] = engine
    store = store if store is not None else ResultStore(settings.data_dir, settings.retention_jobs)
    app[JOBS_KEY] = JobManager(engine, store, settings, runner=runner)
    app[WEBSOCKETS_KEY] = weakref.WeakSet()

    from .catalog import add_catalog_routes
    from .openapi import add_openapi_route
    from .rest import add_rest_routes
    from .page import add_page_routes
    from .ws import add_ws_route

    add_ws_route(app)
    add_rest_routes(app)
    add_openapi_route(app)
    add_catalog_routes(app)  # capabilities, LoRA list, a job's stored inputs
    add_page_routes(app)  # the web page at /
    _add_optional_routes(app)

    app.on_startup.append(_start_jobs)
    app.on_shutdown.append(_close_websockets)
    app.on_cleanup.append(_stop_jobs)
    return app


def _add_optional_routes(app: web.Application) -> None:
    """The A1111- and OpenAI-compatible routes, when those modules are present and importable."""
    try:
        from .a1111 import add_a1111_routes
    except ImportError as exc:
        log.warning("A1111-compatible routes unavailable: %s", exc)
    else:
        add_a1111_routes(app)
    try:
        from .openai_images import add_openai_routes
    except ImportError as exc:
        log.warning("OpenAI-compatible routes unavailable: %s", exc)
    else:
        add_openai_routes(app)


__all__ = ["create_app", "capabilities", "SETTINGS_KEY", "ENGINE_KEY", "JOBS_KEY", "WEBSOCKETS_KEY", "AUTH_THROTTLE_KEY",
           "SERVER_NAME", "PROTOCOL_VERSION"]
