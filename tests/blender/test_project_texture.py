"""Project Texture through the real add-on with a stand-in server (scripted answers): views around
the object, per-view controls from the UV render, consistent views (init + mask of what is
painted), the live partial texture, the bake packed and wired, the recipe repeating the run
exactly, Cancel between views, the grid, the UV-space inpaint fill, errors, and the checks made
before any render."""

from __future__ import annotations

import importlib
import json
import time

import numpy as np
import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()


def _mod(name):
    return importlib.import_module(f"{lb_blender.ADDON_MODULE}.{name}")


def _sphere(scene, name="Ball"):
    import bmesh
    import bpy

    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bm.loops.layers.uv.new("UVMap")
    bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=1.0, calc_uvs=True)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    cube = scene.objects.get("Cube")
    if cube is not None:  # the reset scene's cube would hide the ball
        cube.location = (0.0, 0.0, -3.0)
    for other in scene.objects:
        other.select_set(other is obj)
    bpy.context.view_layer.objects.active = obj
    return obj


def _settings(scene, **values):
    settings = scene.latentbridge
    settings.prompt, settings.steps, settings.random_seed, settings.seed = "weathered bronze", 2, False, 500
    proj = scene.latentbridge_projection
    proj.views, proj.view_count, proj.view_size, proj.supersample = "ORBIT", 4, 64, 1
    proj.texture_size, proj.margin, proj.seam_blend = 128, 4, 2
    for key, value in values.items():
        setattr(proj, key, value)
    return proj


