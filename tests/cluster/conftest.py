"""A real local Ray cluster on CPU with the engine deployed as two tiny-model replicas, for the
module that uses them (test_ray_serve.py): starting them is the slow part, so it happens once,
and the cluster stops right after that module (not at the end of the whole suite). Each test
runs its own front-end (the real server) in front of the replicas, with its own journal. Ray's
session files go to a short temporary folder (its socket paths must stay short). Ray's
processes share the fate of this one (Ray kills them when it exits, even killed itself).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from ray_helpers import APP, cluster_settings, wait_for_replicas

import latentbridge

@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance (4 logical CPUs, no GPU) for the module; yields its GCS address."""
    import ray
    from ray import serve

    temp = tempfile.mkdtemp(prefix="lbray-")
    package = str(Path(latentbridge.__file__).resolve().parents[1])
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, logging_level="WARNING", _temp_dir=temp,
             runtime_env={"env_vars": {"PYTHONPATH": package, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    serve.start(proxy_location="Disabled")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def engine_handle(ray_cluster, tmp_path_factory):
    """The engine deployment: two tiny-model replicas (0.5 CPU each), as `--ray` deploys it."""
    from ray import serve

    from latentbridge.cluster.deploy import engine_app

    settings = cluster_settings(tmp_path_factory.mktemp("engine"))
    return serve.run(engine_app(settings), name=APP, route_prefix=None)


@pytest.fixture
def replicas(engine_handle):
    """Both replicas running before the test (a previous test may have killed some)."""
    wait_for_replicas()
    return engine_handle


