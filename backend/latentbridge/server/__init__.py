"""The aiohttp server: websocket, HTTP API, A1111 routes, security. Knows nothing of torch."""

from __future__ import annotations

from .app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY, create_app
from .security import StartupRefused
from .serve import ACCESS_LOG_FORMAT, run, serve

__all__ = ["run", "serve", "create_app", "StartupRefused", "SETTINGS_KEY", "ENGINE_KEY", "JOBS_KEY",
           "ACCESS_LOG_FORMAT"]
