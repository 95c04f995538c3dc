"""Cameras for multi-view texturing, without bpy: Blender's camera model as plain numpy.

A `ViewCamera` is what Blender's camera object and render settings say about one view: the
camera-to-world matrix (Blender convention: the camera looks down its local -Z, +X is right,
+Y is up), perspective or orthographic, lens and sensor (with Blender's sensor fit), shift and
the resolution in pixels. From it come the projection of world points into continuous pixel
coordinates (x to the right, y DOWN from the top edge, pixel (i, j) centred at (j + 0.5, i + 0.5)),
planar depth (distance along the view axis, what Blender's Z pass holds), the ray through every
pixel, and the world size of a pixel at a depth.

`orbit_views` places N cameras on an orbit around a bounding sphere (plus top/bottom), each
framing the whole sphere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

PERSP = "PERSP"
ORTHO = "ORTHO"
SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


class ProjectionError(ValueError):
    """Input the projection cannot work with (shapes, cameras, options); the message says which."""


def _matrix(value: object) -> np.ndarray:
    m = np.asarray(value, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ProjectionError(f"a camera matrix must be a finite 4×4 matrix, got shape {m.shape}")
    return m


@dataclass(frozen=True)
class ViewCamera:
    """One view: Blender's camera model. Lengths of lens/sensor in mm, ortho_scale in world units."""

    matrix_world: np.ndarray = field(repr=False)
    width: int
    height: int
    kind: str = PERSP
    lens: float = 50.0
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    ortho_scale: float = 2.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    clip_start: float = 0.01
    clip_end: float = 1000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix_world", _matrix(self.matrix_world))
        if self.kind not in (PERSP, ORTHO):
            raise ProjectionError(f"camera kind must be {PERSP} or {ORTHO} (panoramic cameras cannot project), got {self.kind!r}")
        if self.sensor_fit not in SENSOR_FITS:
            raise ProjectionError(f"sensor_fit must be one of {SENSOR_FITS}, got {self.sensor_fit!r}")
        if int(self.width) < 1 or int(self.height) < 1:
            raise ProjectionError(f"camera resolution must be positive, got {self.width}×{self.height}")
        if self.kind == PERSP and not (self.lens > 0 and self._sensor_mm() > 0):
            raise ProjectionError("a perspective camera needs a positive lens and sensor size")
        if self.kind == ORTHO and not self.ortho_scale > 0:
            raise ProjectionError("an orthographic camera needs a positive ortho_scale")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    # -- intrinsics ---------------------------------------------------------------------------
    def _fit_horizontal(self) -> bool:
        if self.sensor_fit == "AUTO":
            return self.width >= self.height
        return self.sensor_fit == "HORIZONTAL"

    def _sensor_mm(self) -> float:
        return self.sensor_height if self.sensor_fit == "VERTICAL" else self.sensor_width

    @property
    def fit_pixels(self) -> float:
        """The image dimension (pixels) the sensor size / ortho scale spans."""
        return float(self.width if self._fit_horizontal() else self.height)

    @property
    def focal_pixels(self) -> float:
        """Focal length in pixels (perspective)."""
        return self.lens / self._sensor_mm() * self.fit_pixels

    @property
    def pixel_size(self) -> float:
        """World size of one pixel (orthographic)."""
        return self.ortho_scale / self.fit_pixels

    @property
    def principal_point(self) -> tuple[float, float]:
        """Where the view axis meets the image, in pixel coordinates (y down). Blender's shift
        moves the frame: a positive shift_x moves it right, so the axis appears left of centre."""
        return (self.width / 2 - self.shift_x * self.fit_pixels, self.height / 2 + self.shift_y * self.fit_pixels)

    @property
    def location(self) -> np.ndarray:
        return self.matrix_world[:3, 3].copy()

    @property
    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation with the matrix's scale removed (columns: camera x, y, z)."""
        r = self.matrix_world[:3, :3]
        return r / np.linalg.norm(r, axis=0, keepdims=True)

    def with_resolution(self, width: int, height: int) -> "ViewCamera":
        """The same framing at another resolution (same aspect ratio expected)."""
        return replace(self, width=int(width), height=int(height))

    # -- projection ---------------------------------------------------------------------------
    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) → camera-space points (..., 3) (camera looks down -Z)."""
        p = np.asarray(points, dtype=np.float64)
        return (p - self.matrix_world[:3, 3]) @ self.rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) → (pixel xy (..., 2), planar depth (...)). Depth ≤ 0 is behind."""
        c = self.world_to_camera(points)
        depth = -c[..., 2]
        cx, cy = self.principal_point
        if self.kind == PERSP:
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = self.focal_pixels / depth
        else:
            scale = 1.0 / self.pixel_size
        xy = np.stack([cx + c[..., 0] * scale, cy - c[..., 1] * scale], axis=-1)
        return xy, depth

    def camera_rays(self, xy: np.ndarray) -> np.ndarray:
        """Unit view directions in camera space for pixel coordinates (..., 2) (towards the scene)."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.kind == ORTHO:
            out = np.zeros(xy.shape[:-1] + (3,))
            out[..., 2] = -1.0
            return out
        cx, cy = self.principal_point
        f = self.focal_pixels
        d = np.stack([(xy[..., 0] - cx) / f, -(xy[..., 1] - cy) / f, -np.ones(xy.shape[:-1])], axis=-1)
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def pixel_centers(self, rows: slice | None = None) -> np.ndarray:
        """Pixel-centre coordinates (h, w, 2) of the given rows (all rows by default)."""
        r0, r1, _ = (rows or slice(None)).indices(self.height)
        ys, xs = np.mgrid[r0:r1, 0 : self.width]
        return np.stack([xs + 0.5, ys + 0.5], axis=-1).astype(np.float64)

    def world_rays(self, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(origins, unit directions) in world space for every pixel centre, each (h, w, 3)."""
        xy = self.pixel_centers(rows)
        directions = self.camera_rays(xy) @ self.rotation.T
        if self.kind == PERSP:
            origins = np.broadcast_to(self.location, directions.shape).copy()
        else:
            cx, cy = self.principal_point
            s = self.pixel_size
            offset = np.stack([(xy[..., 0] - cx) * s, -(xy[..., 1] - cy) * s, np.zeros(xy.shape[:-1])], axis=-1)
            origins = self.location + offset @ self.rotation.T
        return origins, directions

    def footprint(self, depth: np.ndarray) -> np.ndarray:
        """World size of one pixel at the given planar depth."""
        depth = np.asarray(depth, dtype=np.float64)
        if self.kind == PERSP:
            return np.abs(depth) / self.focal_pixels
        return np.full(depth.shape, self.pixel_size)

    def normals_to_camera(self, normals_world: np.ndarray) -> np.ndarray:
        """World-space normals (..., 3) (e.g. Blender's Normal pass) → camera space."""
        return np.asarray(normals_world, dtype=np.float64) @ self.rotation


