"""Exact synthetic "renders" for the projection tests: ray–plane and ray–box intersection in
numpy give, per pixel, what Blender's UV render gives (UV, planar depth, normal, object), and
the analytic texture a known image projects to. Shared by tests/projection and tests/blender."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender"))
import lb_blender  # noqa: E402

views = lb_blender.source_module("views")
projection = lb_blender.source_module("projection")

# -- the known image --------------------------------------------------------------------------

def pattern(x: np.ndarray, y: np.ndarray, width: int, height: int) -> np.ndarray:
    """A smooth colour field over image pixel coordinates: R, G encode the position itself (so a
    baked texel tells where in the image it came from), B is a gentle wave."""
    r = x / width
    g = y / height
    b = 0.5 + 0.3 * np.sin(2 * np.pi * 1.5 * r) * np.cos(2 * np.pi * g)
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def pattern_image(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return pattern(xs, ys, width, height)


# -- a square plane: z = 0, x, y ∈ [-1, 1], uv = ((x + 1) / 2, (y + 1) / 2) -------------------

def plane_uv_to_world(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.zeros(uv.shape[:-1] + (3,))
    p[..., 0] = uv[..., 0] * 2 - 1
    p[..., 1] = uv[..., 1] * 2 - 1
    n = np.zeros_like(p)
    n[..., 2] = 1.0
    return p, n


def plane_triangles() -> np.ndarray:
    return np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], np.float64)


def plane_surface(camera) -> "projection.ViewSurface":
    origins, dirs = camera.world_rays()
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origins[..., 2] / dirs[..., 2]
    p = origins + t[..., None] * dirs
    cov = (t > 0) & (np.abs(p[..., 0]) <= 1) & (np.abs(p[..., 1]) <= 1)
    uv = np.stack([(p[..., 0] + 1) / 2, (p[..., 1] + 1) / 2], axis=-1)
    normal = np.zeros_like(p)
    normal[..., 2] = 1.0
    return _surface(camera, p, uv, normal, cov, np.zeros(cov.shape, np.int32))


# -- a cube [-1, 1]³, each face its own UV island in a 3 × 2 grid ------------------------------

# face: (axis, sign, s axis & sign, t axis & sign) — (s, t) ∈ [-1, 1]² on the face
FACES = [
    (0, +1, (1, +1), (2, +1)),  # +X
    (0, -1, (1, -1), (2, +1)),  # -X
    (1, +1, (0, -1), (2, +1)),  # +Y
    (1, -1, (0, +1), (2, +1)),  # -Y
    (2, +1, (0, +1), (1, +1)),  # +Z
    (2, -1, (0, +1), (1, -1)),  # -Z
]
CUBE_INSET = 1.0 / 16  # island inset inside its grid cell, as a fraction of the cell


def cube_cell(face: int) -> tuple[float, float, float, float]:
    """(u0, v0, u1, v1) of a face's island."""
    col, row = face % 3, face // 3
    w, h = 1 / 3, 1 / 2
    return (col * w + CUBE_INSET * w, row * h + CUBE_INSET * h, (col + 1) * w - CUBE_INSET * w, (row + 1) * h - CUBE_INSET * h)


