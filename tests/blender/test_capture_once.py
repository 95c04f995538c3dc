"""Captures done right: Render Result as Source Image, one render per Generate (the inpaint mask
from the same render's Object Index pass), Reuse Last Render, validation before any render, and
no deprecation warnings while wiring textures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()




@pytest.fixture
def renders():
    """Counts the renders Blender starts (render_pre fires once per render)."""
    import bpy

    count = []

    def on_render(*_args):
        count.append(1)

    bpy.app.handlers.render_pre.append(on_render)
    yield count
    bpy.app.handlers.render_pre.remove(on_render)


def _decode(addon, data: bytes) -> np.ndarray:
    import bpy

    image = addon["apply"].image_from_bytes(data, "png")
    try:
        return addon["capture"].image_pixels(image).copy()
    finally:
        bpy.data.images.remove(image)


def test_render_result_as_source_image(addon, scene, fake):
    """Before: "Image “Render Result” has no pixels"."""
    import bpy

    bpy.ops.render.render()
    settings = scene.latentbridge
    settings.mode, settings.source = "img2img", "IMAGE"
    settings.source_image = bpy.data.images["Render Result"]
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    _, request, images, _ = fake.sent[-1]
    init = images["init"][0]
    assert addon["png"].png_size(init) == (64, 64) and (request["width"], request["height"]) == (64, 64)
    pixels = _decode(addon, init)
    assert pixels[32, 32, :3].mean() > pixels[1, 1, :3].mean() + 0.05  # the render's cube


def test_inpaint_with_selected_objects_renders_once_on_cycles(addon, scene, fake, renders):
    """Before: the scene was rendered, then rendered again for the mask."""
    import bpy

    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = 1, "CPU"
    settings = scene.latentbridge
    settings.mode, settings.source, settings.mask_source = "inpaint", "RENDER", "OBJECTS"
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    assert len(renders) == 1
    lb_blender.flush()
    mask = _decode(addon, fake.sent[-1][2]["mask"][0])[:, :, 0]
    assert mask[32, 32] > 0.99 and mask[2, 2] < 0.01  # the cube, not the background
    assert abs((mask > 0.5).mean() - (2 / 6) ** 2) < 0.03
    assert [o.pass_index for o in scene.objects] == [0, 0]  # put back
    assert not any(layer.use_pass_object_index for layer in scene.view_layers)


def test_reuse_last_render_when_nothing_changed(addon, scene, fake, renders):
    import bpy

    settings = scene.latentbridge
    settings.mode, settings.source, settings.reuse_render = "img2img", "RENDER", True
    settings.size_mode = "RENDER"
    bpy.ops.latentbridge.generate()
    lb_blender.flush()
    first = fake.sent[-1][2]["init"][0]
    fake.feed(addon["connection"].Incoming("event", {"type": "error", "job_id": None, "code": "invalid_request", "message": "x"}))
    addon["controller"].controller.drain()  # that job ends; the scene is idle again
    bpy.ops.latentbridge.generate()
    lb_blender.flush()
    assert len(renders) == 1 and fake.sent[-1][2]["init"][0] == first
    fake.feed(addon["connection"].Incoming("event", {"type": "error", "job_id": None, "code": "invalid_request", "message": "x"}))
    addon["controller"].controller.drain()
    scene.objects["Cube"].location.x = 1.0  # the scene changed: render again
    bpy.context.view_layer.update()
    bpy.ops.latentbridge.generate()
    lb_blender.flush()
    assert len(renders) == 2 and fake.sent[-1][2]["init"][0] != first


@pytest.mark.parametrize("case, message", [
    (dict(mode="outpaint", source="RENDER"), "at least one side"),
    (dict(mode="img2img", source="IMAGE"), "Pick a source image"),
    (dict(mode="inpaint", source="RENDER", mask_source="IMAGE"), "Pick a painted mask"),
    (dict(mode="inpaint", source="RENDER", mask_source="ALPHA"), "needs Source: Image"),
])
def test_validation_comes_before_any_render(addon, scene, fake, renders, case, message):
    """Before: outpaint with no side set rendered the scene, then refused."""
    import bpy

    for key, value in case.items():
        setattr(scene.latentbridge, key, value)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.latentbridge.generate()
    assert renders == [] and fake.sent == []
    assert message in scene.latentbridge.error


def test_texture_wiring_raises_no_deprecation_warning(addon, scene):
    """Before (Blender 5.x): 'Material.use_nodes' is expected to be removed in Blender 6.0."""
    import bpy

    apply = addon["apply"]
    cube = scene.objects["Cube"]
    image = bpy.data.images.new("tex", 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply.assign_texture([cube], image)  # a new material
        apply.assign_texture([cube], image)  # the existing one
    assert not [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert cube.active_material.node_tree.nodes[apply.TEXTURE_NODE].image == image