def overscan(camera: ViewCamera, left: int, top: int, right: int, bottom: int) -> ViewCamera:
    """The camera whose image is `camera`'s grown by the given pixels on each side, every original
    pixel staying exactly where it was: same focal length (or pixel size) in pixels, principal
    point moved by (left, top). Its sensor fit is explicit (the fitted axis of the original), so
    the grown image keeps the original's scale whichever side becomes the larger. For outpainting:
    the control maps of a render through this camera cover the extended canvas."""
    sides = (left, top, right, bottom)
    if any(int(v) != v or v < 0 for v in sides):
        raise ProjectionError(f"overscan sides must be whole non-negative pixels, got {sides}")
    width, height = camera.width + int(left) + int(right), camera.height + int(top) + int(bottom)
    horizontal = camera._fit_horizontal()
    fit_new = float(width if horizontal else height)
    grow = fit_new / camera.fit_pixels
    cx, cy = camera.principal_point
    sensor = camera._sensor_mm() * grow
    return replace(
        camera, width=width, height=height, sensor_fit="HORIZONTAL" if horizontal else "VERTICAL",
        sensor_width=sensor if horizontal else camera.sensor_width, sensor_height=camera.sensor_height if horizontal else sensor,
        ortho_scale=camera.ortho_scale * grow,
        shift_x=(width / 2 - (cx + left)) / fit_new, shift_y=((cy + top) - height / 2) / fit_new,
    )


