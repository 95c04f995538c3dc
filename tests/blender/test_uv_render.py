"""The projection's Blender side in real bpy: the UV render against ray-traced analytic UVs,
depth and normals; view cameras; UV triangles; texture writes; and a full round trip (project
a known image onto a cube in Blender, bake, render the textured cube back)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "projection"))
import synthetic as syn  # noqa: E402

views, projection = syn.views, syn.projection
bake_mod = lb_blender.source_module("bake")
multiview = lb_blender.source_module("multiview")


@pytest.fixture
def uv_render(addon):
    return importlib.import_module(lb_blender.ADDON_MODULE + ".uv_render")


@pytest.fixture
def empty(addon):
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def _mesh_object(scene, name, verts, faces, uvs):
    """A mesh from vertices, faces and per-face-corner UVs (one list per face)."""
    import bpy

    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(v) for v in verts], [], faces)
    layer = mesh.uv_layers.new(name="UVMap")
    flat = np.array([uv for face_uvs in uvs for uv in face_uvs], np.float32).reshape(-1)
    layer.uv.foreach_set("vector", flat)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def _cube(scene, name="Cube"):
    """The synthetic cube: [-1, 1]³, each face its own UV island (synthetic.cube_cell)."""
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    verts, index, faces, uvs = [], {}, [], []
    for f in range(6):
        s, t = np.array([c[0] for c in corners], float), np.array([c[1] for c in corners], float)
        pts = syn.cube_face_world(f, s, t)
        uv = syn.cube_st_to_uv(f, s, t)
        axis, sign = syn.FACES[f][:2]
        order = [0, 1, 2, 3]
        normal = np.cross(pts[1] - pts[0], pts[3] - pts[0])
        if normal[axis] * sign < 0:
            order = order[::-1]
        face = []
        for i in order:
            key = tuple(np.round(pts[i]).astype(int))
            if key not in index:
                index[key] = len(verts)
                verts.append(pts[i])
            face.append(index[key])
        faces.append(face)
        uvs.append([uv[i] for i in order])
    return _mesh_object(scene, name, verts, faces, uvs)


def _plane(scene):
    return _mesh_object(scene, "Plane", [(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)], [[0, 1, 2, 3]],
                        [[(0, 0), (1, 0), (1, 1), (0, 1)]])


def _camera(uv_render, scene, view):
    return uv_render.ensure_view_cameras(scene, [view], prefix="Test View")[0]


def _interior(mask):
    """Pixels whose 8 neighbours share the mask value (away from silhouettes)."""
    grow = bake_mod.grow_mask
    return mask & ~grow(~mask)


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_uv_render_matches_the_analytic_surface(uv_render, empty, kind):
    scene = empty
    cube = _cube(scene)
    plane = _plane(scene)
    plane.location = (0.0, 0.0, -2.0)  # a second object behind the cube, seen around it
    plane.scale = (3.0, 3.0, 1.0)
    size = 96
    view = views.ViewCamera(views.look_at((3.0, -4.0, 3.5), (0, 0, -0.5)), size, size, kind=kind, lens=45.0, ortho_scale=4.5, clip_end=50)
    cam = _camera(uv_render, scene, view)
    start = time.perf_counter()
    surface, camera = uv_render.render_uv(scene, [cube, plane], cam, size, size)
    print(f"\nUV render {size}² ({kind}): {(time.perf_counter() - start) * 1000:.0f} ms")
    np.testing.assert_allclose(camera.matrix_world, view.matrix_world, atol=1e-6)
    expected = syn.cube_surface(camera)
    cube_px = surface.coverage & (surface.object_index == 0)
    plane_px = surface.coverage & (surface.object_index == 1)
    assert cube_px.sum() > 0.15 * size * size and plane_px.sum() > 0.1 * size * size
    # Coverage agrees except on pixels whose centre lies within a hair of the silhouette.
    assert (cube_px != expected.coverage).sum() <= 0.01 * cube_px.sum()
    _, _, face = syn.cube_uv_to_world(expected.uv)
    one_face = np.ones_like(cube_px)
    for f in range(6):  # pixels on a cube edge may see either face
        one_face &= _interior(face == f) | ~bake_mod.grow_mask(face == f)
    both = _interior(cube_px) & _interior(expected.coverage) & one_face
    assert both.sum() > 0.6 * cube_px.sum()
    texels = np.abs(surface.uv[both] - expected.uv[both]) * 2048  # in texels of a 2048² texture
    assert texels.max() < 0.25
    np.testing.assert_allclose(surface.depth[both], expected.depth[both], rtol=1e-4)
    np.testing.assert_allclose(surface.normal[both], expected.normal[both], atol=1e-4)
    # The plane behind: its own object number, UV from its own map, occluded by the cube.
    uv_plane = surface.uv[_interior(plane_px)]
    assert (uv_plane >= -1e-6).all() and (uv_plane <= 1 + 1e-6).all()
    assert not (plane_px & expected.coverage & _interior(expected.coverage)).any()


def test_uv_render_puts_the_scene_back(uv_render, empty):
    import bpy

    scene = empty
    cube = _cube(scene)
    cube.pass_index = 7
    view = views.ViewCamera(views.look_at((3.0, -4.0, 3.5), (0, 0, 0)), 32, 32)
    cam = _camera(uv_render, scene, view)
    other = bpy.data.objects.new("Other camera", bpy.data.cameras.new("Other camera"))
    scene.collection.objects.link(other)
    scene.camera = other
    layer = bpy.context.view_layer
    s = scene.render.image_settings

    def state():
        return (scene.camera.name, scene.render.engine, scene.render.resolution_x, scene.render.film_transparent,
                s.file_format, getattr(s, "media_type", None), s.color_depth, scene.view_settings.view_transform,
                layer.material_override, layer.use_pass_z, layer.use_pass_normal, cube.pass_index, scene.cycles.samples,
                scene.render.use_persistent_data, cam.data.dof.use_dof)

    cam.data.dof.use_dof = True
    before = state()
    uv_render.render_uv(scene, [cube], cam, 32, 32)
    assert state() == before
    steps = uv_render.render_uv_steps(scene, [cube], [cam, cam], 32, 32)
    next(steps)
    assert scene.render.use_persistent_data and scene.render.engine == "CYCLES"  # mid-session
    steps.close()  # a caller that stops early still gets its scene back
    assert state() == before


def test_a_session_of_views_equals_single_renders(uv_render, empty):
    scene = empty
    cube = _cube(scene)
    auto = views.orbit_views((0, 0, 0), 3 ** 0.5, 3, width=40, height=40)
    cams = uv_render.ensure_view_cameras(scene, auto)
    batch = uv_render.render_uv_views(scene, [cube], cams, 40, 40)
    for cam, (surface, camera) in zip(cams, batch):
        single, _ = uv_render.render_uv(scene, [cube], cam, 40, 40)
        np.testing.assert_array_equal(surface.coverage, single.coverage)
        np.testing.assert_array_equal(surface.uv[surface.coverage], single.uv[single.coverage])
        np.testing.assert_allclose(camera.matrix_world, uv_render.view_camera(cam, 40, 40).matrix_world)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.12, -0.07)])
def test_uv_render_of_a_plane_matches_ray_plane_intersection(uv_render, empty, shift):
    """With a shifted lens too: Blender's shift moves the frame (a positive shift_x shows more
    of what is on the right), which the camera model follows."""
    scene = empty
    plane = _plane(scene)
    view = views.ViewCamera(views.look_at((0.7, -2.2, 1.6), (0, 0, 0)), 80, 64, lens=35.0, shift_x=shift[0], shift_y=shift[1])
    cam = _camera(uv_render, scene, view)
    surface, camera = uv_render.render_uv(scene, [plane], cam, 80, 64)
    expected = syn.plane_surface(camera)
    assert (surface.coverage != expected.coverage).sum() <= 0.01 * expected.coverage.sum()
    both = _interior(surface.coverage) & _interior(expected.coverage)
    assert both.sum() > 0.3 * 80 * 64
    assert (np.abs(surface.uv[both] - expected.uv[both]) * 2048).max() < 0.25
    np.testing.assert_allclose(surface.depth[both], expected.depth[both], rtol=1e-4)
    np.testing.assert_allclose(surface.normal[both], expected.normal[both], atol=1e-4)


def test_view_cameras_for_auto_views_frame_the_objects(uv_render, empty):
    import bpy

    scene = empty
    cube = _cube(scene)
    cube.location = (2.0, 1.0, 0.5)
    cube.scale = (1.5, 0.5, 1.0)
    bpy.context.view_layer.update()
    center, radius = views.bounding_sphere(uv_render.world_points([cube]))
    np.testing.assert_allclose(center, (2.0, 1.0, 0.5), atol=1e-6)
    auto = views.orbit_views(center, radius, 4, elevation_deg=20, top=True, width=48, height=48)
    cams = uv_render.ensure_view_cameras(scene, auto)
    assert [c.name for c in cams] == [f"{uv_render.VIEW_PREFIX} {i}" for i in range(1, 6)]
    for view, cam in zip(auto, cams):
        got = uv_render.view_camera(cam, 48, 48)
        np.testing.assert_allclose(got.matrix_world, view.matrix_world, atol=1e-5)
        assert (got.focal_pixels, got.clip_start, got.clip_end) == pytest.approx((view.focal_pixels, view.clip_start, view.clip_end))
        surface, _ = uv_render.render_uv(scene, [cube], cam, 48, 48)
        cov = surface.coverage
        assert cov.sum() > 100 and not (cov[0].any() or cov[-1].any() or cov[:, 0].any() or cov[:, -1].any())
    fewer = uv_render.ensure_view_cameras(scene, auto[:2])
    assert len(fewer) == 2 and bpy.data.objects.get(f"{uv_render.VIEW_PREFIX} 3") is None


def test_uv_triangles_are_the_meshs_render_uv_map(uv_render, empty):
    scene = empty
    cube = _cube(scene)
    tris = uv_render.uv_triangles(cube)
    assert tris.shape == (12, 3, 2)
    np.testing.assert_array_equal(bake_mod.rasterize_uv(tris, 192, 128), bake_mod.rasterize_uv(syn.cube_triangles(), 192, 128))
    bare = _mesh_object(scene, "Bare", [(0, 0, 0), (1, 0, 0), (0, 1, 0)], [[0, 1, 2]], [[(0, 0), (1, 0), (0, 1)]])
    bare.data.uv_layers.remove(bare.data.uv_layers[0])
    with pytest.raises(uv_render.ProjectionError, match="no UV map"):
        uv_render.uv_triangles(bare)


def test_smart_uv_project_gives_a_mesh_without_uvs_islands(uv_render, empty):
    import bmesh
    import bpy

    scene = empty
    mesh = bpy.data.meshes.new("Sphere")
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=8, radius=1.0)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new("Sphere", mesh)
    scene.collection.objects.link(obj)
    other = _plane(scene)
    other.select_set(True)
    bpy.context.view_layer.objects.active = other
    assert len(mesh.uv_layers) == 0
    uv_render.smart_uv_project(obj)
    assert mesh.uv_layers.active.name == "Latent Bridge UV" and mesh.uv_layers.active.active_render
    tris = uv_render.uv_triangles(obj)
    assert tris.min() >= 0 and tris.max() <= 1
    island = bake_mod.rasterize_uv(tris, 256, 256)
    assert 0.3 < island.mean() < 0.95
    assert bpy.context.view_layer.objects.active == other and other.select_get() and not obj.select_get()
    assert obj.mode == "OBJECT"


def test_write_texture_is_top_row_first_and_exact(uv_render, empty):
    pixels = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)
    image = uv_render.write_texture("LB test texture", pixels, colorspace="Non-Color", float_buffer=True)
    assert tuple(image.size) == (64, 48) and image.is_float
    back = np.empty(64 * 48 * 4, np.float32)
    image.pixels.foreach_get(back)
    back = back.reshape(48, 64, 4)[::-1]
    np.testing.assert_array_equal(back[..., :3], pixels)
    assert (back[..., 3] == 1).all()
    byte = uv_render.write_texture("LB test texture 8", pixels)
    flat = np.empty(64 * 48 * 4, np.float32)
    byte.pixels.foreach_get(flat)
    assert np.abs(flat.reshape(48, 64, 4)[::-1, :, :3] - pixels).max() <= 0.5 / 255 + 1e-6
    big = np.random.default_rng(1).random((2048, 2048, 3)).astype(np.float32)
    for float_buffer in (False, True):
        start = time.perf_counter()
        uv_render.write_texture(f"LB big {float_buffer}", big, float_buffer=float_buffer)
        print(f"\nwrite_texture 2048² float_buffer={float_buffer}: {(time.perf_counter() - start) * 1000:.0f} ms")


def test_project_a_known_image_onto_a_cube_in_blender_and_render_it_back(uv_render, empty):
    import bpy

    scene = empty
    cube = _cube(scene)
    image_size, supersample, tex_size = 128, 2, (192, 128)
    view = views.ViewCamera(views.look_at((3.0, -4.0, 3.5), (0, 0, 0)), image_size, image_size, lens=40.0)
    cam = _camera(uv_render, scene, view)
    surface, render_cam = uv_render.render_uv(scene, [cube], cam, image_size * supersample, image_size * supersample)
    image = syn.pattern_image(image_size, image_size)
    bake = multiview.TextureBake(*tex_size, uv_triangles=uv_render.uv_triangles(cube))
    bake.add_view(image, surface.select(0), render_cam)
    texture, seen = bake.texture()
    # The bake equals the analytic mapping, as with the synthetic renders.
    points, normals, face = syn.cube_uv_to_world(syn.texel_uv(*tex_size))
    expected, xy, _ = syn.analytic_texture(points, normals, view, (image_size, image_size))
    b = projection.WeightOptions().border * image_size + 4
    inside = (xy[..., 0] > b) & (xy[..., 0] < image_size - b) & (xy[..., 1] > b) & (xy[..., 1] < image_size - b)
    for f in (0, 3, 4):
        full = inside & ~bake_mod.grow_mask(face != f, 3)
        assert full.sum() > 300
        assert np.abs(texture - expected)[full].mean() <= 1 / 255
        assert syn.texel_position_error(texture, xy, (image_size, image_size))[full].max() <= 1.0
    for f in (1, 2, 5):
        assert bake.accumulator.weights()[face == f].max() == 0.0
    result = bake_mod.finish(texture, seen, bake.island, margin_px=4)
    blender_image = uv_render.write_texture("LB projected", result.texture, colorspace="Non-Color", float_buffer=True)
    # Render the textured cube from the same camera: the known image comes back.
    material = bpy.data.materials.new("LB textured")
    if material.node_tree is None:
        material.use_nodes = True
    tree = material.node_tree
    tree.nodes.clear()
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image, node.interpolation = blender_image, "Linear"
    emission = tree.nodes.new("ShaderNodeEmission")
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(node.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], out.inputs["Surface"])
    cube.data.materials.append(material)
    back = uv_render.render_channels(scene, cam, image_size, image_size)["combined"]
    weights = projection.view_weights(surface.select(0), render_cam, image_size=(image_size, image_size))
    strong = weights.reshape(image_size, supersample, image_size, supersample).min(axis=(1, 3)) > 0.05
    assert strong.sum() > 0.2 * image_size * image_size
    assert np.abs(back[..., :3] - image)[strong].mean() <= 1.5 / 255
