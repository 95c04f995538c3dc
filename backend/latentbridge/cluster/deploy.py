"""Connecting to Ray and deploying the engine replicas as a Ray Serve application.

`engine_app(settings)` is the one description of the engine deployment (replica count or
autoscaling bounds, GPUs and CPUs per replica, one call at a time per replica); both
`latentbridge serve --ray` (deploy_engines) and a Serve config file (cluster/frontend.py,
build_app) use it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ..protocol import ErrorCode, LatentBridgeError
from ..settings import Settings

log = logging.getLogger("latentbridge.cluster")

# Ray's C++ core otherwise installs a crash handler for SIGTERM too, which prints a stack trace and
# aborts the process during the orderly shutdown this server does on SIGTERM. Ray reads it when
# it is first imported, which in the front-end happens below this module.
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

ENGINE_DEPLOYMENT = "engine"
LOCAL = "local"  # --ray local: start a Ray instance on this machine


def replica_options(settings: Settings) -> dict[str, Any]:
    """The engine deployment's Serve options from the settings."""
    options: dict[str, Any] = {
        "name": ENGINE_DEPLOYMENT,
        # One call at a time per replica: a replica's engine and device serve one job at a time,
        # and the front-end's queue (priorities, fairness) decides which job goes next.
        "max_ongoing_requests": 1,
        "ray_actor_options": {"num_gpus": settings.ray_gpus_per_replica, "num_cpus": settings.ray_cpus_per_replica},
    }
    if settings.ray_min_replicas == settings.ray_max_replicas:
        options["num_replicas"] = settings.ray_min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.ray_min_replicas,
            "max_replicas": settings.ray_max_replicas,
            "initial_replicas": max(1, settings.ray_min_replicas),
            "target_ongoing_requests": 1,  # one job per replica: scale up as soon as jobs wait
        }
    return options


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The settings a replica's engine runs with (JSON-able; the replica validates them again).
    The front-end's own secrets and addresses stay with it."""
    return settings.model_dump(mode="json", exclude={"token", "host", "port", "allowed_origins", "allowed_hosts"})


def engine_app(settings: Settings) -> Any:
    """The engine deployment, bound: a Serve application (or a part of one)."""
    from ray import serve

    from .replica import EngineReplica

    return serve.deployment(EngineReplica).options(**replica_options(settings)).bind(replica_settings(settings))


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (`auto`, HOST:PORT) or start one here (`local`)."""
    import ray

    if ray.is_initialized():
        return
    try:
        if address not in (LOCAL, "auto"):
            _check_reachable(address)
        if address == LOCAL:
            ray.init(include_dashboard=False)
        else:
            ray.init(address=address)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise LatentBridgeError(f"cannot connect to the Ray cluster at {address!r}: {exc}; pass --ray local to "
                                "start Ray on this machine, or the address `ray start --head` printed",
                                code=ErrorCode.model_load_failed) from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens on: Ray itself keeps retrying such an address for
    many minutes before it gives up."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")  # HOST:PORT or ray://HOST:PORT
    if not sep or not port.isdigit():
        raise ValueError("the address must be HOST:PORT (the GCS address `ray start --head` printed), auto or local")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
        pass


def deploy_engines(settings: Settings) -> Any:
    """Connect, deploy the engine replicas as the application `settings.ray_app` and return its
    handle once the first replicas run (their model loaded). Blocking: call it from a thread."""
    import ray
    from ray import serve

    assert settings.ray is not None
    connect(settings.ray)
    gpus = ray.cluster_resources().get("GPU", 0)
    if settings.ray_gpus_per_replica > gpus:
        log.warning("the Ray cluster has %g GPU(s) and each engine replica asks for %g: replicas wait until GPU "
                    "nodes join (pass --ray-gpus-per-replica 0 for CPU replicas)", gpus, settings.ray_gpus_per_replica)
    # No Serve HTTP proxy of its own: this server is the way in (it keeps the journal and the queue).
    serve.start(proxy_location="Disabled")
    log.info("deploying %s engine replica(s) as Ray Serve application %r (%g GPU, %g CPU each)",
             _replica_count(settings), settings.ray_app, settings.ray_gpus_per_replica, settings.ray_cpus_per_replica)
    return serve.run(engine_app(settings), name=settings.ray_app, route_prefix=None)


def teardown(settings: Settings) -> None:
    """Remove the application this front-end deployed and leave the cluster (a `--ray local`
    cluster stops with it)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.delete(settings.ray_app)
    except Exception as exc:  # noqa: BLE001 - shutting down anyway
        log.warning("could not remove the Ray Serve application %r: %s", settings.ray_app, exc)
    ray.shutdown()


def _replica_count(settings: Settings) -> str:
    low, high = settings.ray_min_replicas, settings.ray_max_replicas
    return str(low) if low == high else f"{low}-{high}"
