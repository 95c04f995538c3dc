"""Scene controls through the real add-on (stand-in network thread): the units the artist ticks go
into the request with their maps from ONE render, the maps are shown in "Latent Bridge Control",
packed with the result and sent again by Regenerate; text to image, Workbench scenes, outpaint's
extended frame, batches, animation frames, the server's capabilities and its ControlNet list."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()


@pytest.fixture
def renders():
    import bpy

    count = []

    def on_render(*_args):
        count.append(1)

    bpy.app.handlers.render_pre.append(on_render)
    yield count
    bpy.app.handlers.render_pre.remove(on_render)


def _mod(name):
    return importlib.import_module(f"{lb_blender.ADDON_MODULE}.{name}")


def _decode(addon, data):
    import bpy

    image = addon["apply"].image_from_bytes(data, "png")
    try:
        return np.rint(addon["capture"].image_pixels(image)[:, :, :3] * 255).astype(np.uint8)
    finally:
        bpy.data.images.remove(image)


def _tick(scene, kind, **values):
    unit = getattr(scene.latentbridge_control, kind)
    unit.enabled = True
    for key, value in values.items():
        setattr(unit, key, value)
    return unit


def _cycles(scene):
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = 1, "CPU"


def _answer(addon, fake, job_id, size=(64, 64), color=(90, 60, 30), count=1):
    """The server's answer to the last submit: accepted, `count` results, done."""
    Incoming = addon["connection"].Incoming
    ctl = addon["controller"].controller
    lb_blender.flush(ctl)
    _, request, _, ref = fake.sent[-1]
    fake.feed(Incoming("event", {"type": "accepted", "job_id": job_id, "client_ref": ref, "position": 0}))
    for i in range(count):
        seed = request["seed"] + i
        recipe = {**request, "seed": seed, "batch_size": 1}
        fake.feed(Incoming("event", {"type": "result", "job_id": job_id, "index": i, "seed": seed, "width": size[0],
                                     "height": size[1], "request": recipe}))
        fake.feed(Incoming("result", header={"kind": "result", "format": "png", "job_id": job_id, "index": i},
                           data=lb_blender.png_bytes(color, size)))
    fake.feed(Incoming("event", {"type": "done", "job_id": job_id, "count": count, "elapsed_s": 0.1}))
    ctl.drain()


def test_depth_and_normal_from_one_cycles_render_go_with_the_request(addon, scene, fake, renders):
    import bpy

    _cycles(scene)
    _tick(scene, "depth", weight=0.8, end=0.9)
    _tick(scene, "normal", weight=0.5, mode="prompt", model="tiny-controlnet")
    settings = scene.latentbridge
    settings.mode, settings.source, settings.random_seed, settings.seed = "img2img", "RENDER", False, 7
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    assert len(renders) == 1  # colour and passes from the same render
    job = list(addon["controller"].controller.jobs.values())[-1]
    assert job.state == "preparing" and not fake.sent  # the PNGs are made on the worker thread
    lb_blender.flush()
    _, request, images, _ = fake.sent[-1]
    assert request["controls"] == [
        {"type": "depth", "weight": 0.8, "start": 0.0, "end": 0.9, "mode": "balanced"},
        {"type": "normal", "weight": 0.5, "start": 0.0, "end": 1.0, "mode": "prompt", "model": "tiny-controlnet"},
    ]
    assert set(images) == {"init", "control.0", "control.1"}
    depth, normal = _decode(addon, images["control.0"][0]), _decode(addon, images["control.1"][0])
    # The reset scene: a 2-unit cube seen straight from above by a 6-unit orthographic camera.
    centre, corner = (32, 32), (2, 2)
    assert (depth[centre] == 255).all() and (depth[corner] == 0).all()  # the top face is the nearest surface
    assert (normal[centre] == (128, 128, 255)).all()  # facing the camera
    assert abs((depth[..., 0] == 255).mean() - (2 / 6) ** 2) < 0.03
    control = bpy.data.images["Latent Bridge Control"]
    assert tuple(control.size) == (128, 64)  # both maps, side by side
    shown = np.rint(np.asarray(control.pixels[:]).reshape(64, 128, 4)[::-1, :, :3] * 255).astype(np.uint8)
    assert (shown[:, :64] == depth).all() and (shown[:, 64:] == normal).all()


