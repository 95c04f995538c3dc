"""Exact passes from one real Cycles render (bpy), checked against analytic scenes: a plane facing
the camera, a plane tilted 45°, an axis-aligned cube's faces, pixel-exact object masks with
occlusion, segmentation colours, edges on boundaries, the colour from the same render, and every
scene setting put back."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import lb_blender

lb_blender.bpy_or_skip()
import bmesh  # noqa: E402
import bpy  # noqa: E402

ALL = {"color", "depth", "normal", "object_index", "material_index"}


@pytest.fixture
def mods(addon):
    module = lb_blender.ADDON_MODULE
    return {
        name: importlib.import_module(f"{module}.{name}")
        for name in ("passes", "control_maps", "control_images", "capture", "ade20k")
    }


def empty_scene(width: int = 64, height: int = 64):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.cycles.device = "CPU"
    return scene


def add_camera(scene, location, rotation=(0.0, 0.0, 0.0), ortho_scale=None):
    data = bpy.data.cameras.new("Camera")
    if ortho_scale is not None:
        data.type = "ORTHO"
        data.ortho_scale = ortho_scale
    camera = bpy.data.objects.new("Camera", data)
    camera.location = location
    camera.rotation_euler = rotation
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def add_quad(scene, name, corners, pass_index=0):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(c) for c in corners], [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(name, mesh)
    obj.pass_index = pass_index
    scene.collection.objects.link(obj)
    return obj


def rect(x0, x1, y0, y1, z=0.0):
    return [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)]


def add_cube(scene, name="Cube"):
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=2.0)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def pixel_centres(width, height, ortho_scale):
    """World x (per column) and y (per row, top row first) of pixel centres for an ortho camera
    at the origin of x/y looking down -Z (the scale spans the larger image side)."""
    step = ortho_scale / max(width, height)
    xs = (np.arange(width) + 0.5 - width / 2) * step
    ys = (height / 2 - np.arange(height) - 0.5) * step
    return xs, ys, step


# ------------------------------------------------------------------------------------------ depth

@pytest.mark.parametrize("ortho", [False, True])
def test_plane_facing_the_camera_gives_a_uniform_depth_map(mods, ortho):
    scene = empty_scene()
    add_camera(scene, (0.0, 0.0, 7.0), ortho_scale=5.0 if ortho else None)
    add_quad(scene, "Wall", rect(-50, 50, -50, 50))
    passes = mods["passes"].render_passes(scene, {"depth"})
    depth = passes.arrays["depth"]
    assert depth.shape == (64, 64)
    # Planar depth along the view axis: the same 7 at the centre and in the corners (a Euclidean
    # distance would grow towards the corners of a perspective view).
    assert np.abs(depth - 7.0).max() < 1e-4
    depth_map = mods["control_maps"].depth_map(depth)
    assert (depth_map == 255).all()


def test_plane_tilted_45_degrees_gives_the_expected_linear_gradient(mods):
    scene = empty_scene(64, 64)
    add_camera(scene, (0.0, 0.0, 10.0), ortho_scale=4.0)
    c = np.cos(np.radians(45.0))
    add_quad(scene, "Ramp", [(-20, -20 * c, -20 * c), (20, -20 * c, -20 * c), (20, 20 * c, 20 * c), (-20, 20 * c, 20 * c)])
    passes = mods["passes"].render_passes(scene, {"depth"})
    depth = passes.arrays["depth"].astype(np.float64)
    _xs, ys, step = pixel_centres(64, 64, 4.0)
    expected = 10.0 - ys  # z = y on a 45° plane: one pixel down is `step` farther
    assert np.abs(depth - expected[:, None]).max() < 1e-4
    assert np.allclose(np.diff(depth[:, 10]), step, atol=1e-5)
    grey = mods["control_maps"].depth_map(depth)[..., 0].astype(int)
    assert (grey == grey[:, :1]).all()  # constant along rows
    nearness = (expected.max() - expected) / (expected.max() - expected.min())  # 1 at the top row
    assert np.abs(grey[:, 0] - nearness * 255).max() <= 0.5 + 1e-6  # 255 at the top … 0 at the bottom
    slope = np.polyfit(np.arange(64), grey[:, 0], 1)[0]
    assert abs(slope - (-255 / 63)) < 0.01


def test_tilted_plane_in_perspective_has_depth_whose_inverse_is_affine(mods):
    scene = empty_scene(48, 48)
    add_camera(scene, (0.0, 0.0, 10.0))
    c = np.cos(np.radians(45.0))
    add_quad(scene, "Ramp", [(-30, -30 * c, -30 * c), (30, -30 * c, -30 * c), (30, 30 * c, 30 * c), (-30, 30 * c, 30 * c)])
    depth = mods["passes"].render_passes(scene, {"depth"}).arrays["depth"].astype(np.float64)
    column = 1.0 / depth[:, 20]  # a plane's 1/z is affine in screen space for planar z
    assert depth[:, 20].max() - depth[:, 20].min() > 1.0
    assert np.abs(np.diff(column, 2)).max() < 1e-5
    assert np.abs(depth[10] - depth[10, 0]).max() < 1e-4  # rows are at constant depth


# ----------------------------------------------------------------------------------------- normal

def _euler_xyz(rx, ry, rz):
    """Blender's XYZ Euler as a matrix (Rz · Ry · Rx), computed here, not by Blender."""
    x, y, z = np.radians([rx, ry, rz])
    mx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    my = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    mz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return mz @ my @ mx


