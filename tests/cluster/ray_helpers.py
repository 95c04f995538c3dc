"""Helpers for the Ray tests: settings for a front-end in front of the test cluster, the real
server on a free port, waiting for Serve to replace killed replicas, and the skip-or-fail rule
for a missing Ray (LATENTBRIDGE_REQUIRE_RAY=1, set by .ci/run, makes it fail).

Ray reads its environment when it is imported, so this module sets it first: token
authentication with the token in the environment (the test cluster is not open to the network,
and nothing is written to ~/.ray; `latentbridge serve --ray` processes the tests start inherit it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from latentbridge.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))  # server_helpers

os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))


def require_ray() -> None:
    """Skip the calling test module without Ray Serve, unless LATENTBRIDGE_REQUIRE_RAY=1 (set by
    .ci/run, which installs the `ray` extra), where its absence fails the tests instead."""
    if os.environ.get("LATENTBRIDGE_REQUIRE_RAY") != "1":
        pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'latentbridge[ray]')")
        return
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"LATENTBRIDGE_REQUIRE_RAY=1 but Ray Serve does not import ({exc}): "
                           "pip install -e '.[dev,ray]'") from exc

APP = "lb-tests"
REPLICAS = 2


def cluster_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": "tiny", "data_dir": tmp_path / "data", "preview_interval_s": 0.0,
                              "port": 0, "ray": "test-cluster", "ray_min_replicas": REPLICAS,
                              "ray_max_replicas": REPLICAS, "ray_gpus_per_replica": 0, "ray_cpus_per_replica": 0.5}
    values.update(overrides)
    return Settings(**values)


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications.get(APP)
    if status is None:
        return 0
    return status.deployments["engine"].replica_states.get("RUNNING", 0)


def wait_for_replicas(count: int = REPLICAS, timeout_s: float = 180.0) -> None:
    """Until Serve runs `count` engine replicas again (after a test killed some)."""
    deadline = time.monotonic() + timeout_s
    while running_replicas() < count:
        assert time.monotonic() < deadline, f"Serve did not bring back {count} engine replicas in {timeout_s:.0f} s"
        time.sleep(0.2)


@contextlib.asynccontextmanager
async def frontend(settings: Settings, handle: Any):
    """The real server (`serve()`, as `latentbridge serve --ray` runs it) on a free port, its jobs
    on the engine replicas; yields (url, app) once the replicas reported ready."""
    from latentbridge.cluster import create_cluster_app
    from latentbridge.server import serve

    app = create_cluster_app(settings, handle=handle)
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, app=app, started=started, own_loop=False))
    site = await asyncio.wait_for(started, 60)
    url = f"http://127.0.0.1:{site.addresses[0][1]}"
    from latentbridge.server.app import ENGINE_KEY

    deadline = time.monotonic() + 120
    while app[ENGINE_KEY].status.state.value not in ("ready", "failed"):
        assert time.monotonic() < deadline, "the front-end never heard from the engine replicas"
        await asyncio.sleep(0.05)
    try:
        yield url, app
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
