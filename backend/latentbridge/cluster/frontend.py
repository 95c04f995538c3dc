"""The whole service as one Ray Serve application, for a serve config file (`serve deploy`,
KubeRay's RayService: packaging/ray/).

    import_path: latentbridge.cluster.frontend:build_app
    args:
      settings: {model: ..., ray_min_replicas: 1, ray_max_replicas: 4, ...}   # Settings fields
      frontend: {num_cpus: 1, resources: {latentbridge-frontend: 1}}         # its Ray actor options

It holds two deployments: `engine` (the replicas, cluster/deploy.engine_app) and `frontend`:
one replica that runs the same aiohttp server `latentbridge serve` runs, on the replica's own
event loop, listening on `settings.host:port` of the node it lands on (the journal lives in
`settings.data_dir` there, so pin it with a custom resource in `frontend` to the node that has
that disk and that port exposed). It reads LATENTBRIDGE_* environment variables of that node first (a token
from a Kubernetes Secret, say), then `settings`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from ..settings import Settings, load_settings
from .deploy import engine_app

log = logging.getLogger("latentbridge.cluster")

FRONTEND_DEPLOYMENT = "frontend"


class Frontend:
    async def __init__(self, engine: Any, settings: dict[str, Any]):
        from ..server.security import check_startup
        from ..server.serve import serve as serve_http
        from . import create_cluster_app

        self.settings = load_settings(**settings)
        check_startup(self.settings)  # e.g. a token whenever it listens beyond loopback
        app = create_cluster_app(self.settings, handle=engine)
        loop = asyncio.get_running_loop()
        started: asyncio.Future = loop.create_future()
        self._server = loop.create_task(serve_http(self.settings, app=app, started=started, own_loop=False),
                                        name="latentbridge-frontend")
        await asyncio.wait([started, self._server], return_when=asyncio.FIRST_COMPLETED)
        if self._server.done():  # it could not listen: the replica fails to start, with the reason
            self._server.result()
            raise RuntimeError("the front-end server stopped at start-up")
        log.info("front-end serving on %s", started.result().name)

    async def check_health(self) -> None:
        if self._server.done():
            raise RuntimeError("the front-end server has stopped")

    async def __del__(self) -> None:
        # Serve is removing this replica: stop like `latentbridge serve` on SIGTERM (the running
        # jobs stay in the journal and run again when a front-end starts on that disk).
        if not self._server.done():
            self._server.cancel()
            try:
                await self._server
            except asyncio.CancelledError:
                pass


def build_app(args: dict[str, Any]) -> Any:
    """The application a serve config names: `frontend` in front of `engine`."""
    settings_args = dict(args.get("settings") or {})
    engine_settings = Settings.model_validate(settings_args)
    actor_options = {"num_cpus": 1, **dict(args.get("frontend") or {})}
    # One front-end: it owns the journal (one writer) and the queue.
    options: dict[str, Any] = {"name": FRONTEND_DEPLOYMENT, "num_replicas": 1, "max_ongoing_requests": 1,
                               "ray_actor_options": actor_options}
    return serve.deployment(Frontend).options(**options).bind(engine_app(engine_settings), settings_args)