def test_axis_aligned_cube_faces_give_the_expected_normal_colours(mods):
    scene = empty_scene(96, 96)
    angles = (54.7356, 0.0, 45.0)  # an isometric view from (+x, -y, +z)
    rotation = _euler_xyz(*angles)
    add_camera(scene, tuple(rotation @ np.array([0.0, 0.0, 10.0])), np.radians(angles), ortho_scale=5.0)
    add_cube(scene)
    passes = mods["passes"].render_passes(scene, {"normal", "object_index"})
    assert np.allclose(passes.camera_to_world, rotation, atol=1e-6)
    world = passes.arrays["normal"].astype(np.float64)
    colours = mods["control_maps"].normal_map(world, passes.camera_to_world).astype(int)
    on_cube = passes.arrays["object_index"] > 0
    faces = {}
    for axis in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]:
        face = on_cube & (world @ np.array(axis, float) > 0.99999)
        if face.any():
            faces[axis] = face
    assert set(faces) == {(1, 0, 0), (0, -1, 0), (0, 0, 1)}  # exactly the three faces seen
    assert sum(f.sum() for f in faces.values()) == on_cube.sum()  # every cube pixel is on a face
    rows, cols = np.indices(on_cube.shape)
    for axis, face in faces.items():
        cam = rotation.T @ np.array(axis, float)
        expected = np.floor(np.array([(1 - cam[0]) / 2, (1 + cam[1]) / 2, (1 + cam[2]) / 2]) * 255 + 0.5)
        assert np.abs(colours[face] - expected).max() <= 1  # within 1/255 on every pixel of the face
    # The convention, in words: the top face is the greenest, the face on the left is red, the one
    # on the right has little red; background is the "facing the viewer" colour.
    top, left, right = faces[(0, 0, 1)], faces[(0, -1, 0)], faces[(1, 0, 0)]
    assert rows[top].mean() < rows[left].mean() and cols[left].mean() < cols[right].mean()
    assert colours[top][:, 1].mean() > max(colours[left][:, 1].mean(), colours[right][:, 1].mean())
    assert colours[left][:, 0].mean() > 128 > colours[right][:, 0].mean()
    assert (colours[~on_cube] == mods["control_maps"].FACING_VIEWER).all()


# ------------------------------------------------------------------------------ masks / segments

def masks_scene(mods):
    """Two quads seen by an ortho camera, B in front of A and overlapping it, 64×48 px."""
    scene = empty_scene(64, 48)
    add_camera(scene, (0.0, 0.0, 10.0), ortho_scale=6.0)
    a_box, b_box = (-2.25, 0.68, -0.9, 1.6), (0.3, 2.05, -1.3, 0.45)
    a = add_quad(scene, "A", rect(*a_box, z=0.0), pass_index=3)
    b = add_quad(scene, "B", rect(*b_box, z=1.0))
    xs, ys, step = pixel_centres(64, 48, 6.0)
    for x0, x1, y0, y1 in (a_box, b_box):  # no edge within 0.05 px of a pixel centre: decidable
        assert min(abs(x - xs).min() for x in (x0, x1)) > 0.05 * step
        assert min(abs(y - ys).min() for y in (y0, y1)) > 0.05 * step

    def inside(box):
        x0, x1, y0, y1 = box
        return ((ys[:, None] > y0) & (ys[:, None] < y1)) & ((xs[None, :] > x0) & (xs[None, :] < x1))

    return scene, a, b, inside(a_box), inside(b_box)


