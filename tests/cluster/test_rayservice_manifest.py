"""packaging/ray/rayservice.yaml stays deployable: every field is one the RayService CRD has
(Kubernetes would drop a misspelt one silently), its Serve config is one Ray Serve accepts and
names this package's builder, its settings are Latent Bridge settings, and the pieces agree with
each other (the front-end's resource, port, disk and model folders exist where it runs; replicas
fit the GPU pods). Needs no cluster; the Serve-schema check needs Ray installed."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_helpers import require_ray

from latentbridge.server.security import StartupRefused, check_startup
from latentbridge.settings import Settings, load_settings

PACKAGING = Path(__file__).resolve().parents[2] / "packaging" / "ray"
MANIFEST = PACKAGING / "rayservice.yaml"
SHAPE = json.loads((PACKAGING / "rayservice-crd-shape.json").read_text())
NOT_RECORDED = "..."


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def rayservice() -> dict[str, Any]:
    (service,) = [doc for doc in documents() if doc["kind"] == "RayService"]
    return service


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def app_args() -> dict[str, Any]:
    (app,) = serve_config()["applications"]
    return app["args"]


def shape_errors(value: Any, shape: Any, path: str) -> list[str]:
    """Where `value` leaves the CRD's shape: unknown fields, missing required ones, wrong types."""
    if shape == NOT_RECORDED:
        return [f"{path}: allowed by the CRD but not in the recorded shape; run packaging/ray/crd_shape.py"]
    kind = shape.get("type", "any")
    expected = {"string": str, "boolean": bool, "integer": int, "number": (int, float), "object": dict,
                "array": list, "int-or-string": (int, str)}.get(kind)
    if expected is not None and (not isinstance(value, expected) or (kind == "integer" and isinstance(value, bool))):
        return [f"{path}: {type(value).__name__} where the CRD wants {kind}"]
    if "enum" in shape and value not in shape["enum"]:
        return [f"{path}: {value!r} is not one of {shape['enum']}"]
    errors = []
    if isinstance(value, dict) and "properties" in shape:
        for name in shape.get("required", []):
            if name not in value:
                errors.append(f"{path}: the CRD requires {name!r}")
        for name, sub in value.items():
            if name not in shape["properties"]:
                if not shape.get("open"):
                    errors.append(f"{path}.{name}: not a field of the CRD here")
                continue
            errors += shape_errors(sub, shape["properties"][name], f"{path}.{name}")
    elif isinstance(value, dict) and "values" in shape:
        for name, sub in value.items():
            errors += shape_errors(sub, shape["values"], f"{path}.{name}") if shape["values"] else []
    elif isinstance(value, list) and "items" in shape:
        for i, item in enumerate(value):
            errors += shape_errors(item, shape["items"], f"{path}[{i}]")
    return errors


def test_every_field_is_one_the_rayservice_crd_has():
    service = rayservice()
    group, version = service["apiVersion"].split("/")
    assert (group, version, service["kind"]) == (SHAPE["group"], SHAPE["version"], SHAPE["kind"])
    assert shape_errors(service, SHAPE["schema"], "RayService") == []


def test_the_shape_check_catches_misspelt_and_mistyped_fields():
    service = rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    cluster["workerGroupSpecs"][0]["maxReplica"] = cluster["workerGroupSpecs"][0].pop("maxReplicas")
    cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["port"] = [{"containerPort": 7423}]
    cluster["enableInTreeAutoscaling"] = "yes"
    cluster["authOptions"]["mode"] = "tokens"
    errors = shape_errors(service, SHAPE["schema"], "RayService")
    assert any(e.endswith("workerGroupSpecs[0]: the CRD requires 'maxReplicas'") for e in errors), errors
    assert any(e.endswith("workerGroupSpecs[0].maxReplica: not a field of the CRD here") for e in errors), errors
    assert any(".containers[0].port: not a field" in e for e in errors), errors
    assert any("enableInTreeAutoscaling: str where the CRD wants boolean" in e for e in errors), errors
    assert any("authOptions.mode: 'tokens' is not one of" in e for e in errors), errors