def _answer_png(request):
    """A view's 'generated' image: a colour of its seed and a gradient, deterministic."""
    import io

    from PIL import Image

    w, h = request["width"], request["height"]
    seed = request["seed"]
    xs = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    rgb = np.stack([xs, np.full((h, w), (seed * 37) % 256, np.float32), np.full((h, w), 90, np.float32)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


class Server:
    """Answers every submit the fake connection sends: accepted, one result, done (or an error)."""

    def __init__(self, addon, fake, fail_at=None):
        self.addon, self.fake, self.fail_at = addon, fake, fail_at
        self.answered = 0
        self.jobs = []

    def submits(self):
        return [s for s in self.fake.sent if s[0] == "submit"]

    def pump(self, until, timeout=60.0, answer=True):
        ctl = self.addon["controller"].controller
        Incoming = self.addon["connection"].Incoming
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ctl.drain()
            if until():
                return
            pending = self.submits()[self.answered:]
            if answer and pending:
                _, request, images, ref = pending[0]
                self.answered += 1
                job_id = f"p{self.answered}"
                self.jobs.append((request, images))
                self.fake.feed(Incoming("event", {"type": "accepted", "job_id": job_id, "client_ref": ref, "position": 0}))
                if self.fail_at == self.answered:
                    self.fake.feed(Incoming("event", {"type": "error", "job_id": job_id, "code": "out_of_memory", "message": "no memory"}))
                    continue
                self.fake.feed(Incoming("event", {"type": "result", "job_id": job_id, "index": 0, "seed": request["seed"],
                                                  "width": request["width"], "height": request["height"], "request": request}))
                self.fake.feed(Incoming("result", header={"kind": "result", "format": "png", "job_id": job_id, "index": 0},
                                        data=_answer_png(request)))
                self.fake.feed(Incoming("event", {"type": "done", "job_id": job_id, "count": 1, "elapsed_s": 0.1}))
            time.sleep(0.002)
        raise AssertionError(f"timed out; status {self.addon['controller'].controller.messages[-3:]}")


def _run(scene):
    return _mod("texture_project").last_run(scene.name)


def _pixels(image):
    values = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(values)
    return values


def test_four_orbit_views_bake_a_texture_wired_into_the_material(addon, scene, fake):
    import bpy

    ball = _sphere(scene)
    _settings(scene)
    assert bpy.ops.latentbridge.project_texture() == {"FINISHED"}
    run = _run(scene)
    assert run.state == "running" and scene.latentbridge.running and len(run.surfaces) == 4
    views = bpy.data.collections["Latent Bridge Views"].objects
    assert sorted(o.name for o in views) == [f"Latent Bridge View {i}" for i in range(1, 5)]
    assert bpy.ops.latentbridge.cancel.poll() and not bpy.ops.latentbridge.generate.poll()
    server = Server(addon, fake)
    # The live partial texture is on the object after the first view.
    server.pump(lambda: run.views_done >= 1)
    preview = bpy.data.images["Latent Bridge Projection Ball"]
    node = ball.active_material.node_tree.nodes["Latent Bridge Texture"]
    assert node.image == preview and preview.is_float and tuple(preview.size) == (128, 128)
    assert np.abs(_pixels(preview).reshape(-1, 4)[:, :3] - 0.5).max() > 0.1  # painted, not the grey start
    server.pump(lambda: run.state != "running")
    assert run.state == "done", run.error
    requests = [r for r, _ in server.jobs]
    assert len(requests) == 4 and requests[0]["mode"] == "txt2img"
    assert [r["seed"] for r in requests] == [500, 501, 502, 503]
    assert requests[0]["prompt"] == "weathered bronze, front view" and requests[2]["prompt"] == "weathered bronze, back view"
    assert all(r["controls"] == [{"type": "depth", "weight": 1.0, "start": 0.0, "end": 1.0, "mode": "balanced"}] for r in requests)
    assert all(r["seamless"] == "none" and (r["width"], r["height"]) == (64, 64) for r in requests)
    # Consistent views: later views are inpaints of what earlier ones left unpainted.
    assert any(r["mode"] == "inpaint" for r in requests[1:])
    for request, images in server.jobs:
        assert set(images) == ({"control.0", "init", "mask"} if request["mode"] == "inpaint" else {"control.0"})
    image = node.image
    assert image.name.startswith("LB projection Ball") and image.packed_file is not None
    assert tuple(image.size) == (128, 128)
    recipe = json.loads(image["latentbridge_projection"])
    assert recipe["views_done"] == 4 and recipe["objects"] == ["Ball"] and len(recipe["cameras"]) == 4
    assert scene.latentbridge.last_result == image.name and not scene.latentbridge.running
    assert "Projected 1 texture(s) of 128² from 4 view(s)" in scene.latentbridge.status
    assert "Latent Bridge Projection Ball" not in bpy.data.images  # the live image is gone
    texels = _pixels(image).reshape(128, 128, 4)[..., :3]
    assert texels.std() > 0.02  # views' colours, not one flat fill
    assert run.longest_tick_s < 0.5


def test_the_recipe_repeats_the_run_exactly(addon, scene, fake):
    import bpy

    _sphere(scene)
    _settings(scene, view_count=3)
    bpy.ops.latentbridge.project_texture()
    server = Server(addon, fake)
    server.pump(lambda: _run(scene).state != "running")
    first = bpy.data.images[scene.latentbridge.last_result]
    sent = list(server.jobs)
    scene.latentbridge.seed = 1  # the panel changed since: the recipe, not the panel, decides
    scene.latentbridge_projection.view_count = 6
    assert bpy.ops.latentbridge.regenerate(image=first.name) == {"FINISHED"}
    server.pump(lambda: _run(scene).state != "running")
    again = bpy.data.images[scene.latentbridge.last_result]
    assert again != first
    assert [r for r, _ in server.jobs[3:]] == [r for r, _ in sent]  # the same requests…
    assert [i for _, i in server.jobs[3:]] == [i for _, i in sent]  # …and byte-identical uploads
    assert np.array_equal(_pixels(again), _pixels(first))


def test_cancel_between_views_keeps_what_is_done(addon, scene, fake):
    import bpy

    _sphere(scene)
    _settings(scene)
    bpy.ops.latentbridge.project_texture()
    run = _run(scene)
    server = Server(addon, fake)
    server.pump(lambda: run.views_done == 2 and run.phase == "generating", answer=True)
    assert len(server.submits()) == 3 and server.answered == 2  # the third view is on its way
    Incoming = addon["connection"].Incoming
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "p3", "client_ref": server.submits()[2][3], "position": 0}))
    addon["controller"].controller.drain()
    assert bpy.ops.latentbridge.cancel() == {"FINISHED"}
    assert ("cancel", "p3") in fake.sent
    fake.feed(Incoming("event", {"type": "cancelled", "job_id": "p3"}))
    server.answered = 3
    server.pump(lambda: run.state != "running", answer=False)
    assert run.state == "cancelled" and run.views_done == 2
    image = bpy.data.images[scene.latentbridge.last_result]
    assert json.loads(image["latentbridge_projection"])["views_done"] == 2
    assert "from 2 view(s)" in scene.latentbridge.status and not scene.latentbridge.running
    # Its recipe repeats exactly those two views.
    bpy.ops.latentbridge.regenerate(image=image.name)
    again_run = _run(scene)
    server.answered = len(server.submits())
    server.pump(lambda: again_run.state != "running")
    assert again_run.state == "done" and again_run.views_done == 2
    assert np.array_equal(_pixels(bpy.data.images[scene.latentbridge.last_result]), _pixels(image))


def test_all_views_at_once_as_a_grid(addon, scene, fake):
    import bpy

    _sphere(scene)
    _settings(scene, grid=True, view_count=4)
    scene.latentbridge_projection.controls.normal.enabled = True
    bpy.ops.latentbridge.project_texture()
    server = Server(addon, fake)
    server.pump(lambda: _run(scene).state != "running")
    assert _run(scene).state == "done" and _run(scene).views_done == 4
    (request, images), = server.jobs
    assert (request["width"], request["height"]) == (128, 128) and request["mode"] == "txt2img"
    assert [u["type"] for u in request["controls"]] == ["depth", "normal"]
    png = addon["png"]
    assert png.png_size(images["control.0"][0]) == png.png_size(images["control.1"][0]) == (128, 128)