def test_object_index_gives_pixel_exact_masks_with_occlusion(mods):
    scene, a, b, in_a, in_b = masks_scene(mods)
    passes = mods["passes"].render_passes(scene, {"object_index"})
    assert passes.arrays["object_index"].shape == (48, 64)
    assert (passes.object_mask([b.name_full]) == in_b).all()
    assert (passes.object_mask([a.name_full]) == (in_a & ~in_b)).all()  # hidden behind B: not A's
    assert (passes.object_mask([a.name_full, b.name_full]) == (in_a | in_b)).all()
    assert (a.pass_index, b.pass_index) == (3, 0)  # the artist's indices are back


def test_segmentation_colours_match_the_palette(mods):
    scene, a, b, in_a, in_b = masks_scene(mods)
    passes = mods["passes"].render_passes(scene, {"object_index"})
    assert passes.object_labels[passes.object_ids["A"]] == 3 and passes.object_labels[passes.object_ids["B"]] == 0
    seg = mods["control_maps"].build_maps(passes, ["segmentation"])["segmentation"]
    palette = mods["ade20k"].PALETTE
    assert (seg[in_a & ~in_b] == palette[3]).all()  # A is labelled 3: ADE20K "sky"
    b_colour = seg[in_b][0]
    assert (seg[in_b] == b_colour).all() and tuple(b_colour) not in {(0, 0, 0), tuple(palette[3])}
    assert any((palette[1:] == b_colour).all(axis=1))
    assert (seg[~(in_a | in_b)] == 0).all()


