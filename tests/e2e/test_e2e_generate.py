"""Real add-on, real server (tiny model): every mode end to end, previews, cancel."""

from __future__ import annotations

import json
import time

import pytest

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()

from lb_server import pump  # noqa: E402


def _settings(scene, **values):
    settings = scene.latentbridge
    settings.steps, settings.random_seed, settings.seed = 2, False, 1234
    settings.size_mode, settings.width, settings.height = "CUSTOM", 64, 64
    settings.preview_size = 64
    settings.prompt = "weathered bronze, verdigris"
    for key, value in values.items():
        setattr(settings, key, value)
    return settings


def _finish(controller, timeout=90.0):
    job = list(controller.jobs.values())[-1]
    elapsed = pump(controller, lambda: job.finished, timeout, f"job {job.client_ref} to finish")
    return job, elapsed


def _result(job):
    import bpy

    assert job.state == "done", (job.state, job.error)
    return bpy.data.images[job.results[0]]


def test_render_to_img2img_result_packed(connected, scene, capsys):
    import bpy

    settings = _settings(scene, mode="img2img", source="RENDER", strength=0.6)
    settings.size_mode = "RENDER"
    start = time.monotonic()
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    job, _ = _finish(connected)
    total = time.monotonic() - start
    with capsys.disabled():
        print(f"\nend-to-end img2img 64² 2 steps (render + upload + generate + result packed): {total:.2f} s")
    image = _result(job)
    assert image.packed_file is not None and tuple(image.size) == (64, 64)
    request = json.loads(image["latentbridge_request"])
    assert request["mode"] == "img2img" and request["seed"] == 1234 and request["strength"] == 0.6
    assert image["latentbridge_init"] in bpy.data.images
    assert settings.last_result == image.name and not settings.running


@pytest.mark.smoke
def test_txt2img_is_reproducible_with_regenerate(connected, scene):
    import bpy

    _settings(scene, mode="txt2img")
    bpy.ops.latentbridge.generate()
    first = _result(_finish(connected)[0])
    assert bpy.ops.latentbridge.regenerate(image=first.name) == {"FINISHED"}
    second = _result(_finish(connected)[0])
    assert second.name != first.name
    assert list(first.pixels[:]) == list(second.pixels[:])  # same request + seed → same image


def test_inpaint_with_object_mask_and_painted_mask(connected, scene):
    import bpy
    import numpy as np

    _settings(scene, mode="inpaint", source="RENDER", mask_source="OBJECTS")
    bpy.ops.latentbridge.generate()
    job, _ = _finish(connected)
    assert tuple(_result(job).size) == (64, 64)
    sent_mask = job.inputs["mask"][0]
    assert sent_mask[:4] == b"\x89PNG"

    mask = bpy.data.images.new("Painted Mask", 64, 64)
    pixels = np.zeros((64, 64, 4), np.float32)
    pixels[20:40, 20:40] = 1.0
    mask.pixels.foreach_set(pixels.ravel())
    _settings(scene, mode="inpaint", source="RENDER", mask_source="IMAGE", mask_image=mask)
    bpy.ops.latentbridge.generate()
    job, _ = _finish(connected)
    image = _result(job)
    assert json.loads(image["latentbridge_request"])["mode"] == "inpaint"


def test_outpaint_extends_the_image(connected, scene):
    import bpy

    _settings(scene, mode="outpaint", source="RENDER", outpaint_right=32, outpaint_top=16)
    scene.latentbridge.size_mode = "RENDER"
    bpy.ops.latentbridge.generate()
    image = _result(_finish(connected)[0])
    assert tuple(image.size) == (96, 80)


def test_texture_on_selected_cube(connected, scene):
    import bpy

    cube = scene.objects["Cube"]
    _settings(scene, mode="texture", seamless="xy")
    assert bpy.ops.latentbridge.generate_texture() == {"FINISHED"}
    node = cube.active_material.node_tree.nodes["Latent Bridge Texture"]
    assert node.image.name == "Latent Bridge Preview"
    image = _result(_finish(connected)[0])
    assert node.image == image and node.extension == "REPEAT"
    bsdf = next(n for n in cube.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node == node
    assert json.loads(image["latentbridge_request"])["seamless"] == "xy"  # echoed back by the server


def test_previews_are_applied_during_the_job(connected, scene):
    import bpy

    _settings(scene, mode="txt2img", steps=10)
    bpy.ops.latentbridge.generate()
    job = list(connected.jobs.values())[-1]
    pump(connected, lambda: job.previews >= 1 or job.finished, 90, "a preview")
    assert job.previews >= 1 and not job.results  # applied while running, before the result
    preview = bpy.data.images["Latent Bridge Preview"]
    assert preview.is_float and max(preview.pixels[:400]) > 0.0
    _finish(connected)
    assert job.state == "done"


def test_cancel_mid_job(connected, scene):
    import bpy

    _settings(scene, mode="txt2img", steps=150, width=128, height=128)
    bpy.ops.latentbridge.generate()
    job = list(connected.jobs.values())[-1]
    pump(connected, lambda: scene.latentbridge.step >= 1 or job.finished, 90, "the first step")
    assert bpy.ops.latentbridge.cancel() == {"FINISHED"}
    elapsed = pump(connected, lambda: job.finished, 30, "the cancellation")
    assert job.state == "cancelled" and not job.results
    assert scene.latentbridge.status == "Cancelled" and elapsed < 10


def test_batch_of_three_each_regenerates_exactly(connected, scene):
    import bpy

    settings = _settings(scene, mode="txt2img", batch_size=3)
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    job, _ = _finish(connected)
    assert job.state == "done" and len(job.results) == 3, job.error
    images = [bpy.data.images[item.image] for item in settings.batch]
    assert [im["latentbridge_seed"] for im in images] == [1234, 1235, 1236]
    assert settings.last_result == images[0].name
    third = images[2]
    assert json.loads(third["latentbridge_request"])["batch_size"] == 1  # its own recipe
    assert bpy.ops.latentbridge.use_result(image=third.name) == {"FINISHED"} and settings.last_seed == 1236
    assert bpy.ops.latentbridge.regenerate(image=third.name) == {"FINISHED"}
    again = _result(_finish(connected)[0])
    assert list(again.pixels[:]) == list(third.pixels[:])


def test_animation_of_two_frames(connected, scene, tmp_path):
    import os

    import bpy

    from PIL import Image as PIL

    scene.frame_start, scene.frame_end = 1, 2
    settings = _settings(scene, strength=0.5)
    settings.size_mode = "RENDER"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    scene = bpy.context.scene
    assert bpy.ops.latentbridge.animate() == {"FINISHED"}
    pump(connected, lambda: not scene.latentbridge.running, 120, "the animation")
    folder = tmp_path / "latentbridge_frames"
    assert sorted(os.listdir(folder)) == ["Scene_0001.png", "Scene_0002.png"], scene.latentbridge.error
    with PIL.open(folder / "Scene_0002.png") as frame:
        recipe = json.loads(frame.text["latentbridge"])
    assert recipe["mode"] == "img2img" and recipe["seed"] == 1234 and frame.size == (64, 64)
    assert "Animation done: 2 frame(s)" in scene.latentbridge.status
