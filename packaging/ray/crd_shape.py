"""Write the shape of the KubeRay RayService CRD that packaging/ray/rayservice.yaml uses.

    python packaging/ray/crd_shape.py ray.io_rayservices.yaml [packaging/ray/rayservice.yaml]

The CRD (ray-operator/config/crd/bases/ray.io_rayservices.yaml in ray-project/kuberay, about
1 MB: most of it the Kubernetes pod spec, twice) is too big to keep here. Kubernetes drops
fields a CRD does not know without a word, so a misspelt field in the manifest would silently do
nothing; tests/cluster/test_rayservice_manifest.py checks every field name against this shape
instead. The shape holds, for every object the manifest reaches, ALL the property names the CRD
allows there (with their types and the required ones); objects the manifest does not reach are
kept as names only ("..."). Run this again after changing the manifest in a way the test reports
as not covered, or to follow a new KubeRay release.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SHAPE = HERE / "rayservice-crd-shape.json"
NOT_RECORDED = "..."  # a field the CRD allows whose insides the manifest does not use


def shape_of(schema: dict[str, Any], used: Any) -> Any:
    """The schema node as a shape, descending only where `used` (the manifest's value) goes."""
    node: dict[str, Any] = {"type": schema.get("type", "any")}
    if schema.get("x-kubernetes-int-or-string"):
        node["type"] = "int-or-string"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        node["open"] = True
    if "enum" in schema:
        node["enum"] = schema["enum"]
    if "properties" in schema:
        names = schema["properties"]
        node["required"] = sorted(schema.get("required", []))
        node["properties"] = {
            name: shape_of(sub, used[name]) if isinstance(used, dict) and name in used else NOT_RECORDED
            for name, sub in sorted(names.items())
        }
    elif "additionalProperties" in schema:
        values = schema["additionalProperties"]
        node["values"] = shape_of(values, next(iter(used.values()))) if isinstance(values, dict) and used else {}
    if "items" in schema:
        items = [i for i in used if isinstance(i, dict)] if isinstance(used, list) else []
        merged: dict[str, Any] = {}
        for item in items:  # every key any list item uses
            merged.update(item)
        node["items"] = shape_of(schema["items"], merged if items else (used[0] if used else None))
    return node


def main(argv: list[str]) -> int:
    crd_path = Path(argv[0])
    manifest_path = Path(argv[1]) if len(argv) > 1 else HERE / "rayservice.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    manifest = next(doc for doc in yaml.safe_load_all(manifest_path.read_text()) if doc and doc["kind"] == "RayService")
    shape = {
        "source": "ray-project/kuberay ray-operator/config/crd/bases/ray.io_rayservices.yaml "
                  f"(controller-gen {crd['metadata']['annotations'].get('controller-gen.kubebuilder.io/version')})",
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version["name"],
        "schema": shape_of(version["schema"]["openAPIV3Schema"], manifest),
    }
    SHAPE.write_text(json.dumps(shape, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SHAPE} ({SHAPE.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