def test_edges_appear_on_object_boundaries(mods):
    scene, a, b, in_a, in_b = masks_scene(mods)
    kinds = mods["control_maps"].passes_for(["edges"])
    passes = mods["passes"].render_passes(scene, kinds)
    lines = mods["control_maps"].build_maps(passes, ["edges"])["edges"][..., 0] > 0
    ids = np.where(in_b, 2, np.where(in_a, 1, 0))
    changes = np.zeros_like(lines)
    changes[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    changes[:, 1:] |= ids[:, :-1] != ids[:, 1:]
    changes[:-1] |= ids[:-1] != ids[1:]
    changes[1:] |= ids[:-1] != ids[1:]
    assert lines.any() and not (lines & ~changes).any()  # lines only where objects meet
    b_outline = in_b & changes
    assert lines[b_outline].all()  # the front object's whole outline, on its own side


# ------------------------------------------------------------------------------------ colour etc.

def emission_material(name, strength):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    nodes.clear()
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = strength
    output = nodes.new("ShaderNodeOutputMaterial")
    material.node_tree.links.new(emission.outputs[0], output.inputs["Surface"])
    return material


def test_colour_comes_from_the_same_render_and_aligns_with_the_passes(mods):
    scene, a, b, in_a, in_b = masks_scene(mods)
    glow = emission_material("Glow", 0.5)
    b.data.materials.append(glow)
    a.data.materials.append(emission_material("Dark", 0.0))  # black, and lit by nothing
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    scene.cycles.use_denoising = False  # the denoiser would smear the colour across edges
    passes = mods["passes"].render_passes(scene, ALL)
    assert set(passes.arrays) == ALL
    rgb = mods["control_maps"].color_rgb8(passes.arrays["color"]).astype(int)
    lit = rgb.max(axis=2) > 0
    assert (lit == in_b).all()  # no anti-aliased fringe: the colour is pixel-aligned with the mask
    assert np.abs(rgb[in_b] - 188).max() <= 1  # linear 0.5 through the Standard view transform
    glow_index = passes.material_ids[glow.name_full]
    assert glow_index > 0 and (passes.arrays["material_index"][in_b] == glow_index).all()
    assert (passes.arrays["material_index"][in_a & ~in_b] == passes.material_ids["Dark"]).all()


def _snapshot(scene):
    render, fmt, layer = scene.render, scene.render.image_settings, scene.view_layers[0]
    keys = {
        "engine": render.engine, "res": (render.resolution_x, render.resolution_y, render.resolution_percentage),
        "border": render.use_border, "blur": render.use_motion_blur, "compositing": render.use_compositing,
        "format": (fmt.file_format, fmt.color_mode, fmt.color_depth, getattr(fmt, "media_type", None)),
        "samples": scene.cycles.samples, "filter": scene.cycles.filter_width, "denoise": scene.cycles.use_denoising,
        "bounces": scene.cycles.max_bounces,
        "passes": (layer.use_pass_z, layer.use_pass_normal, layer.use_pass_object_index, layer.use_pass_material_index),
        "dof": scene.camera.data.dof.use_dof,
        "indices": {o.name: o.pass_index for o in scene.objects},
    }
    return keys


def test_size_option_and_settings_restored(mods):
    scene, a, b, in_a, in_b = masks_scene(mods)
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_percentage = 50
    scene.camera.data.dof.use_dof = True
    before = _snapshot(scene)
    passes = mods["passes"].render_passes(scene, ALL, size=(40, 24))
    assert passes.width == 40 and passes.height == 24
    assert all(v.shape[:2] == (24, 40) for v in passes.arrays.values())
    assert _snapshot(scene) == before


@pytest.mark.parametrize("wanted", [ALL, ALL - {"color"}])
def test_settings_restored_when_reading_fails(mods, monkeypatch, wanted):
    scene, *_ = masks_scene(mods)
    before = _snapshot(scene)

    def broken(_data):
        raise mods["passes"].render_files.RenderFileError("disk full")

    monkeypatch.setattr(mods["passes"].render_files, "read_exr", broken)
    with pytest.raises(mods["passes"].render_files.RenderFileError):
        mods["passes"].render_passes(scene, wanted)
    assert _snapshot(scene) == before


def test_clear_errors(mods):
    scene, *_ = masks_scene(mods)
    with pytest.raises(ValueError, match="unknown pass"):
        mods["passes"].render_passes(scene, {"depth", "mist"})
    scene.camera = None
    with pytest.raises(mods["capture"].CaptureError, match="no active camera"):
        mods["passes"].render_passes(scene, {"depth"})


# --------------------------------------------------------------------------------- control images

def test_control_image_shows_exact_bytes_and_packs(mods):
    images = mods["control_images"]
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    image = images.show_control_map(rgb, kind="depth")
    assert image.name == images.CONTROL_IMAGE and tuple(image.size) == (40, 24) and not image.is_float
    back = np.empty(40 * 24 * 4, np.float32)
    image.pixels.foreach_get(back)
    back = np.rint(back.reshape(24, 40, 4)[::-1] * 255).astype(np.uint8)
    assert (back[..., :3] == rgb).all() and image[images.KIND_PROP] == "depth"
    again = images.show_control_map(rgb[:8, :16])  # resized in place, same image
    assert again == image and tuple(image.size) == (16, 8)

    png = lb_blender.source_module("png")
    packed = images.pack_control_map(png.encode_png(rgb), "Latent Bridge Control depth", 40, 24, "depth")
    assert packed.packed_file is not None and packed.use_fake_user and packed[images.KIND_PROP] == "depth"
    assert tuple(packed.size) == (40, 24) and packed.colorspace_settings.name == "Non-Color"
    decoded = np.empty(40 * 24 * 4, np.float32)
    packed.pixels.foreach_get(decoded)
    assert (np.rint(decoded.reshape(24, 40, 4)[::-1, :, :3] * 255).astype(np.uint8) == rgb).all()


# ------------------------------------------------------------------------ instanced / linked data

def test_instanced_and_linked_objects_get_indices(mods, tmp_path):
    scene, a, b, in_a, in_b = masks_scene(mods)
    # B moves into a collection that is not in the scene, shown through a collection instance.
    hidden = bpy.data.collections.new("Props")
    scene.collection.objects.unlink(b)
    hidden.objects.link(b)
    holder = bpy.data.objects.new("Props instance", None)
    holder.instance_type = "COLLECTION"
    holder.instance_collection = hidden
    scene.collection.objects.link(holder)
    # A comes from a library file: linked data cannot be changed, so it keeps its pass index 3.
    library_file = str(tmp_path / "library.blend")
    bpy.data.libraries.write(library_file, {a})
    scene.collection.objects.unlink(a)
    bpy.data.objects.remove(a)
    with bpy.data.libraries.load(library_file, link=True) as (source, target):
        target.objects = ["A"]
    linked = target.objects[0]
    assert linked.library is not None and linked.pass_index == 3
    scene.collection.objects.link(linked)

    passes = mods["passes"].render_passes(scene, {"object_index"})
    assert passes.object_ids[linked.name_full] == 3
    assert passes.object_ids[b.name_full] > 3  # new indices start above the linked ones
    assert (passes.object_mask([b.name_full]) == in_b).all()
    assert (passes.object_mask([linked.name_full]) == (in_a & ~in_b)).all()