def test_result_keeps_its_control_inputs_and_regenerate_sends_them_again(addon, scene, fake):
    import bpy

    _cycles(scene)
    _tick(scene, "depth")
    _tick(scene, "edges")
    scene.latentbridge_control.edge_type = "canny"
    settings = scene.latentbridge
    settings.mode, settings.source, settings.random_seed, settings.seed = "img2img", "RENDER", False, 12
    bpy.ops.latentbridge.generate()
    _answer(addon, fake, "c1")
    _, request, images, _ = fake.sent[-1]
    assert [u["type"] for u in request["controls"]] == ["depth", "canny"]
    result = bpy.data.images[settings.last_result]
    packed = {role: bpy.data.images[result[f"latentbridge_{role.replace('.', '_')}"]] for role in ("init", "control.0", "control.1")}
    for role, image in packed.items():
        assert image.packed_file is not None and bytes(image.packed_file.data) == images[role][0]
    assert packed["control.0"].colorspace_settings.name == "Non-Color" and packed["control.0"]["latentbridge_control"] == "depth"
    assert packed["control.1"]["latentbridge_control"] == "canny"
    assert bpy.ops.latentbridge.regenerate(image=result.name) == {"FINISHED"}
    _, again, again_images, _ = fake.sent[-1]
    assert again_images == images and again["controls"] == request["controls"] and again["seed"] == 12


def test_text_to_image_renders_only_the_passes_at_the_image_size(addon, scene, fake, renders):
    import bpy

    _tick(scene, "depth")
    _tick(scene, "segmentation")
    settings = scene.latentbridge
    settings.mode, settings.size_mode, settings.width, settings.height = "txt2img", "CUSTOM", 96, 64
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    assert len(renders) == 1 and scene.render.engine == "BLENDER_WORKBENCH"
    lb_blender.flush()
    _, request, images, _ = fake.sent[-1]
    assert set(images) == {"control.0", "control.1"} and request["mode"] == "txt2img"
    png = addon["png"]
    assert png.png_size(images["control.0"][0]) == png.png_size(images["control.1"][0]) == (96, 64)
    seg = _decode(addon, images["control.1"][0])
    assert (seg[32, 48] != 0).any() and (seg[2, 2] == 0).all()  # the cube has an ADE20K colour, the background none


def test_workbench_scene_keeps_its_look_and_adds_one_data_render(addon, scene, fake, renders):
    import bpy

    _tick(scene, "normal")
    settings = scene.latentbridge
    settings.mode, settings.source, settings.mask_source = "inpaint", "RENDER", "OBJECTS"
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    assert len(renders) == 2  # the scene's own engine for the colour, one data-only Cycles render
    lb_blender.flush()
    _, _, images, _ = fake.sent[-1]
    assert set(images) == {"init", "mask", "control.0"}
    look = addon["capture"].render_png(scene)  # what the artist renders
    assert (_decode(addon, images["init"][0]) == _decode(addon, look)).all()
    mask = _decode(addon, images["mask"][0])[..., 0]
    assert mask[32, 32] == 255 and mask[2, 2] == 0 and set(np.unique(mask)) == {0, 255}


def test_outpaint_maps_cover_the_extended_canvas(addon, scene, fake):
    """The passes are rendered through a camera whose frame is grown by the outpaint extents:
    the original frame's pixels are exactly where a plain render has them."""
    import bpy

    _cycles(scene)
    capture = addon["capture"]
    plain = capture.render(scene, color=False, passes={"depth", "normal"})
    grown = capture.render(scene, color=False, passes={"depth", "normal"}, overscan=(8, 16, 24, 0))
    assert (grown.passes.width, grown.passes.height) == (96, 80)
    inner = grown.passes.arrays["depth"][16:80, 8:72]
    assert np.allclose(inner, plain.passes.arrays["depth"], atol=1e-4)
    assert np.allclose(grown.passes.arrays["normal"][16:80, 8:72], plain.passes.arrays["normal"], atol=1e-4)
    camera = scene.camera.data
    assert (camera.sensor_fit, camera.shift_x, camera.ortho_scale) == ("AUTO", 0.0, 6.0)  # put back

    _tick(scene, "depth")
    settings = scene.latentbridge
    settings.mode, settings.source, settings.outpaint_right, settings.outpaint_top = "outpaint", "RENDER", 32, 16
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    lb_blender.flush()
    _, request, images, _ = fake.sent[-1]
    png = addon["png"]
    assert png.png_size(images["init"][0]) == (64, 64) and png.png_size(images["control.0"][0]) == (96, 80)
    assert request["outpaint"] == {"left": 0, "top": 16, "right": 32, "bottom": 0}


