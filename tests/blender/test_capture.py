"""Pixels out of Blender: render, viewport fallback, images, the selected-objects mask from the
render passes, painted and alpha masks."""

from __future__ import annotations

import time

import numpy as np
import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()


def _decode(addon, data: bytes) -> np.ndarray:
    """PNG bytes → float RGBA (top row first), decoded by Blender itself."""
    import bpy

    image = bpy.data.images.new("decode", 8, 8)
    image.source = "FILE"
    image.filepath_raw = "//decode.png"
    image.pack(data=data, data_len=len(data))
    try:
        return addon["capture"].image_pixels(image).copy()
    finally:
        bpy.data.images.remove(image)


def test_render_png_is_the_scene_at_render_size(addon, scene):
    capture, png = addon["capture"], addon["png"]
    settings_before = (scene.render.image_settings.file_format, scene.render.engine)
    start = time.perf_counter()
    data = capture.render_png(scene)
    print(f"\nworkbench render 64² → PNG: {(time.perf_counter() - start) * 1000:.0f} ms")
    assert png.png_size(data) == (64, 64)
    pixels = _decode(addon, data)
    assert pixels[32, 32, :3].mean() > pixels[1, 1, :3].mean() + 0.05  # the lit cube vs background
    assert (scene.render.image_settings.file_format, scene.render.engine) == settings_before


def test_render_with_cycles(addon, scene):
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.device = "CPU"
    data = addon["capture"].render_png(scene)
    assert addon["png"].png_size(data) == (64, 64)
    assert scene.render.engine == "CYCLES"


def test_no_camera_is_a_clear_error(addon, scene):
    scene.camera = None
    with pytest.raises(addon["capture"].CaptureError, match="no active camera"):
        addon["capture"].render_png(scene)


def test_viewport_falls_back_to_a_camera_render_without_gpu_context(addon, scene):
    import bpy

    data, note = addon["capture"].viewport_png(bpy.context)
    assert addon["png"].png_size(data) == (64, 64)
    assert "Workbench" in note


def _conditioning():
    import importlib

    return importlib.import_module(lb_blender.ADDON_MODULE + ".conditioning")


def test_selected_objects_mask_from_the_data_render_keeps_the_scene_look(addon, scene):
    """Workbench scene: the colour is the scene's own render (its look), the mask comes from one
    data-only Cycles render's object index pass: exact, no grey edge, the other object black."""
    import bpy

    capture, cond = addon["capture"], _conditioning()
    other = bpy.data.objects.new("Other", scene.objects["Cube"].data)
    other.location = (2.5, 2.5, 0.0)
    scene.collection.objects.link(other)
    before = ({o.name: (tuple(o.color), o.pass_index) for o in scene.objects}, scene.render.engine,
              [layer.use_pass_object_index for layer in scene.view_layers])
    rendered = capture.render(scene, passes={"object_index"})
    assert rendered.renders == 2 and rendered.size == (64, 64)
    assert np.array_equal(rendered.color, capture.render(scene).color)  # the look of the scene's own render
    uploads = cond.build_uploads(cond.Capture(color=rendered.color, passes=rendered.passes, mask_objects=("Cube",),
                                              mask_size=rendered.size), [])
    assert set(uploads.images) == {"init", "mask"}
    mask = _decode(addon, uploads.images["mask"][0])[:, :, 0]
    assert mask[32, 32] == 1.0 and mask[2, 2] == 0.0 and mask[2, 62] == 0.0
    assert mask[64 - int((2.5 + 3) / 6 * 64), int((2.5 + 3) / 6 * 64)] == 0.0  # the unselected object
    assert abs((mask > 0.5).mean() - (2 / 6) ** 2) < 0.03 and set(np.unique(mask)) == {0.0, 1.0}
    after = ({o.name: (tuple(o.color), o.pass_index) for o in scene.objects}, scene.render.engine,
             [layer.use_pass_object_index for layer in scene.view_layers])
    assert after == before


def test_object_mask_resized_to_the_source(addon, scene):
    cond = _conditioning()
    rendered = addon["capture"].render(scene, color=False, passes={"object_index"})
    assert rendered.renders == 1 and rendered.color is None
    uploads = cond.build_uploads(cond.Capture(passes=rendered.passes, mask_objects=("Cube",), mask_size=(128, 96)), [])
    assert addon["png"].png_size(uploads.images["mask"][0]) == (128, 96) and "init" not in uploads.images


def test_object_mask_of_an_object_out_of_view_is_refused(addon, scene):
    cond = _conditioning()
    scene.objects["Cube"].location.x = 40.0
    rendered = addon["capture"].render(scene, color=False, passes={"object_index"})
    with pytest.raises(cond.ConditioningError, match="None of the selected objects"):
        cond.build_uploads(cond.Capture(passes=rendered.passes, mask_objects=("Cube",)), [])


def test_existing_image_and_painted_masks(addon, scene):
    import bpy

    capture = addon["capture"]
    image = bpy.data.images.new("Painted", 64, 32, alpha=True)
    pixels = np.zeros((32, 64, 4), np.float32)
    pixels[:, :, 0] = 1.0  # red
    pixels[:, :, 3] = 1.0
    pixels[:16, :, 3] = 0.0  # bottom half (Blender rows start at the bottom) erased
    image.pixels.foreach_set(pixels.ravel())
    rgb = _decode(addon, capture.image_png(image))
    assert rgb.shape == (32, 64, 4) and rgb[5, 5, 0] > 0.99 and rgb[5, 5, 1] < 0.01

    alpha = _decode(addon, capture.alpha_mask_png(image))[:, :, 0]
    assert alpha[30, 5] > 0.99 and alpha[2, 5] < 0.01  # erased (bottom) → repaint

    mask_image = bpy.data.images.new("Mask", 32, 16)
    m = np.zeros((16, 32, 4), np.float32)
    m[:, 16:, :] = 1.0  # white right half
    mask_image.pixels.foreach_set(m.ravel())
    painted = _decode(addon, capture.painted_mask_png(mask_image, (64, 32)))[:, :, 0]
    assert painted.shape == (32, 64)
    assert painted[10, 60] > 0.99 and painted[10, 3] < 0.01


def test_png_encoder_round_trips_through_blender(addon, scene):
    png = addon["png"]
    values = (np.arange(24 * 16 * 3) % 251).astype(np.uint8).reshape(16, 24, 3)
    decoded = _decode(addon, png.encode_png(values))
    assert np.array_equal(np.round(decoded[:, :, :3] * 255).astype(np.uint8), values)
    with pytest.raises(ValueError):
        png.encode_png(values.astype(np.float32))