def test_unseen_texels_inpainted_in_uv_space(addon, scene, fake):
    import bpy

    _sphere(scene)
    _settings(scene, view_count=1, fill="INPAINT", consistent=False)  # one view: the back is unseen
    bpy.ops.latentbridge.project_texture()
    server = Server(addon, fake)
    server.pump(lambda: _run(scene).state != "running")
    assert _run(scene).state == "done", _run(scene).error
    (view, _), (fill, fill_images) = server.jobs
    assert view["mode"] == "txt2img" and fill["mode"] == "inpaint" and "controls" not in fill
    assert (fill["width"], fill["height"]) == (128, 128) and fill["seed"] == 501
    mask = _mod("animation").png_pixels(fill_images["mask"][0])[..., 0]
    assert 0.2 < (mask > 0.5).mean() < 0.9  # the far side of the sphere
    image = bpy.data.images[scene.latentbridge.last_result]
    assert json.loads(image["latentbridge_projection"])["fill"] == "INPAINT"


def test_a_failed_view_finishes_from_the_views_done(addon, scene, fake):
    import bpy

    _sphere(scene)
    _settings(scene)
    bpy.ops.latentbridge.project_texture()
    server = Server(addon, fake, fail_at=3)
    server.pump(lambda: _run(scene).state != "running")
    run = _run(scene)
    assert run.state == "failed" and run.views_done == 2 and "no memory" in scene.latentbridge.error
    image = bpy.data.images[scene.latentbridge.last_result]
    assert json.loads(image["latentbridge_projection"])["views_done"] == 2 and image.packed_file is not None


def test_checks_before_any_render(addon, scene, fake):
    import bpy

    renders = []
    handler = lambda *_a: renders.append(1)  # noqa: E731
    bpy.app.handlers.render_pre.append(handler)
    try:
        for obj in scene.objects:
            obj.select_set(False)
        assert not bpy.ops.latentbridge.project_texture.poll()
        ball = _sphere(scene)
        ball.data.uv_layers.remove(ball.data.uv_layers[0])
        with pytest.raises(RuntimeError, match="has no UV map"):
            bpy.ops.latentbridge.project_texture()
        _settings(scene, views="CAMERAS")
        scene.latentbridge_projection.smart_uv = True
        with pytest.raises(RuntimeError, match="Pick the cameras"):
            bpy.ops.latentbridge.project_texture()
        assert ball.data.uv_layers  # Smart UV Project gave it a map
        _settings(scene, views="ORBIT", grid=True, view_count=16, view_size=2048)
        with pytest.raises(RuntimeError, match="more than the server takes"):
            bpy.ops.latentbridge.project_texture()
        assert renders == [] and not fake.sent
    finally:
        bpy.app.handlers.render_pre.remove(handler)


def test_picked_and_active_cameras(addon, scene, fake):
    import bpy

    _sphere(scene)
    proj = _settings(scene, views="ACTIVE")
    scene.camera.location = (0.0, -8.0, 0.0)
    scene.camera.rotation_euler = (1.5707963, 0.0, 0.0)
    scene.camera.data.type = "PERSP"
    bpy.ops.latentbridge.project_texture()
    server = Server(addon, fake)
    server.pump(lambda: _run(scene).state != "running")
    assert _run(scene).state == "done" and server.jobs[0][0]["prompt"].endswith("front view")

    cam2 = bpy.data.objects.new("Side", scene.camera.data)
    cam2.location, cam2.rotation_euler = (8.0, 0.0, 0.0), (1.5707963, 0.0, 1.5707963)
    scene.collection.objects.link(cam2)
    for obj in scene.objects:
        obj.select_set(obj.name in ("Camera", "Side"))
    assert bpy.ops.latentbridge.projection_camera_add() == {"FINISHED"}
    assert [item.camera.name for item in proj.cameras] == ["Camera", "Side"]
    proj.views = "CAMERAS"
    bpy.ops.latentbridge.view_prompt_add(text="with a crest")
    for obj in scene.objects:
        obj.select_set(obj.name == "Ball")
    bpy.ops.latentbridge.project_texture()
    server.pump(lambda: _run(scene).state != "running")
    prompts = [r["prompt"] for r, _ in server.jobs[1:]]
    assert prompts == ["weathered bronze, front view, with a crest", "weathered bronze, right view"]


def test_texture_views_direction_words_and_fill_size():
    tv = lb_blender.source_module("texture_views")
    views = lb_blender.source_module("views")
    cams = views.orbit_views((0, 0, 0), 1.0, 4, elevation_deg=10, top=True, bottom=True, width=64, height=64)
    assert [tv.direction_word(c, (0, 0, 0)) for c in cams] == ["front view", "right view", "back view", "left view", "top view", "bottom view"]
    assert tv.fill_size(4096, 4096, 1024, 1024 * 1024) == (1024, 1024)
    assert tv.fill_size(256, 256, 4096, 4 << 20) == (256, 256)
    assert tv.view_prompt("bronze", "", " back view ") == "bronze, back view"
    camera = cams[1]
    back = tv.camera_from_dict(json.loads(json.dumps(tv.camera_to_dict(camera))))
    assert np.array_equal(back.matrix_world, camera.matrix_world)  # exact through JSON
    assert tv.camera_to_dict(back) == tv.camera_to_dict(camera)
