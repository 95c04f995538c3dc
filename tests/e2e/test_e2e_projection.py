"""Real add-on, real server (tiny model and its built-in ControlNet): Project Texture with 4 views
around a subdivided cube and around a UV sphere — per-view depth control, consistent views
(inpaints of what is unpainted), the bake packed at the chosen size and wired into the material,
and Regenerate from the recipe giving bit-identical pixels."""

from __future__ import annotations

import importlib
import json
import time

import numpy as np
import pytest

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()

from lb_server import pump  # noqa: E402

TEXTURE = 1024


def _mesh(scene, kind):
    import bmesh
    import bpy

    mesh = bpy.data.meshes.new(kind)
    bm = bmesh.new()
    bm.loops.layers.uv.new("UVMap")
    if kind == "cube":
        bmesh.ops.create_cube(bm, size=1.6, calc_uvs=True)
    else:
        bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=1.0, calc_uvs=True)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(kind.title(), mesh)
    scene.collection.objects.link(obj)
    if kind == "cube":
        modifier = obj.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = modifier.render_levels = 2
    old = scene.objects["Cube"]
    bpy.data.objects.remove(old)  # the reset scene's cube
    for other in scene.objects:
        other.select_set(other is obj)
    bpy.context.view_layer.objects.active = obj
    return obj


def _settings(scene):
    settings = scene.latentbridge
    settings.prompt, settings.steps, settings.random_seed, settings.seed = "weathered bronze, verdigris", 3, False, 4242
    proj = scene.latentbridge_projection
    proj.views, proj.view_count, proj.elevation = "ORBIT", 4, 0.3
    proj.view_size, proj.supersample, proj.texture_size, proj.margin, proj.seam_blend = 64, 2, TEXTURE, 8, 2
    return proj


def _wait(controller, scene, timeout=300.0):
    run = importlib.import_module(f"{lb_blender.ADDON_MODULE}.texture_project").last_run(scene.name)
    pump(controller, lambda: run.state != "running", timeout, "the projection")
    assert run.state == "done", (run.state, run.error, scene.latentbridge.status)
    return run


def _pixels(image):
    values = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(values)
    return values


@pytest.mark.parametrize("kind", ["cube", "sphere"])
def test_four_auto_views_onto_a_mesh_regenerate_bit_identical(connected, scene, kind, capsys):
    import bpy

    obj = _mesh(scene, kind)
    _settings(scene)
    start = time.monotonic()
    assert bpy.ops.latentbridge.project_texture() == {"FINISHED"}
    run = _wait(connected, scene)
    total = time.monotonic() - start
    worst_drain = max(connected.tick_ms)
    with capsys.disabled():
        print(f"\nProject Texture, 4 views of 64² onto a {kind} → {TEXTURE}² (tiny model + ControlNet, real server): "
              f"{total:.1f} s end to end (UV renders {run.render_s:.2f} s); main thread: longest projection tick "
              f"{run.longest_tick_s * 1000:.1f} ms ({run.longest_tick_stage}), longest drain {worst_drain:.1f} ms; worker "
              + ", ".join(f"{k} {v:.2f} s" for k, v in run.worker_s.items()))
    assert run.views_done == 4
    image = bpy.data.images[scene.latentbridge.last_result]
    node = obj.active_material.node_tree.nodes["Latent Bridge Texture"]
    assert node.image == image and image.packed_file is not None and tuple(image.size) == (TEXTURE, TEXTURE)
    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node == node
    recipe = json.loads(image["latentbridge_projection"])
    assert len(recipe["cameras"]) == 4 and recipe["texture_size"] == TEXTURE
    assert [r["seed"] for r in recipe["requests"]] == [4242, 4243, 4244, 4245]
    assert all(r["controls"][0]["type"] == "depth" for r in recipe["requests"])
    texels = _pixels(image).reshape(TEXTURE, TEXTURE, 4)[..., :3]
    assert texels.std() > 0.01  # generated colour, not a flat fill

    assert bpy.ops.latentbridge.regenerate(image=image.name) == {"FINISHED"}
    _wait(connected, scene)
    again = bpy.data.images[scene.latentbridge.last_result]
    assert again != image and tuple(again.size) == (TEXTURE, TEXTURE)
    assert np.array_equal(_pixels(again), _pixels(image))  # same recipe, same pixels
    assert obj.active_material.node_tree.nodes["Latent Bridge Texture"].image == again
