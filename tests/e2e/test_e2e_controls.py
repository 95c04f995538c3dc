"""Real add-on, real server (tiny model with its built-in ControlNet): depth + normal from a real
scene's passes, run by the server, the result and its control inputs packed; the server stores
the exact maps the add-on sent; Regenerate reproduces the image; a selected-objects inpaint with
controls renders once."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()

from lb_server import pump  # noqa: E402


@pytest.fixture
def renders():
    import bpy

    count = []

    def on_render(*_args):
        count.append(1)

    bpy.app.handlers.render_pre.append(on_render)
    yield count
    bpy.app.handlers.render_pre.remove(on_render)


def _scene(scene, **values):
    import bpy

    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = 2, "CPU"
    sphere = bpy.data.objects.new("Ball", bpy.data.meshes.new("Ball"))
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=0.8)
    bm.to_mesh(sphere.data)
    bm.free()
    sphere.location = (1.8, 1.2, 0.5)
    scene.collection.objects.link(sphere)
    settings = scene.latentbridge
    settings.steps, settings.random_seed, settings.seed, settings.preview_size = 3, False, 77, 64
    settings.size_mode, settings.prompt = "RENDER", "a bronze statue on a plinth"
    for key, value in values.items():
        setattr(settings, key, value)
    controls = scene.latentbridge_control
    controls.depth.enabled, controls.depth.weight = True, 0.9
    controls.normal.enabled, controls.normal.weight, controls.normal.mode = True, 0.6, "prompt"
    return settings


def _finish(controller, timeout=120.0):
    job = list(controller.jobs.values())[-1]
    pump(controller, lambda: job.finished, timeout, f"job {job.client_ref} to finish")
    assert job.state == "done", (job.state, job.error)
    return job


def _pixels(data):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _get(server, path):
    request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def test_depth_and_normal_run_on_the_server_and_come_back_packed(connected, scene, server, renders, capsys):
    import bpy

    settings = _scene(scene, mode="img2img", source="RENDER", strength=0.7)
    start = time.monotonic()
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    job = _finish(connected)
    total = time.monotonic() - start
    with capsys.disabled():
        print(f"\nend-to-end img2img 64² + depth + normal ControlNet (render, maps, upload, generate, packed): {total:.2f} s")
    assert len(renders) == 1
    result = bpy.data.images[job.results[0]]
    recipe = json.loads(result["latentbridge_request"])
    assert [(u["type"], u["weight"]) for u in recipe["controls"]] == [("depth", 0.9), ("normal", 0.6)]
    assert recipe["controls"][1]["mode"] == "prompt"
    for i, kind in enumerate(("depth", "normal")):
        packed = bpy.data.images[result[f"latentbridge_control_{i}"]]
        assert packed.packed_file is not None and packed["latentbridge_control"] == kind
        sent = job.inputs[f"control.{i}"][0]
        assert bytes(packed.packed_file.data) == sent
        stored = _get(server, f"/api/v1/jobs/{job.job_id}/inputs/control.{i}")
        assert np.array_equal(_pixels(stored), _pixels(sent))  # the server keeps exactly the map sent
    assert bpy.data.images["Latent Bridge Control"].size[:] == (128, 64)

    assert bpy.ops.latentbridge.regenerate(image=result.name) == {"FINISHED"}
    again = bpy.data.images[_finish(connected).results[0]]
    assert list(again.pixels[:]) == list(result.pixels[:])  # the recipe and its maps reproduce the image
    # Without the controls (same seed, same render) the image differs: the maps were used.
    scene.latentbridge_control.depth.enabled = False
    scene.latentbridge_control.normal.enabled = False
    bpy.ops.latentbridge.generate()
    without = bpy.data.images[_finish(connected).results[0]]
    assert not np.array_equal(np.asarray(without.pixels[:]), np.asarray(result.pixels[:]))


def test_text_to_image_from_the_scene_depth(connected, scene, renders):
    import bpy

    _scene(scene, mode="txt2img")
    scene.latentbridge_control.normal.enabled = False
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    job = _finish(connected)
    assert len(renders) == 1 and set(job.inputs) == {"control.0"}
    assert tuple(bpy.data.images[job.results[0]].size) == (64, 64)


def test_selected_objects_inpaint_with_controls_renders_once(connected, scene, renders):
    import bpy

    _scene(scene, mode="inpaint", source="RENDER", mask_source="OBJECTS", strength=0.9)
    for obj in scene.objects:
        obj.select_set(obj.name == "Ball")
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    job = _finish(connected)
    assert len(renders) == 1
    assert set(job.inputs) == {"init", "mask", "control.0", "control.1"}
    result = bpy.data.images[job.results[0]]
    assert json.loads(result["latentbridge_request"])["mode"] == "inpaint"
    assert bpy.data.images[result["latentbridge_mask"]].packed_file is not None
