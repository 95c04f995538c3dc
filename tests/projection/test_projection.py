"""Projection of known images from known cameras onto a plane and a cube with known UVs: the
baked texels must equal the analytic mapping; hidden faces get nothing; blends sum to 1."""

from __future__ import annotations

import numpy as np
import pytest
import synthetic as syn

views, projection = syn.views, syn.projection
multiview = syn.lb_blender.source_module("multiview")
slices = syn.lb_blender.source_module("slices")

IMAGE = 256
SUPERSAMPLE = 2


def _camera(eye, kind="PERSP", size=IMAGE, **kwargs):
    return views.ViewCamera(views.look_at(eye, (0.0, 0.0, 0.0)), size, size, kind=kind, **kwargs)


def _bake_plane(camera, texture=128, kernel="bilinear", supersample=SUPERSAMPLE):
    render_cam = camera.with_resolution(camera.width * supersample, camera.height * supersample)
    bake = multiview.TextureBake(texture, texture, uv_triangles=syn.plane_triangles(), kernel=kernel)
    bake.add_view(syn.pattern_image(camera.width, camera.height), syn.plane_surface(render_cam), render_cam)
    return bake


def _fully_visible(xy, camera, valid, pad_texels=3):
    """Texels whose image position lies inside the border ramp and whose neighbourhood is the
    same surface (away from island borders, where the weight ramps)."""
    b = projection.WeightOptions().border * camera.width + 4
    inside = (xy[..., 0] > b) & (xy[..., 0] < camera.width - b) & (xy[..., 1] > b) & (xy[..., 1] < camera.height - b)
    outside = np.pad(~valid, pad_texels, constant_values=True)  # beyond the texture counts as outside
    grown = syn.lb_blender.source_module("bake").grow_mask(outside, pad_texels)
    return inside & ~grown[pad_texels:-pad_texels, pad_texels:-pad_texels]


@pytest.mark.parametrize("kind, eye, extra", [
    ("PERSP", (0.4, -2.0, 2.2), {"lens": 35.0}),
    ("PERSP", (-1.5, 0.3, 1.2), {"lens": 24.0}),  # steep: strong perspective foreshortening
    ("ORTHO", (0.8, -1.2, 2.0), {"ortho_scale": 2.6}),
])
def test_plane_bake_matches_the_analytic_mapping(kind, eye, extra):
    camera = _camera(eye, kind, **extra)
    bake = _bake_plane(camera)
    texture, seen = bake.texture()
    points, normals = syn.plane_uv_to_world(syn.texel_uv(128, 128))
    expected, xy, front = syn.analytic_texture(points, normals, camera, (IMAGE, IMAGE))
    full = _fully_visible(xy, camera, np.ones((128, 128), bool)) & front
    assert full.sum() > 2000
    assert seen[full].all()
    error = np.abs(texture - expected)[full]
    assert error.mean() <= 1 / 255
    position = syn.texel_position_error(texture, xy, (IMAGE, IMAGE))[full]
    assert position.max() <= 1.0
    assert position.mean() <= 0.25


def test_nearest_kernel_is_exact_to_the_texel_too():
    camera = _camera((0.4, -2.0, 2.2), lens=35.0)
    bake = _bake_plane(camera, texture=96, kernel="nearest", supersample=3)
    texture, seen = bake.texture()
    points, normals = syn.plane_uv_to_world(syn.texel_uv(96, 96))
    _, xy, _ = syn.analytic_texture(points, normals, camera, (IMAGE, IMAGE))
    full = _fully_visible(xy, camera, np.ones((96, 96), bool)) & seen
    assert full.sum() > 1000
    assert syn.texel_position_error(texture, xy, (IMAGE, IMAGE))[full].max() <= 1.0


def _cube_bake(cameras, texture=(192, 128), image=IMAGE, fill_image=None):
    bake = multiview.TextureBake(*texture, uv_triangles=syn.cube_triangles())
    for camera in cameras:
        rc = camera.with_resolution(image * SUPERSAMPLE, image * SUPERSAMPLE)
        pixels = syn.pattern_image(image, image) if fill_image is None else fill_image
        bake.add_view(pixels, syn.cube_surface(rc), rc)
    return bake


def _cube_texels(width=192, height=128):
    return syn.cube_uv_to_world(syn.texel_uv(width, height))


