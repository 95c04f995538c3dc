"""The Ray settings as the user gives them (flags, bounds) and what they turn into: the engine
deployment's Serve options (a fixed replica count, or autoscaling bounds; GPUs and CPUs per
replica), the settings the replicas get (none of the front-end's secrets), and the start-up
refusals. No cluster: Serve checks the options when it builds the deployment."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from ray_helpers import require_ray

from latentbridge.cluster import deploy
from latentbridge.server import StartupRefused
from latentbridge.settings import Settings, add_settings_arguments, load_settings


def parsed(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return load_settings(parser.parse_args(list(argv)), environ={})


def test_flags_give_the_bounds_and_reservations():
    settings = parsed("--ray", "head:6379", "--ray-min-replicas", "2", "--ray-max-replicas", "6",
                      "--ray-gpus-per-replica", "0.5", "--ray-cpus-per-replica", "3", "--ray-app", "studio-a")
    assert (settings.ray, settings.ray_min_replicas, settings.ray_max_replicas) == ("head:6379", 2, 6)
    assert (settings.ray_gpus_per_replica, settings.ray_cpus_per_replica, settings.ray_app) == (0.5, 3.0, "studio-a")
    defaults = Settings()
    assert defaults.ray is None and defaults.ray_gpus_per_replica == 1 and defaults.ray_min_replicas == 1


def test_bounds_that_cannot_hold_are_refused_naming_them():
    with pytest.raises(ValidationError, match=r"ray_max_replicas \(1\) is below ray_min_replicas \(3\)"):
        Settings(ray_min_replicas=3, ray_max_replicas=1)
    for bad in ({"ray_max_replicas": 0}, {"ray_gpus_per_replica": -1}, {"ray_app": "no spaces"}):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_a_fixed_count_or_autoscaling_bounds_one_job_per_replica():
    fixed = deploy.replica_options(Settings(ray_min_replicas=3, ray_max_replicas=3, ray_gpus_per_replica=1,
                                            ray_cpus_per_replica=4))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 1
    assert fixed["ray_actor_options"] == {"num_gpus": 1.0, "num_cpus": 4.0}
    scaling = deploy.replica_options(Settings(ray_min_replicas=0, ray_max_replicas=4))
    assert "num_replicas" not in scaling
    assert scaling["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
                                             "target_ongoing_requests": 1}


def test_serve_accepts_the_deployment_options():
    require_ray()
    from ray import serve

    from latentbridge.cluster.replica import EngineReplica

    for settings in (Settings(ray_min_replicas=2, ray_max_replicas=2), Settings(ray_min_replicas=1, ray_max_replicas=8)):
        deployment = serve.deployment(EngineReplica).options(**deploy.replica_options(settings))  # validates them
        assert deployment.name == "engine" and deployment.max_ongoing_requests == 1
        assert deployment.ray_actor_options == {"num_gpus": 1.0, "num_cpus": 1.0}


def test_replicas_get_the_engine_settings_not_the_front_ends_secrets():
    settings = Settings(model="tiny", token="s3cret", host="0.0.0.0", port=9000, allowed_origins=["https://a.example"],
                        preview_interval_s=0.25, ray="auto")
    given = deploy.replica_settings(settings)
    assert not {"token", "host", "port", "allowed_origins", "allowed_hosts"} & set(given)
    again = Settings.model_validate(given)
    assert again.model == "tiny" and again.preview_interval_s == 0.25 and again.token is None


def test_an_address_that_is_not_host_port_is_refused_at_once():
    require_ray()
    from latentbridge.protocol import LatentBridgeError

    with pytest.raises(LatentBridgeError, match="must be HOST:PORT") as caught:
        deploy.connect("no-port-here")
    assert "--ray local" in caught.value.message


def test_serve_with_ray_but_without_ray_installed_is_refused(monkeypatch):
    serve_module = importlib.import_module("latentbridge.server.serve")
    real = serve_module.importlib.util.find_spec
    monkeypatch.setattr(serve_module.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(StartupRefused, match=r"pip install 'latentbridge\[ray\]'"):
        serve_module.run(Settings(ray="local", model="tiny"))


def test_the_front_end_imports_neither_torch_nor_ray_until_it_connects(tmp_path):
    """The front-end process stays light: torch lives in the replicas, Ray loads when it connects."""
    backend = Path(__file__).resolve().parents[2] / "backend"
    code = ("import sys\n"
            "from latentbridge.settings import Settings\n"
            "from latentbridge.cluster import create_cluster_app\n"
            f"create_cluster_app(Settings(ray='local', model='tiny', data_dir={str(tmp_path)!r}))\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(backend), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
