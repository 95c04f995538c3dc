"""The camera model (Blender's, in numpy) and the automatic view placement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import synthetic as syn

views = syn.views


def _sphere_points(center, radius, n=4000):
    rng = np.random.default_rng(1)
    d = rng.normal(size=(n, 3))
    return np.asarray(center) + radius * d / np.linalg.norm(d, axis=1, keepdims=True)


def test_look_at_is_a_blender_camera_pointing_at_the_target():
    for eye, target in [((3, -4, 2), (0, 0, 0)), ((0, 0, 5), (0, 0, 0)), ((0, 0, -5), (1e-12, 0, 0)), ((1, 2, 3), (1, 5, 3))]:
        m = views.look_at(eye, target)
        r = m[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        forward = np.asarray(target, float) - np.asarray(eye, float)
        np.testing.assert_allclose(-r[:, 2], forward / np.linalg.norm(forward), atol=1e-9)
        if abs(forward[2]) < np.linalg.norm(forward) * 0.99:
            assert r[2, 1] > 0  # the camera's up has a positive world Z component
            assert abs(r[2, 0]) < 1e-9  # horizon level
    with pytest.raises(views.ProjectionError):
        views.look_at((1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
@pytest.mark.parametrize("fit, size", [("AUTO", (320, 200)), ("AUTO", (200, 320)), ("HORIZONTAL", (200, 320)), ("VERTICAL", (320, 200))])
def test_rays_project_back_to_their_pixels(kind, fit, size):
    camera = views.ViewCamera(views.look_at((2, -3, 1.5), (0, 0, 0.2)), *size, kind=kind, lens=35, sensor_width=36,
                              sensor_height=24, sensor_fit=fit, ortho_scale=3.0, shift_x=0.1, shift_y=-0.05)
    origins, dirs = camera.world_rays()
    points = origins + 2.5 * dirs
    xy, depth = camera.project(points)
    np.testing.assert_allclose(xy, camera.pixel_centers(), atol=1e-9)
    assert (depth > 0).all()
    if kind == "PERSP":
        np.testing.assert_allclose(np.linalg.norm(points - camera.location, axis=-1), 2.5)


def test_intrinsics_follow_blender():
    # 50 mm on a 36 mm sensor, 1920 × 1080, fit AUTO: horizontal FOV 2·atan(18/50).
    camera = views.ViewCamera(np.eye(4), 1920, 1080, lens=50, sensor_width=36)
    half = math.atan(18 / 50)
    xy, depth = camera.project(np.array([[math.tan(half) * 4, 0, -4.0]]))
    assert xy[0, 0] == pytest.approx(1920) and xy[0, 1] == pytest.approx(540) and depth[0] == pytest.approx(4)
    # VERTICAL fit uses sensor_height across the image height.
    vertical = views.ViewCamera(np.eye(4), 1920, 1080, lens=50, sensor_height=24, sensor_fit="VERTICAL")
    xy, _ = vertical.project(np.array([[0, math.tan(math.atan(12 / 50)) * 3, -3.0]]))
    assert xy[0, 1] == pytest.approx(0.0, abs=1e-9)
    # Shift moves the frame by shift × the fitted dimension (a positive shift_x shows more of the
    # right, a positive shift_y more of the top), so the view axis lands left of / below the
    # centre: what Cycles renders (tests/blender/test_uv_render.py, the shifted plane).
    shifted = views.ViewCamera(np.eye(4), 1000, 500, lens=50, shift_x=0.1, shift_y=0.2)
    assert shifted.principal_point == pytest.approx((500.0 - 100.0, 250.0 + 200.0))
    ortho = views.ViewCamera(np.eye(4), 400, 200, kind="ORTHO", ortho_scale=8.0)
    xy, _ = ortho.project(np.array([[4.0, -2.0, -1.0]]))
    assert tuple(xy[0]) == pytest.approx((400.0, 200.0))
    assert ortho.footprint(np.array([3.0]))[0] == pytest.approx(0.02)


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
@pytest.mark.parametrize("size", [(512, 512), (640, 360)])
def test_orbit_views_frame_the_sphere(kind, size):
    center, radius = np.array([1.0, -2.0, 0.5]), 1.7
    cams = views.orbit_views(center, radius, 6, elevation_deg=20, top=True, bottom=True, width=size[0], height=size[1], kind=kind, margin=1.05)
    assert len(cams) == 8
    points = _sphere_points(center, radius)
    for cam in cams:
        xy, depth = cam.project(points)
        cx, cy = cam.principal_point
        assert (xy[:, 0] > 0).all() and (xy[:, 0] < cam.width).all() and (xy[:, 1] > 0).all() and (xy[:, 1] < cam.height).all()
        extent = max(np.abs(xy[:, 0] - cx).max() / (cam.width / 2), np.abs(xy[:, 1] - cy).max() / (cam.height / 2))
        assert extent > 0.85  # framed, not lost in the middle
        assert cam.clip_start < depth.min() and depth.max() < cam.clip_end
        _, centre_depth = cam.project(center[None])
        np.testing.assert_allclose(cam.project(center[None])[0][0], (cx, cy), atol=1e-6)
        assert centre_depth[0] > radius
    # Orbit views are 60° apart at 20° elevation; the last two look straight down and up.
    dirs = [(c.location - center) / np.linalg.norm(c.location - center) for c in cams]
    for d in dirs[:6]:
        assert math.degrees(math.asin(d[2])) == pytest.approx(20.0)
    assert math.degrees(math.acos(np.dot(dirs[0][:2], dirs[1][:2]) / np.linalg.norm(dirs[0][:2]) / np.linalg.norm(dirs[1][:2]))) == pytest.approx(60.0)
    np.testing.assert_allclose(dirs[0][:2] / np.linalg.norm(dirs[0][:2]), (0, -1), atol=1e-12)  # azimuth 0: front (-Y)
    np.testing.assert_allclose(dirs[6], (0, 0, 1), atol=1e-12)
    np.testing.assert_allclose(dirs[7], (0, 0, -1), atol=1e-12)


def test_bounding_sphere_encloses_the_points():
    pts = np.random.default_rng(0).normal(size=(500, 3)) * (1, 2, 0.5) + (3, 0, 1)
    center, radius = views.bounding_sphere(pts)
    assert (np.linalg.norm(pts - center, axis=1) <= radius + 1e-12).all()
    with pytest.raises(views.ProjectionError, match="no points"):
        views.bounding_sphere(np.zeros((0, 3)))


def test_camera_from_blender_values_and_errors():
    m = views.look_at((0, -5, 0), (0, 0, 0))
    cam = views.camera_from_blender(m, kind="PERSP", lens=35, sensor_width=32, sensor_height=18, sensor_fit="AUTO",
                                    ortho_scale=7.0, shift_x=0, shift_y=0, clip_start=0.1, clip_end=100, resolution=(960, 540))
    assert (cam.width, cam.height) == (960, 540) and cam.focal_pixels == pytest.approx(35 / 32 * 960)
    with pytest.raises(views.ProjectionError, match="panoramic"):
        views.ViewCamera(m, 64, 64, kind="PANO")
    with pytest.raises(views.ProjectionError, match="pixel aspect"):
        views.camera_from_blender(m, kind="PERSP", lens=35, sensor_width=32, sensor_height=18, sensor_fit="AUTO", ortho_scale=7.0,
                                  shift_x=0, shift_y=0, clip_start=0.1, clip_end=100, resolution=(64, 64), pixel_aspect=(1.0, 2.0))
    with pytest.raises(views.ProjectionError, match="4×4"):
        views.ViewCamera(np.eye(3), 64, 64)
    with pytest.raises(views.ProjectionError, match="at least one view"):
        views.orbit_views((0, 0, 0), 1.0, 0)
    with pytest.raises(views.ProjectionError, match="elevation"):
        views.orbit_views((0, 0, 0), 1.0, 4, elevation_deg=90)


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
@pytest.mark.parametrize("fit, size, sides", [
    ("AUTO", (320, 200), (16, 8, 40, 0)),
    ("AUTO", (200, 320), (0, 24, 0, 200)),   # grows past square: the fitted axis must not switch
    ("AUTO", (300, 280), (0, 0, 0, 64)),     # AUTO would now fit the height: kept on the width
    ("HORIZONTAL", (200, 320), (8, 8, 8, 8)),
    ("VERTICAL", (320, 200), (100, 0, 0, 0)),
])
def test_overscan_keeps_every_pixel_where_it_was(kind, fit, size, sides):
    """For outpainting: the grown camera sees the original image at offset (left, top), unscaled."""
    camera = views.ViewCamera(views.look_at((2, -3, 1.5), (0, 0, 0.2)), *size, kind=kind, lens=35, sensor_width=36,
                              sensor_height=24, sensor_fit=fit, ortho_scale=3.0, shift_x=0.1, shift_y=-0.05)
    left, top, right, bottom = sides
    grown = views.overscan(camera, *sides)
    assert (grown.width, grown.height) == (size[0] + left + right, size[1] + top + bottom)
    points = np.random.default_rng(3).uniform(-1, 1, (200, 3))
    xy, depth = camera.project(points)
    xy2, depth2 = grown.project(points)
    np.testing.assert_allclose(xy2, xy + [left, top], atol=1e-9)
    np.testing.assert_allclose(depth2, depth, atol=1e-12)
    assert views.overscan(camera, 0, 0, 0, 0).project(points)[0] == pytest.approx(xy)
    with pytest.raises(views.ProjectionError):
        views.overscan(camera, -1, 0, 0, 0)
