"""Scale-out on Ray Serve: the same server in front of N engine replicas (docs/ray.md).

What runs where:

    front-end process (`latentbridge serve --ray ADDRESS`, or the `frontend` Serve deployment of
    a serve config / KubeRay RayService): the aiohttp app (websocket, REST, A1111, OpenAI-style,
    the web page), JobManager (journal on disk, queue, priorities, fairness, subscriptions,
    previews' latest-wins delivery, results on disk) and ClusterRunner (view.py, runner.py).
    No torch.
    engine replicas (the `engine` Serve deployment, replica.py): one Engine each, one GPU each,
    one call at a time; they load the models jobs ask for and stream progress, previews and
    result PNGs back. Only they import torch.

Nothing here is imported by the single-machine server; `ray` is imported only when used.
"""

from __future__ import annotations

from typing import Any

from ..settings import Settings


def create_cluster_app(settings: Settings, handle: Any = None):
    """The server's aiohttp app, its jobs run on engine replicas on Ray Serve. `handle`: the engine
    deployment's DeploymentHandle when it is already deployed (a serve config, the tests); None:
    the app deploys it at start-up (connecting to `settings.ray`) and removes it when it stops."""
    from ..server.app import create_app
    from ..store import ResultStore
    from .runner import ClusterRunner
    from .view import ClusterEngine

    view = ClusterEngine(settings)
    store = ResultStore(settings.data_dir, settings.retention_jobs)
    runner = ClusterRunner(settings, view, store, handle=handle)
    return create_app(settings, view, runner=runner, store=store)


__all__ = ["create_cluster_app"]
