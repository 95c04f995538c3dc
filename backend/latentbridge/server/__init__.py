"""The aiohttp server: websocket, HTTP API, A1111 routes, security. Knows nothing of torch."""

from __future__ import annotations

import logging

from aiohttp import web

from ..settings import Settings
from .app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY, create_app
from .security import StartupRefused, check_startup

log = logging.getLogger(__name__)

# The access log shows the request line and status only: never headers (the token is one).
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def run(settings: Settings) -> None:
    """Serve until interrupted (blocking). Raises StartupRefused for unsafe settings."""
    check_startup(settings)
    app = create_app(settings)
    host = settings.host
    shown = f"[{host}]" if ":" in host else host
    print(f"Latent Bridge listening on http://{shown}:{settings.port} (model {settings.model}, "
          f"data in {settings.data_dir})", flush=True)
    web.run_app(app, host=host, port=settings.port, access_log_format=ACCESS_LOG_FORMAT, print=None,
                shutdown_timeout=15.0)


__all__ = ["run", "create_app", "StartupRefused", "SETTINGS_KEY", "ENGINE_KEY", "JOBS_KEY"]