def cube_st_to_uv(face: int, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    u0, v0, u1, v1 = cube_cell(face)
    return np.stack([u0 + (s + 1) / 2 * (u1 - u0), v0 + (t + 1) / 2 * (v1 - v0)], axis=-1)


def cube_triangles() -> np.ndarray:
    tris = []
    for f in range(6):
        c = cube_st_to_uv(f, np.array([-1, 1, 1, -1.0]), np.array([-1, -1, 1, 1.0]))
        tris += [[c[0], c[1], c[2]], [c[0], c[2], c[3]]]
    return np.array(tris)


def cube_face_world(face: int, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    axis, sign, (sa, ss), (ta, ts) = FACES[face]
    p = np.zeros(np.shape(s) + (3,))
    p[..., axis] = sign
    p[..., sa] = ss * s
    p[..., ta] = ts * t
    return p


def cube_uv_to_world(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For UVs: (world point, normal, face index, -1 outside every island)."""
    face = np.full(uv.shape[:-1], -1)
    p = np.zeros(uv.shape[:-1] + (3,))
    n = np.zeros_like(p)
    for f in range(6):
        u0, v0, u1, v1 = cube_cell(f)
        inside = (uv[..., 0] >= u0) & (uv[..., 0] <= u1) & (uv[..., 1] >= v0) & (uv[..., 1] <= v1)
        s = (uv[..., 0] - u0) / (u1 - u0) * 2 - 1
        t = (uv[..., 1] - v0) / (v1 - v0) * 2 - 1
        p[inside] = cube_face_world(f, s, t)[inside]
        axis, sign = FACES[f][:2]
        n[inside, axis] = sign
        face[inside] = f
    return p, n, face


def cube_surface(camera, center=(0.0, 0.0, 0.0)) -> "projection.ViewSurface":
    origins, dirs = camera.world_rays()
    o = origins - np.asarray(center)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-1 - o) / dirs
        t2 = (1 - o) / dirs
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    cov = (t_near <= t_far) & (t_near > 0)
    axis = np.nanargmax(np.minimum(t1, t2), axis=-1)
    p = o + t_near[..., None] * dirs
    sign = -np.sign(np.take_along_axis(dirs, axis[..., None], -1)[..., 0])
    uv = np.zeros(cov.shape + (2,))
    normal = np.zeros(cov.shape + (3,))
    for f, (fa, fs, (sa, ss), (ta, ts)) in enumerate(FACES):
        on = cov & (axis == fa) & (sign == fs)
        uv[on] = cube_st_to_uv(f, ss * p[..., sa], ts * p[..., ta])[on]
        normal[on, fa] = fs
    return _surface(camera, p + np.asarray(center), uv, normal, cov, np.zeros(cov.shape, np.int32))


def _surface(camera, p, uv, normal_world, cov, obj) -> "projection.ViewSurface":
    _, depth = camera.project(p)
    uv = np.where(cov[..., None], uv, 0.0)
    return projection.ViewSurface(
        uv=uv, coverage=cov, depth=np.where(cov, depth, 1e10), normal=camera.normals_to_camera(normal_world),
        object_index=np.where(cov, obj, -1),
    )


def texel_uv(width: int, height: int) -> np.ndarray:
    """UV of every texel centre, (height, width, 2), top row first."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([(cols + 0.5) / width, 1 - (rows + 0.5) / height], axis=-1)


def analytic_texture(points: np.ndarray, normals: np.ndarray, camera, image_size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected colour, image xy, front-facing) of every texel's surface point seen by `camera`."""
    xy, depth = camera.project(points)
    to_cam = camera.location - points
    front = (np.einsum("...k,...k->...", normals, to_cam) > 0) & (depth > 0)
    iw, ih = image_size
    return pattern(xy[..., 0], xy[..., 1], iw, ih), xy, front


def texel_position_error(baked: np.ndarray, xy: np.ndarray, image_size) -> np.ndarray:
    """Distance, in texels, between where a baked texel's colour says it came from (R, G encode
    the image position) and where the analytic mapping puts it."""
    iw, ih = image_size
    found = np.stack([baked[..., 0] * iw, baked[..., 1] * ih], axis=-1)
    # Local Jacobian of texel → image position, by finite differences along rows and columns.
    dx = np.gradient(xy, axis=1)
    dy = np.gradient(xy, axis=0)
    jac = np.stack([dx, dy], axis=-1)  # (..., 2 image coords, 2 texel axes)
    delta = found - xy
    (a, b), (c, d) = (jac[..., 0, 0], jac[..., 0, 1]), (jac[..., 1, 0], jac[..., 1, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        det = a * d - b * c  # 2×2 inverse by hand: singular (off-surface) texels give inf/nan
        steps = np.stack([(d * delta[..., 0] - b * delta[..., 1]) / det, (a * delta[..., 1] - c * delta[..., 0]) / det], axis=-1)
    return np.linalg.norm(steps, axis=-1)