def look_at(eye: object, target: object, up: object = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world matrix of a Blender camera at `eye` looking at `target`, `up` kept up.
    Looking straight along `up` (top/bottom views), world +Y is up in the image instead."""
    eye_v = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye_v
    norm = np.linalg.norm(forward)
    if norm == 0.0:
        raise ProjectionError("a camera cannot look at its own position")
    forward /= norm
    up_v = np.asarray(up, dtype=np.float64)
    right = np.cross(forward, up_v)
    if np.linalg.norm(right) < 1e-9:
        right = np.cross(forward, (0.0, 1.0, 0.0))
    right /= np.linalg.norm(right)
    z_axis = -forward
    y_axis = np.cross(z_axis, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, y_axis, z_axis, eye_v
    return m


def bounding_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, radius) enclosing all points: the box centre and the farthest point from it."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) == 0:
        raise ProjectionError("no points to frame (are the selected objects empty?)")
    center = (p.min(axis=0) + p.max(axis=0)) / 2
    radius = float(np.linalg.norm(p - center, axis=1).max())
    return center, max(radius, 1e-6)


def _half_fov_min(width: int, height: int, lens: float, sensor: float) -> float:
    """Half field of view across the image's smaller side (sensor fit AUTO)."""
    half_big = math.atan(sensor / 2.0 / lens)
    return math.atan(math.tan(half_big) * min(width, height) / max(width, height))


def frame_distance(radius: float, width: int, height: int, lens: float = 50.0, sensor: float = 36.0, margin: float = 1.05) -> float:
    """Distance from the sphere's centre at which a perspective camera sees the whole sphere
    (with `margin` ≥ 1 of room) across the image's smaller side."""
    return radius * margin / math.sin(_half_fov_min(width, height, lens, sensor))


def orbit_views(
    center: object,
    radius: float,
    count: int = 4,
    *,
    elevation_deg: float = 15.0,
    azimuth_deg: float = 0.0,
    top: bool = False,
    bottom: bool = False,
    width: int = 1024,
    height: int = 1024,
    kind: str = PERSP,
    lens: float = 50.0,
    sensor: float = 36.0,
    margin: float = 1.05,
) -> list[ViewCamera]:
    """`count` cameras evenly around the sphere (azimuth 0 = in front, on -Y, looking along +Y,
    then counter-clockwise seen from above), raised by `elevation_deg`, plus optional views
    straight down and up. Each frames the whole sphere; clipping encloses it."""
    if count < 0 or (count == 0 and not (top or bottom)):
        raise ProjectionError("orbit_views needs at least one view")
    if not radius > 0:
        raise ProjectionError("the bounding sphere needs a positive radius")
    if not -90.0 < elevation_deg < 90.0:
        raise ProjectionError("orbit elevation must lie strictly between -90° and 90°")
    if margin < 1.0:
        raise ProjectionError("margin must be ≥ 1 (the sphere must fit in the image)")
    c = np.asarray(center, dtype=np.float64)
    if kind == PERSP:
        distance = frame_distance(radius, width, height, lens, sensor, margin)
    else:
        distance = radius * 3.0  # any distance outside the sphere frames it orthographically
    ortho_scale = 2.0 * radius * margin * max(width, height) / min(width, height)
    clip_start = max(distance - radius * 1.5, distance * 1e-3)
    clip_end = distance + radius * 1.5
    common = dict(width=width, height=height, kind=kind, lens=lens, sensor_width=sensor, sensor_height=sensor,
                  ortho_scale=ortho_scale, clip_start=clip_start, clip_end=clip_end)
    directions = []
    elevation = math.radians(elevation_deg)
    for i in range(count):
        azimuth = math.radians(azimuth_deg) + 2.0 * math.pi * i / count
        # Azimuth 0: the camera sits on -Y (Blender's front view), looking towards +Y.
        directions.append((math.sin(azimuth) * math.cos(elevation), -math.cos(azimuth) * math.cos(elevation), math.sin(elevation)))
    if top:
        directions.append((0.0, 0.0, 1.0))
    if bottom:
        directions.append((0.0, 0.0, -1.0))
    return [ViewCamera(matrix_world=look_at(c + distance * np.asarray(d), c), **common) for d in directions]


def camera_from_blender(
    matrix_world: object,
    *,
    kind: str,
    lens: float,
    sensor_width: float,
    sensor_height: float,
    sensor_fit: str,
    ortho_scale: float,
    shift_x: float,
    shift_y: float,
    clip_start: float,
    clip_end: float,
    resolution: tuple[int, int],
    pixel_aspect: tuple[float, float] = (1.0, 1.0),
) -> ViewCamera:
    """A ViewCamera from the values of a Blender camera object (`obj.matrix_world`,
    `obj.data.*`) and the render resolution (`resolution_x/y × percentage / 100`)."""
    if abs(pixel_aspect[0] - pixel_aspect[1]) > 1e-6:
        raise ProjectionError("non-square pixels (render pixel aspect ≠ 1) are not supported for projection")
    width, height = resolution
    return ViewCamera(
        matrix_world=matrix_world, width=width, height=height, kind=kind, lens=lens,
        sensor_width=sensor_width, sensor_height=sensor_height, sensor_fit=sensor_fit,
        ortho_scale=ortho_scale, shift_x=shift_x, shift_y=shift_y, clip_start=clip_start, clip_end=clip_end,
    )