def test_the_serve_config_names_this_packages_builder_and_real_settings():
    (app,) = serve_config()["applications"]
    module, _, name = app["import_path"].partition(":")
    assert module == "latentbridge.cluster.frontend" and name == "build_app"
    args = app_args()
    assert set(args) <= {"settings", "frontend"}
    unknown = set(args["settings"]) - set(Settings.model_fields)
    assert not unknown, f"not Latent Bridge settings: {unknown}"
    settings = Settings.model_validate(args["settings"])
    assert settings.ray_gpus_per_replica == 1 and settings.ray_max_replicas > settings.ray_min_replicas
    # Beyond loopback, so the token must come from the environment (the Secret), never the file.
    assert "token" not in args["settings"]
    with pytest.raises(StartupRefused):
        check_startup(load_settings(environ={}, **args["settings"]))
    check_startup(load_settings(environ={"LATENTBRIDGE_TOKEN": "from-the-secret"}, **args["settings"]))


def test_ray_serve_accepts_the_serve_config():
    require_ray()
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config()) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(serve_config())
    (app,) = config.applications
    assert app.route_prefix is None  # the front-end listens itself; Serve's proxy does not route to it
    builder = getattr(importlib.import_module(app.import_path.partition(":")[0]), app.import_path.partition(":")[2])
    assert callable(builder)


def test_the_pieces_agree():
    service = rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    args = app_args()
    settings = Settings.model_validate(args["settings"])
    head = cluster["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    # The front-end lands on the head (the only node with its resource), which has its port, its
    # journal disk, the models, and the token from the Secret.
    (resource,) = args["frontend"]["resources"]
    assert head["resources"][resource] == "1"
    assert all(resource not in group.get("resources", {}) for group in cluster["workerGroupSpecs"])
    assert settings.port in [p["containerPort"] for p in head_container["ports"]]
    head_mounts = {m["mountPath"] for m in head_container["volumeMounts"]}
    assert str(settings.data_dir) in head_mounts
    assert any(e["name"] == "LATENTBRIDGE_TOKEN" and "secretKeyRef" in e["valueFrom"] for e in head_container["env"])
    # Every pod that runs an engine (the GPU workers) and the front-end (which checks model names)
    # sees the model folders at the same path.
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]["containers"][0]
    worker_mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    for folder in settings.model_dirs:
        assert any(str(folder).startswith(m) for m in head_mounts) and any(str(folder).startswith(m) for m in worker_mounts)
    assert str(settings.model).startswith(str(settings.model_dirs[0]))
    # Replicas fit the GPU pods: one GPU each, as many replicas as the pods can hold.
    gpus_per_pod = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert settings.ray_gpus_per_replica <= gpus_per_pod
    assert settings.ray_max_replicas <= workers["maxReplicas"] * gpus_per_pod / settings.ray_gpus_per_replica
    assert settings.ray_cpus_per_replica <= float(worker["resources"]["limits"]["cpu"])
    assert head["rayStartParams"]["num-gpus"] == "0"  # no engine replica lands on the head
    # The claims the pods mount exist in the file.
    claims = {doc["metadata"]["name"] for doc in documents() if doc["kind"] == "PersistentVolumeClaim"}
    for spec in (head["template"]["spec"], workers["template"]["spec"]):
        for volume in spec["volumes"]:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    # The image's Ray is one this package supports (the `ray` extra's range).
    from packaging.requirements import Requirement

    project = tomllib.loads((PACKAGING.parents[1] / "pyproject.toml").read_text())["project"]
    (ray,) = [Requirement(r) for r in project["optional-dependencies"]["ray"] if Requirement(r).name == "ray"]
    assert ray.specifier.contains(cluster["rayVersion"]), (cluster["rayVersion"], str(ray.specifier))