def test_cube_bake_matches_the_analytic_mapping_and_hidden_faces_get_nothing():
    camera = _camera((3.0, -4.0, 3.5), lens=40.0)
    bake = _cube_bake([camera])
    texture, seen = bake.texture()
    points, normals, face = _cube_texels()
    expected, xy, front = syn.analytic_texture(points, normals, camera, (IMAGE, IMAGE))
    visible_faces = {0, 3, 4}  # +X, -Y, +Z face the camera
    for f in range(6):
        island = face == f
        if f in visible_faces:
            full = _fully_visible(xy, camera, island)
            assert full.sum() > 1500, f
            assert seen[full].all()
            assert np.abs(texture - expected)[full].mean() <= 1 / 255, f
            assert syn.texel_position_error(texture, xy, (IMAGE, IMAGE))[full].max() <= 1.0, f
        else:
            assert bake.accumulator.weights()[island].max() == 0.0, f"hidden face {f} received paint"
    assert (front == np.isin(face, list(visible_faces)))[face >= 0].all()


def test_taps_stay_inside_islands():
    """Without the island restriction a splat may touch the texel just outside an island; with
    it (the default), nothing lands outside the rasterised islands."""
    camera = _camera((3.0, -4.0, 3.5), lens=40.0)
    bake = _cube_bake([camera])
    assert not (bake.accumulator.seen & ~bake.island).any()


def _three_views():
    return [_camera((3.0, -4.0, 3.5), lens=40.0), _camera((-4.0, -2.0, 1.0), lens=40.0), _camera((1.0, 3.5, -3.0), lens=40.0)]


def test_blend_weights_sum_to_one_and_reproduce_the_blend():
    size = (192, 128)
    cameras = _three_views()
    acc = projection.Accumulator(*size)
    maps, per_view = [], []
    island = syn.lb_blender.source_module("bake").rasterize_uv(syn.cube_triangles(), *size)
    for i, camera in enumerate(cameras):
        rc = camera.with_resolution(IMAGE * SUPERSAMPLE, IMAGE * SUPERSAMPLE)
        image = syn.pattern_image(IMAGE, IMAGE)[..., ::-1] if i % 2 else syn.pattern_image(IMAGE, IMAGE)
        samples = projection.view_samples(image, syn.cube_surface(rc), rc, size, island=island)
        acc.add(samples)
        maps.append(syn.projection.texel_weight_map(samples, *size))
        alone = projection.Accumulator(*size)
        alone.add(samples)
        per_view.append(alone.blend()[0])
    normalised = projection.blend_weights(maps)
    total = np.sum(normalised, axis=0)
    seen = acc.seen
    assert seen.sum() > 0.5 * island.sum()
    np.testing.assert_allclose(total[seen], 1.0, atol=1e-6)
    assert (total[~seen] == 0).all()
    assert (np.sum([m > 0 for m in maps], axis=0) >= 2).sum() > 500  # views really overlap
    blended, _ = acc.blend()
    recombined = sum(w[..., None] * t for w, t in zip(normalised, per_view))
    np.testing.assert_allclose(blended[seen], recombined[seen], atol=2e-5)


