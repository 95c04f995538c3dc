"""The seam-free bake: island masks from UV triangles, margin dilation, filling unseen texels,
and the consistent-view round trip (texture → a view's init image and inpaint mask)."""

from __future__ import annotations

import numpy as np
import pytest
import synthetic as syn

bake = syn.lb_blender.source_module("bake")
multiview = syn.lb_blender.source_module("multiview")
projection, views = syn.projection, syn.views
slices = syn.lb_blender.source_module("slices")

SIZE = (192, 128)


def _brute_force_mask(triangles, width, height):
    """Texel centres inside (or on) any triangle, tested texel by texel with barycentrics."""
    uv = syn.texel_uv(width, height).reshape(-1, 2)
    inside = np.zeros(len(uv), bool)
    for a, b, c in triangles:
        m = np.array([[b[0] - a[0], c[0] - a[0]], [b[1] - a[1], c[1] - a[1]]])
        if abs(np.linalg.det(m)) < 1e-14:
            continue
        lam = np.linalg.solve(m, (uv - a).T).T
        inside |= (lam[:, 0] >= -1e-9) & (lam[:, 1] >= -1e-9) & (lam.sum(axis=1) <= 1 + 1e-9)
    return inside.reshape(height, width)


def test_island_mask_of_the_cube_is_its_six_rectangles():
    mask = bake.rasterize_uv(syn.cube_triangles(), *SIZE)
    _, _, face = syn.cube_uv_to_world(syn.texel_uv(*SIZE))
    np.testing.assert_array_equal(mask, face >= 0)
    assert mask.sum() == 6 * 56 * 56  # 64² cells inset by 1/16 on each side


def test_island_mask_matches_brute_force_on_random_triangles():
    rng = np.random.default_rng(3)
    tris = rng.uniform(-0.2, 1.2, size=(60, 3, 2))  # some outside [0, 1]: they wrap
    tris[::7] *= 0.05  # some tiny ones
    wrapped = tris - np.floor(tris.min(axis=1, keepdims=True))
    width, height = 97, 61
    expected = np.zeros((height, width), bool)
    for du in (0, -1, -2):
        for dv in (0, -1, -2):
            expected |= _brute_force_mask(wrapped + np.array([du, dv]), width, height)
    for step in (1 << 20, 50):  # one slice, many slices
        mask = slices.run(bake.rasterize_uv_steps(tris, width, height, rows_per_step=step))
        np.testing.assert_array_equal(mask, expected)


def test_shared_edges_leave_no_cracks():
    # A fan of thin triangles around a centre: every texel centre of the square is covered.
    angles = np.linspace(0, 2 * np.pi, 41)
    ring = np.stack([0.5 + 0.45 * np.cos(angles), 0.5 + 0.45 * np.sin(angles)], axis=1)
    tris = np.array([[[0.5, 0.5], ring[i], ring[i + 1]] for i in range(40)])
    mask = bake.rasterize_uv(tris, 128, 128)
    uv = syn.texel_uv(128, 128)
    # Inside the inscribed polygon (radius × cos(π/40)) minus a hair: all set.
    r = np.hypot(uv[..., 0] - 0.5, uv[..., 1] - 0.5)
    assert mask[r < 0.45 * np.cos(np.pi / 40) - 1e-3].all()
    assert not mask[r > 0.45 + 1e-3].any()


def test_dilation_covers_exactly_the_margin():
    tex = np.zeros((40, 50, 3), np.float32)
    filled = np.zeros((40, 50), bool)
    tex[20, 25], filled[20, 25] = (0.2, 0.4, 0.6), True
    tex[5, 5], filled[5, 5] = (1.0, 0.0, 0.0), True
    out, grown = bake.dilate(tex, filled, 4)
    rows, cols = np.mgrid[0:40, 0:50]
    near_a = np.maximum(abs(rows - 20), abs(cols - 25)) <= 4
    near_b = np.maximum(abs(rows - 5), abs(cols - 5)) <= 4
    np.testing.assert_array_equal(grown, near_a | near_b)
    np.testing.assert_allclose(out[near_a], np.broadcast_to((0.2, 0.4, 0.6), out[near_a].shape), atol=1e-6)
    assert (out[~grown] == 0).all()


def test_dilation_averages_the_neighbours_it_grows_from():
    tex = np.zeros((3, 3, 1), np.float32)
    filled = np.zeros((3, 3), bool)
    tex[0, 0], tex[0, 2] = 1.0, 3.0
    filled[0, 0] = filled[0, 2] = True
    out, _ = bake.dilate(tex, filled, 1)
    assert out[0, 1, 0] == pytest.approx(2.0)  # both set neighbours
    assert out[1, 0, 0] == pytest.approx(1.0)
    assert out[1, 1, 0] == pytest.approx(2.0)


def test_push_pull_keeps_known_texels_and_fills_smoothly():
    rng = np.random.default_rng(0)
    h, w = 64, 96
    ys, xs = np.mgrid[0:h, 0:w]
    ramp = np.stack([xs / w, ys / h, np.full((h, w), 0.5)], axis=-1).astype(np.float32)
    known = rng.random((h, w)) < 0.1
    out = bake.push_pull(ramp, known)
    np.testing.assert_array_equal(out[known], ramp[known])
    assert np.abs(out - ramp).mean() < 0.03  # a smooth field is filled close to itself
    assert (bake.push_pull(ramp, np.zeros((h, w), bool)) == 0).all()


def _one_view_cube(image=None, size=SIZE):
    camera = views.ViewCamera(views.look_at((3.0, -4.0, 3.5), (0, 0, 0)), 256, 256, lens=40.0)
    rc = camera.with_resolution(512, 512)
    tb = multiview.TextureBake(*size, uv_triangles=syn.cube_triangles())
    tb.add_view(syn.pattern_image(256, 256) if image is None else image, syn.cube_surface(rc), rc)
    return tb, camera


