"""Pixels out of Blender: render, viewport fallback, images, object and painted masks."""

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


def test_object_mask_is_white_on_selected_objects_only(addon, scene):
    import bpy

    # A second object, not selected, beside the cube: it must stay black in the mask.
    other = bpy.data.objects.new("Other", scene.objects["Cube"].data)
    other.location = (2.5, 2.5, 0.0)
    scene.collection.objects.link(other)
    colors = {o.name: tuple(o.color) for o in scene.objects}
    engine = scene.render.engine
    data = addon["capture"].object_mask_png(scene, [scene.objects["Cube"]])
    mask = _decode(addon, data)[:, :, 0]
    assert mask.shape == (64, 64)
    assert mask[32, 32] > 0.99  # cube centre
    assert mask[2, 2] < 0.01 and mask[2, 62] < 0.01  # background corners
    other_px = mask[64 - int((2.5 + 3) / 6 * 64), int((2.5 + 3) / 6 * 64)]  # image row flips Y
    assert other_px < 0.01
    # A 2-unit cube seen by a 6-unit orthographic camera: a ~21 px square; only its edges are grey.
    assert abs((mask > 0.5).mean() - (2 / 6) ** 2) < 0.03
    assert ((mask > 0.05) & (mask < 0.95)).mean() < 0.05
    assert {o.name: tuple(o.color) for o in scene.objects} == colors and scene.render.engine == engine


def test_object_mask_resized_to_the_source(addon, scene):
    data = addon["capture"].object_mask_png(scene, [scene.objects["Cube"]], size=(128, 96))
    assert addon["png"].png_size(data) == (128, 96)


def test_object_mask_needs_a_selection(addon, scene):
    with pytest.raises(addon["capture"].CaptureError, match="Select"):
        addon["capture"].object_mask_png(scene, [])


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
