"""The add-on's model and LoRA pickers against a real server with --model-dirs and --lora-dirs:
every listed model loads by its listed name (a sub-folder's too), and the LoRA list is the
server's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()

from lb_server import ServerProcess, point_prefs_at, pump  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))


@pytest.fixture(scope="module")
def folders_server(tmp_path_factory):
    from latentbridge.engine import tiny
    from lora_factory import save_tiny_lora  # tests/backend: a real LoRA file for the tiny UNet

    root = tmp_path_factory.mktemp("lb-folders")
    pipe = tiny.build_pipeline("tiny")
    pipe.save_pretrained(root / "models" / "sub" / "nested-model", safe_serialization=True)
    save_tiny_lora(root / "loras" / "style.safetensors")
    (root / "data").mkdir()
    server = ServerProcess(root / "data")
    server.extra_args = ["--model-dirs", str(root / "models"), "--lora-dirs", str(root / "loras")]
    yield server.start()
    server.stop()


def test_the_listed_model_and_lora_work_from_the_pickers(addon, scene, folders_server):
    import bpy

    controller = addon["controller"].controller
    point_prefs_at(folders_server.url, folders_server.token)
    bpy.ops.latentbridge.connect()
    pump(controller, lambda: controller.conn_state == "CONNECTED", 30, "the hello handshake")
    try:
        bpy.ops.latentbridge.refresh_models()
        pump(controller, lambda: "sub/nested-model" in controller.models and controller.loras, 30, "the lists")
        assert [entry["name"] if isinstance(entry, dict) else entry for entry in controller.loras] == ["style.safetensors"]
        settings = scene.latentbridge
        settings.steps, settings.random_seed, settings.seed = 2, False, 7
        settings.size_mode, settings.width, settings.height = "CUSTOM", 64, 64
        settings.prompt = "bronze"
        settings.model = "sub/nested-model"
        lora = settings.loras.add()
        lora.name, lora.weight = "style.safetensors", 0.8
        assert bpy.ops.latentbridge.generate() == {"FINISHED"}
        job = list(controller.jobs.values())[-1]
        pump(controller, lambda: job.finished, 120, "the job")
        assert job.state == "done", (job.state, job.error)
        request = json.loads(bpy.data.images[job.results[0]]["latentbridge_request"])
        assert request["model"] == "sub/nested-model"
        assert request["loras"] == [{"name": "style.safetensors", "weight": 0.8}]
    finally:
        controller.reset()