def test_a_batch_and_an_animation_carry_the_maps(addon, scene, fake, tmp_path):
    import bpy

    _tick(scene, "depth")
    settings = scene.latentbridge
    settings.mode, settings.source, settings.batch_size, settings.random_seed, settings.seed = "img2img", "RENDER", 2, False, 3
    bpy.ops.latentbridge.generate()
    _answer(addon, fake, "b1", count=2)
    images = [bpy.data.images[item.image] for item in settings.batch]
    assert len(images) == 2 and len({im["latentbridge_control_0"] for im in images}) == 1  # one upload for the batch

    settings.batch_size = 1
    scene.frame_start, scene.frame_end = 1, 2
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    scene = bpy.context.scene
    assert bpy.ops.latentbridge.animate() == {"FINISHED"}
    for n in (1, 2):
        _answer(addon, fake, f"f{n}")
        _, request, frame_images, _ = fake.sent[-1]
        assert set(frame_images) == {"init", "control.0"} and request["controls"][0]["type"] == "depth"
    assert "Animation done: 2 frame(s)" in scene.latentbridge.status


def test_cancel_while_the_maps_are_made_sends_nothing(addon, scene, fake):
    import bpy

    _tick(scene, "depth")
    scene.latentbridge.mode = "txt2img"
    bpy.ops.latentbridge.generate()
    assert bpy.ops.latentbridge.cancel() == {"FINISHED"}
    job = list(addon["controller"].controller.jobs.values())[-1]
    assert job.state == "cancelled" and not scene.latentbridge.running
    lb_blender.flush()
    addon["controller"].controller.drain()
    assert not [s for s in fake.sent if s[0] == "submit"]


def test_server_without_controlnet_is_refused_before_any_render(addon, scene, fake, renders):
    import bpy

    _tick(scene, "depth")
    scene.latentbridge.mode = "txt2img"
    fake.server_hello = {"type": "hello", "server": "latentbridge/test", "model": {"name": "sd3-thing"},
                         "capabilities": {"control_types": [], "controlnets": []}}
    with pytest.raises(RuntimeError, match="takes no ControlNet"):
        bpy.ops.latentbridge.generate()
    fake.server_hello["capabilities"] = {"control_types": ["depth"], "control_modes": ["txt2img"]}
    scene.latentbridge_control.depth.enabled = False
    _tick(scene, "normal")
    with pytest.raises(RuntimeError, match="no normal control"):
        bpy.ops.latentbridge.generate()
    assert renders == [] and not fake.sent
    scene.latentbridge_control.normal.start, scene.latentbridge_control.normal.end = 0.6, 0.4
    with pytest.raises(RuntimeError, match="start before it ends"):
        bpy.ops.latentbridge.generate()


def test_controlnet_picker_offers_the_servers_list(addon, scene, fake):
    Incoming = addon["connection"].Incoming
    ctl = addon["controller"].controller
    fake.server_hello = {"type": "hello", "capabilities": {"controlnets": ["tiny-controlnet"]}}
    fake.feed(Incoming("models", {"models": ["tiny"], "controlnets": [
        {"name": "tiny-controlnet", "kind": "builtin"}, {"name": "tiny-ip-adapter", "kind": "builtin"},
        {"name": "control_v11f1p_sd15_depth", "kind": "diffusers"}]}))
    ctl.drain()
    search = _mod("control_ui")._controlnet_search
    assert search(None, None, "") == ["tiny-controlnet", "control_v11f1p_sd15_depth"]
    assert search(None, None, "DEPTH") == ["control_v11f1p_sd15_depth"]


def test_connection_reads_controlnets_from_the_models_list():
    conn = lb_blender.source_module("connection")
    body = {"controlnets": [{"name": "a", "kind": "builtin"}, {"name": "b", "kind": "configured", "type": "depth"},
                            {"name": "a", "kind": "builtin"}, {"kind": "x"}, "junk"]}
    assert conn.controlnet_entries(body) == [{"name": "a", "kind": "builtin"}, {"name": "b", "kind": "configured", "type": "depth"}]
    assert conn.controlnet_entries([]) == [] and conn.controlnet_entries({"controlnets": 3}) == []