def test_sliced_projection_equals_one_pass():
    camera = _camera((3.0, -4.0, 3.5), lens=40.0)
    rc = camera.with_resolution(IMAGE * SUPERSAMPLE, IMAGE * SUPERSAMPLE)
    surface = syn.cube_surface(rc)
    whole = projection.view_weights(surface, rc, image_size=(IMAGE, IMAGE))
    parts = [projection.view_weights(surface, rc, image_size=(IMAGE, IMAGE), rows=(r, min(512, r + 37))) for r in range(0, 512, 37)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    one = projection.Accumulator(192, 128)
    one.add(projection.view_samples(syn.pattern_image(IMAGE, IMAGE), surface, rc, (192, 128)))
    sliced = projection.Accumulator(192, 128)
    runner = slices.Sliced(sliced.add_view_steps(syn.pattern_image(IMAGE, IMAGE), surface, rc, rows_per_step=16))
    ticks = 0
    while not runner.tick(0.0):
        ticks += 1
    assert ticks >= 512 // 16 - 1 and runner.slices == 512 // 16 + 1
    np.testing.assert_allclose(sliced.color_sum, one.color_sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sliced.weight_sum, one.weight_sum, rtol=1e-5, atol=1e-5)


def _cube_in_front_of_a_wall(camera):
    """A cube before a wall (plane x = -3 facing +X... here y = 3 facing -Y), two objects."""
    cube = syn.cube_surface(camera)
    origins, dirs = camera.world_rays()
    t = (3.0 - origins[..., 1]) / dirs[..., 1]
    p = origins + t[..., None] * dirs
    wall = (t > 0) & (np.abs(p[..., 0]) < 6) & (np.abs(p[..., 2]) < 6)
    _, wall_depth = camera.project(p)
    use_wall = wall & ~cube.coverage
    depth = np.where(cube.coverage, cube.depth, np.where(use_wall, wall_depth, 1e10))
    normal = np.where(use_wall[..., None], camera.normals_to_camera(np.array([0.0, -1.0, 0.0])), cube.normal)
    obj = np.where(cube.coverage, 0, np.where(use_wall, 1, -1))
    uv = np.where(use_wall[..., None], 0.5, cube.uv)
    return projection.ViewSurface(uv=uv, coverage=cube.coverage | use_wall, depth=depth, normal=normal, object_index=obj)


def _touching(mask):
    """Pixels 4-adjacent to the mask."""
    out = np.zeros_like(mask)
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out & ~mask


def test_silhouettes_and_depth_steps_are_down_weighted():
    camera = _camera((0.5, -6.0, 0.4), lens=50.0, size=128)
    surface = _cube_in_front_of_a_wall(camera)
    options = projection.WeightOptions(edge_px=3.0, border=0.0)
    wall = surface.coverage & (surface.object_index == 1)
    cube = surface.coverage & (surface.object_index == 0)
    assert wall.all() == False and cube.sum() > 500 and wall[0].all() and wall[-1].all()  # noqa: E712
    facing = -np.einsum("ijk,ijk->ij", surface.normal, camera.camera_rays(camera.pixel_centers()))
    grow = syn.lb_blender.source_module("bake").grow_mask
    edge = wall & _touching(cube)  # wall pixels beside the cube's silhouette
    assert edge.sum() > 100
    distance = np.full(wall.shape, 3)
    for d in (2, 1, 0):
        distance[grow(edge, d)] = d
    ramp = np.clip(distance / 3.0, 0, 1)
    expected = facing ** 2 * ramp * ramp * (3 - 2 * ramp)
    for surf in (surface.select(1), surface):  # the wall alone; both objects (object index differs)
        weight = projection.view_weights(surf, camera, options)
        np.testing.assert_allclose(weight[wall], expected[wall], rtol=1e-5, atol=1e-7)
        assert (weight[edge] == 0).all()
    # The same edge as a depth step inside one object (no object indices) is found too.
    merged = projection.ViewSurface(uv=surface.uv, coverage=surface.coverage, depth=surface.depth, normal=surface.normal)
    np.testing.assert_allclose(projection.view_weights(merged, camera, options)[wall], expected[wall], rtol=1e-5, atol=1e-7)


def test_facing_term_and_grazing_cut_off():
    camera = _camera((0.0, -3.0, 0.0), size=64)
    surface = syn.cube_surface(camera)
    options = projection.WeightOptions(border=0.0, edge_px=0.0, facing_power=3.0)
    weight = projection.view_weights(surface, camera, options)
    facing = -np.einsum("ijk,ijk->ij", surface.normal, camera.camera_rays(camera.pixel_centers()))
    np.testing.assert_allclose(weight[surface.coverage], facing[surface.coverage] ** 3, rtol=1e-5)
    flat = projection.ViewSurface(uv=surface.uv, coverage=surface.coverage, depth=surface.depth, facing=np.full((64, 64), 0.04))
    assert projection.view_weights(flat, camera, options).max() == 0.0  # below min_facing: nothing


def test_bad_inputs_are_clear_errors():
    camera = _camera((0.0, -3.0, 0.0), size=64)
    surface = syn.cube_surface(camera)
    with pytest.raises(projection.ProjectionError, match="resolution"):
        projection.view_weights(surface, camera.with_resolution(32, 32))
    with pytest.raises(projection.ProjectionError, match="integer multiple"):
        projection.view_samples(np.zeros((48, 48, 3)), surface, camera, (64, 64))
    with pytest.raises(projection.ProjectionError, match="coverage"):
        projection.ViewSurface(uv=np.zeros((4, 4, 2)), coverage=np.ones((4, 5)), depth=np.ones((4, 4)), facing=np.ones((4, 4)))
    with pytest.raises(projection.ProjectionError, match="normals or a facing"):
        projection.ViewSurface(uv=np.zeros((4, 4, 2)), coverage=np.ones((4, 4)), depth=np.ones((4, 4)))
    with pytest.raises(projection.ProjectionError, match="channels"):
        projection.Accumulator(64, 64, 4).add(projection.view_samples(np.zeros((64, 64, 3)), surface, camera, (64, 64)))
    with pytest.raises(projection.ProjectionError, match="kernel"):
        projection.texel_taps(np.zeros((1, 2)), 8, 8, "cubic")
    with pytest.raises(projection.ProjectionError, match="facing_power"):
        projection.WeightOptions(facing_power=-1)


def test_uint8_images_and_non_finite_uvs():
    camera = _camera((0.4, -2.0, 2.2), lens=35.0, size=64)
    surface = syn.plane_surface(camera)
    surface.uv[10, 10] = np.nan
    surface.__post_init__()
    assert not surface.coverage[10, 10]
    image8 = (syn.pattern_image(64, 64) * 255).round().astype(np.uint8)
    samples = projection.view_samples(image8, surface, camera, (32, 32))
    assert samples.color.dtype == np.float32 and 0.0 <= samples.color.min() and samples.color.max() <= 1.0