def test_fill_sets_every_island_texel_from_its_neighbours():
    color = np.array([0.2, 0.6, 0.9], np.float32)
    tb, _ = _one_view_cube(np.broadcast_to(color, (256, 256, 3)).copy())
    result = slices.run(tb.finish_steps(margin_px=4, fill=True))
    island = bake.rasterize_uv(syn.cube_triangles(), *SIZE)
    np.testing.assert_array_equal(result.island, island)
    assert result.unseen.sum() >= 3 * 56 * 56  # three hidden faces, plus grazing/edge texels
    # 100 % of island texels are set, to what their neighbours say (the one colour seen).
    np.testing.assert_allclose(result.texture[island], np.broadcast_to(color, result.texture[island].shape), atol=1e-5)
    margin = bake.grow_mask(island, 4) & ~island
    np.testing.assert_array_equal(result.margin, margin)
    np.testing.assert_allclose(result.texture[margin], np.broadcast_to(color, result.texture[margin].shape), atol=1e-5)


def test_margin_without_fill_and_without_background():
    tb, _ = _one_view_cube()
    texture, seen = tb.texture()
    result = bake.finish(texture, seen, tb.island, margin_px=6, fill=False, fill_background=False)
    np.testing.assert_array_equal(result.unseen, tb.island & ~seen)
    grown = bake.grow_mask(seen, 6)
    np.testing.assert_array_equal(result.texture[seen], texture[seen])  # painted texels untouched
    assert (result.texture[~grown] == 0).all()  # nothing beyond the margin
    assert (result.texture[grown & ~seen].max(axis=-1) > 0).all()  # the margin is set
    # With the background fill, no texel is left black.
    full = bake.finish(texture, seen, tb.island, margin_px=6, fill=False)
    assert (full.texture.max(axis=-1) > 0).all()


def test_sliced_finish_equals_one_pass():
    tb, _ = _one_view_cube()
    whole = slices.run(tb.finish_steps(margin_px=5))
    runner = slices.Sliced(tb.finish_steps(margin_px=5))
    while not runner.tick(0.0):
        pass
    assert runner.slices > 10
    np.testing.assert_allclose(runner.result.texture, whole.texture, atol=1e-6)


def test_consistent_views_round_trip():
    """View A paints the cube; A's own init image is its image where it painted (mask 0), and a
    second view B sees A's paint where they overlap and must repaint only the rest."""
    tb, camera_a = _one_view_cube()
    rc_a = camera_a.with_resolution(512, 512)
    surface_a = syn.cube_surface(rc_a)
    init, mask = tb.init_for_view(surface_a, (256, 256))
    image = syn.pattern_image(256, 256)
    weights = projection.view_weights(surface_a, rc_a, image_size=(256, 256))
    strong = weights.reshape(256, 2, 256, 2).min(axis=(1, 3)) > 0.05  # all four sub-pixels weighted
    assert strong.sum() > 0.2 * 256 * 256
    assert (mask[strong] == 0).all()
    assert np.abs(init - image)[strong].mean() <= 1.5 / 255
    cube_a = surface_a.coverage.reshape(256, 2, 256, 2).any(axis=(1, 3))
    assert (mask[~cube_a] == 1).all()  # background: free to paint

    camera_b = views.ViewCamera(views.look_at((-3.5, -4.0, 3.0), (0, 0, 0)), 256, 256, lens=40.0)
    rc_b = camera_b.with_resolution(512, 512)
    surface_b = syn.cube_surface(rc_b)
    init_b, mask_b = tb.init_for_view(surface_b, (256, 256))
    # B sees -X (never painted: repaint) and -Y, +Z (painted by A: keep, with A's colours).
    _, _, face_b = syn.cube_uv_to_world(surface_b.uv)
    face_b = np.where(surface_b.coverage, face_b, -1).reshape(256, 2, 256, 2)
    whole_face = (face_b == face_b[:, :1, :, :1]).all(axis=(1, 3))
    face_px = face_b[:, 0, :, 0]
    assert (mask_b[whole_face & (face_px == 1)] == 1).all()  # -X
    kept = whole_face & np.isin(face_px, [3, 4]) & (mask_b == 0)
    assert kept.sum() > 0.1 * 256 * 256
    # Where B keeps paint, its init shows what A painted there: the image A saw at that point.
    p, _, _ = syn.cube_uv_to_world(surface_b.uv)
    xy_a, _ = camera_a.project(p)
    seen_in_a = syn.pattern(xy_a[..., 0], xy_a[..., 1], 256, 256).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(init_b - seen_in_a)[kept].mean() <= 2 / 255
    grown = tb.init_for_view(surface_b, (256, 256), grow_px=3)[1]
    np.testing.assert_array_equal(grown, bake.grow_mask(mask_b > 0, 3).astype(np.float32))


def test_views_tile_into_a_grid_and_back():
    assert [multiview.grid_layout(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [(1, 1), (1, 2), (2, 2), (2, 2), (2, 3), (2, 3), (3, 3)]
    rng = np.random.default_rng(5)
    images = [rng.random((24, 32, 3)).astype(np.float32) for _ in range(5)]
    grid = multiview.tile_views(images, fill=0.5)
    assert grid.shape == (48, 96, 3)
    assert (grid[24:, 64:] == 0.5).all()  # the unused sixth cell
    for a, b in zip(images, multiview.split_views(grid, 5)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(projection.ProjectionError, match="same size"):
        multiview.tile_views([images[0], images[0][:, :10]])
    with pytest.raises(projection.ProjectionError, match="does not split"):
        multiview.split_views(grid[:, :95], 5)
