"""Projection of generated views into a UV texture, without bpy: a weighted scatter in texel space.

Per view, one cheap render gives, for every pixel, the UV coordinate of the visible surface, its
planar depth, its normal and which object it belongs to (a `ViewSurface`). Every covered pixel
then names the texels it paints: its colour, sampled bilinearly from the generated image, is
splatted onto the four texels around its UV (bilinear weights, or the nearest texel), scaled by
the pixel's weight:

    weight = facing ** facing_power × border falloff × discontinuity falloff

facing = cos(angle between the surface normal and the ray back to the camera); border falloff
ramps from 0 at the image border to 1 at `border` × the image's smaller side; discontinuity
falloff ramps from 0 on pixels next to a silhouette, another object or a depth step to 1 at
`edge_px` image pixels from them (the generator smears colour across such edges). Texels
accumulate Σ weight × colour and Σ weight over all views (`Accumulator`, `numpy.add.at`);
dividing gives the blend, whose per-view weights sum to 1 wherever any view saw the texel.

`view_init` is the inverse, for consistent views: the current texture seen from a new view (the
init image) and the region it has not painted yet (the inpaint mask).

Conventions: images and textures are (rows, columns, channels) arrays with the TOP row first;
UV (0, 0) is the texture's bottom-left corner (Blender's), texel (r, c) covers
u ∈ [c, c+1]/W, v ∈ [1 - (r+1)/H, 1 - r/H]; UVs outside [0, 1] wrap (a repeating texture).
A UV render may have more pixels than the generated image (an integer multiple: supersampling
makes the scatter dense enough for textures larger than the view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Generator

import numpy as np

from .bake import grow_mask
from .slices import run
from .views import ProjectionError, ViewCamera

KERNELS = ("bilinear", "nearest")


def _image(image: np.ndarray, name: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ProjectionError(f"{name} must be a (height, width[, channels]) array, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32, copy=False)


@dataclass
class ViewSurface:
    """What one view's UV render says about each pixel (all arrays top row first).

    uv (h, w, 2) texture coordinates; coverage (h, w) bool, True where a target surface is
    seen; depth (h, w) planar depth; normal (h, w, 3) camera-space unit normals, or facing
    (h, w) the cosine term directly; object_index (h, w) ints naming the object (optional)."""

    uv: np.ndarray
    coverage: np.ndarray
    depth: np.ndarray
    normal: np.ndarray | None = None
    facing: np.ndarray | None = None
    object_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.uv = np.asarray(self.uv, dtype=np.float32)
        if self.uv.ndim != 3 or self.uv.shape[2] != 2:
            raise ProjectionError(f"uv must be (height, width, 2), got shape {self.uv.shape}")
        shape = self.shape
        self.coverage = np.asarray(self.coverage).astype(bool, copy=False)
        self.depth = np.asarray(self.depth, dtype=np.float32)
        for name in ("coverage", "depth"):
            if getattr(self, name).shape != shape:
                raise ProjectionError(f"{name} must have the uv render's shape {shape}, got {getattr(self, name).shape}")
        if self.normal is None and self.facing is None:
            raise ProjectionError("a view surface needs normals or a facing term")
        if self.normal is not None:
            self.normal = np.asarray(self.normal, dtype=np.float32)
            if self.normal.shape != shape + (3,):
                raise ProjectionError(f"normal must be (height, width, 3) like the uv render, got {self.normal.shape}")
        if self.facing is not None:
            self.facing = np.asarray(self.facing, dtype=np.float32)
            if self.facing.shape != shape:
                raise ProjectionError(f"facing must have the uv render's shape {shape}, got {self.facing.shape}")
        if self.object_index is not None:
            self.object_index = np.asarray(self.object_index).astype(np.int32, copy=False)
            if self.object_index.shape != shape:
                raise ProjectionError(f"object_index must have the uv render's shape {shape}")
        # Non-finite values (a background that leaked in) never reach the scatter.
        self.coverage = self.coverage & np.isfinite(self.uv).all(axis=2) & np.isfinite(self.depth)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.uv.shape[0]), int(self.uv.shape[1]))

    def select(self, index: int) -> "ViewSurface":
        """Only the pixels of one object (its index in `object_index`)."""
        if self.object_index is None:
            raise ProjectionError("this view surface has no object indices to select from")
        return replace(self, coverage=self.coverage & (self.object_index == index))


@dataclass(frozen=True)
class WeightOptions:
    """How much each view pixel counts (see the module docstring)."""

    facing_power: float = 2.0
    min_facing: float = 0.05  # cos ≈ 87°: grazing views paint nothing
    border: float = 0.08  # ramp width at the image border, fraction of the image's smaller side
    edge_px: float = 3.0  # ramp width at silhouettes / depth steps, in generated-image pixels
    slope_limit: float = 8.0  # a depth step above this many pixel footprints is a discontinuity
    min_weight: float = 1e-3  # samples below this weight are dropped

    def __post_init__(self) -> None:
        checks = {
            "facing_power": self.facing_power >= 0,
            "min_facing": 0 <= self.min_facing < 1,
            "border": 0 <= self.border <= 0.5,
            "edge_px": self.edge_px >= 0,
            "slope_limit": self.slope_limit > 0,
            "min_weight": 0 <= self.min_weight < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ProjectionError(f"weight option out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _distance_capped(mask: np.ndarray, cap: int) -> np.ndarray:
    """Chessboard distance to the nearest True pixel, capped at `cap`."""
    dist = np.full(mask.shape, cap, np.float32)
    reached = mask.copy()
    for d in range(cap):
        dist[reached & (dist == cap)] = d
        reached = grow_mask(reached)
    return dist


def _discontinuities(cov: np.ndarray, depth: np.ndarray, obj: np.ndarray | None, footprint: np.ndarray, slope_limit: float) -> np.ndarray:
    """Covered pixels beside an uncovered pixel, another object, or a depth step."""
    out = np.zeros(cov.shape, bool)
    for axis in (0, 1):
        a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        both = cov[a] & cov[b]
        limit = slope_limit * np.minimum(footprint[a], footprint[b])
        with np.errstate(invalid="ignore"):
            jump = both & ~(np.abs(depth[a] - depth[b]) <= limit)
        if obj is not None:
            jump |= both & (obj[a] != obj[b])
        out[a] |= cov[a] & (~cov[b] | jump)
        out[b] |= cov[b] & (~cov[a] | jump)
    return out


def _facing(normal: np.ndarray, camera: ViewCamera, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-(n · ray) for camera-space normals (h, w, 3) at pixel centres x (1, w), y (h, 1)."""
    n = normal.astype(np.float64)
    if camera.kind == "ORTHO":
        return n[..., 2]  # every ray is (0, 0, -1)
    cx, cy = camera.principal_point
    a = (x - cx) / camera.focal_pixels
    b = -(y - cy) / camera.focal_pixels
    return (n[..., 2] - n[..., 0] * a - n[..., 1] * b) / np.sqrt(a * a + b * b + 1.0)


def _check_camera(surface: ViewSurface, camera: ViewCamera) -> None:
    if (camera.height, camera.width) != surface.shape:
        raise ProjectionError(
            f"the camera's resolution {camera.width}×{camera.height} must match the uv render's "
            f"{surface.shape[1]}×{surface.shape[0]} (use camera.with_resolution)"
        )


def _scale(surface: ViewSurface, image_size: tuple[int, int] | None) -> int:
    """Render pixels per image pixel (an integer ≥ 1)."""
    h, w = surface.shape
    if image_size is None:
        return 1
    iw, ih = image_size
    if iw < 1 or ih < 1 or w % iw or h % ih or w // iw != h // ih:
        raise ProjectionError(f"the uv render ({w}×{h}) must be the same integer multiple of the image ({iw}×{ih}) on both axes")
    return w // iw


def view_weights(
    surface: ViewSurface,
    camera: ViewCamera,
    options: WeightOptions = WeightOptions(),
    *,
    image_size: tuple[int, int] | None = None,
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Per-pixel weight (float32) of one view's uv render, for rows [r0, r1) (all by default).
    `image_size` (width, height) of the generated image, if the uv render is supersampled."""
    _check_camera(surface, camera)
    h, w = surface.shape
    scale = _scale(surface, image_size)
    r0, r1 = rows if rows is not None else (0, h)
    if not 0 <= r0 <= r1 <= h:
        raise ProjectionError(f"rows {r0}..{r1} outside the uv render's {h} rows")
    cov = surface.coverage[r0:r1]
    x = np.arange(w, dtype=np.float64)[None, :] + 0.5  # pixel centres, broadcast over the rows
    y = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    # Facing term: cosine between the normal and the ray back to the camera.
    if surface.facing is not None:
        facing = surface.facing[r0:r1].astype(np.float64)
    else:
        facing = _facing(surface.normal[r0:r1], camera, x, y)
    facing = np.clip(np.nan_to_num(facing, nan=0.0), 0.0, 1.0)
    weight = np.where(facing >= max(options.min_facing, 1e-12), facing ** options.facing_power, 0.0)
    # Border falloff, measured in the generated image.
    if options.border > 0:
        iw, ih = w / scale, h / scale
        xi, yi = x / scale, y / scale
        to_border = np.minimum(np.minimum(xi, iw - xi), np.minimum(yi, ih - yi))
        weight *= _smoothstep(to_border / (options.border * min(iw, ih)))
    # Discontinuity falloff: computed on the rows plus a halo, so slices agree with one pass.
    ramp = options.edge_px * scale
    cap = math.ceil(ramp)
    if cap > 0:
        a0, a1 = max(0, r0 - cap - 1), min(h, r1 + cap + 1)
        depth = surface.depth[a0:a1]
        obj = surface.object_index[a0:a1] if surface.object_index is not None else None
        edges = _discontinuities(surface.coverage[a0:a1], depth, obj, camera.footprint(depth), options.slope_limit)
        weight *= _smoothstep(_distance_capped(edges, cap)[r0 - a0 : r1 - a0] / ramp)
    weight = np.where(cov, weight, 0.0)
    weight[weight < max(options.min_weight, 1e-12)] = 0.0
    return weight.astype(np.float32)


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) of an (h, w, C) image at pixel coordinates x, y (centres at +0.5),
    clamped at the borders."""
    h, w, channels = image.shape
    flat = image.reshape(-1, channels)
    fx, fy = np.asarray(x, np.float32) - 0.5, np.asarray(y, np.float32) - 0.5
    x0, y0 = np.floor(fx), np.floor(fy)
    tx, ty = (fx - x0)[:, None], (fy - y0)[:, None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa, xb = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    ya, yb = np.clip(y0, 0, h - 1) * w, np.clip(y0 + 1, 0, h - 1) * w
    top = flat[ya + xa] * (1 - tx) + flat[ya + xb] * tx
    bottom = flat[yb + xa] * (1 - tx) + flat[yb + xb] * tx
    return top * (1 - ty) + bottom * ty


def texel_taps(uv: np.ndarray, width: int, height: int, kernel: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """For UVs (N, 2): flat texel indices (N, k) and kernel weights (N, k) that sum to 1."""
    x = uv[:, 0].astype(np.float64) * width - 0.5
    y = (1.0 - uv[:, 1].astype(np.float64)) * height - 0.5
    if kernel == "nearest":
        cx = np.floor(x + 0.5).astype(np.int64) % width
        cy = np.floor(y + 0.5).astype(np.int64) % height
        return (cy * width + cx)[:, None], np.ones((len(uv), 1), np.float32)
    if kernel != "bilinear":
        raise ProjectionError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa, xb = x0 % width, (x0 + 1) % width
    ya, yb = (y0 % height) * width, ((y0 + 1) % height) * width
    index = np.stack([ya + xa, ya + xb, yb + xa, yb + xb], axis=1)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    return index, weights.astype(np.float32)


@dataclass
class Samples:
    """One slice of a view's scatter: per pixel its colour and k texel taps (index, weight)."""

    index: np.ndarray  # (N, k) int64 flat texel indices
    weight: np.ndarray  # (N, k) float32 tap weight × pixel weight (0 for taps outside islands)
    color: np.ndarray  # (N, C) float32


def view_samples(
    image: np.ndarray,
    surface: ViewSurface,
    camera: ViewCamera,
    texture_size: tuple[int, int],
    *,
    options: WeightOptions = WeightOptions(),
    island: np.ndarray | None = None,
    kernel: str = "bilinear",
    rows: tuple[int, int] | None = None,
) -> Samples:
    """The taps one view contributes to a (width, height) texture, for rows [r0, r1) of its uv
    render. With `island` (texture-shaped bool), taps outside UV islands get weight 0."""
    img = _image(image)
    ih, iw, channels = img.shape
    h, w = surface.shape
    tw, th = texture_size
    weight = view_weights(surface, camera, options, image_size=(iw, ih), rows=rows)
    r0 = rows[0] if rows is not None else 0
    ys, xs = np.nonzero(weight)
    pixel_weight = weight[ys, xs]
    ys_full = ys + r0
    uv = surface.uv[ys_full, xs]
    if (iw, ih) == (w, h):  # pixel centres coincide: no interpolation
        color = img.reshape(-1, channels)[ys_full * iw + xs]
    else:
        color = sample_bilinear(img, (xs + 0.5) * (iw / w), (ys_full + 0.5) * (ih / h))
    index, tap = texel_taps(uv, tw, th, kernel)
    tap *= pixel_weight[:, None]
    if island is not None:
        tap *= np.asarray(island, bool).reshape(-1)[index]
    return Samples(index, tap, color.astype(np.float32, copy=False))


@dataclass
class Accumulator:
    """Σ weight × colour and Σ weight per texel, over every view added."""

    width: int
    height: int
    channels: int = 3
    color_sum: np.ndarray = field(init=False, repr=False)
    weight_sum: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or self.channels < 1:
            raise ProjectionError(f"texture size must be positive, got {self.width}×{self.height}×{self.channels}")
        self.color_sum = np.zeros((self.channels, self.width * self.height), np.float32)
        self.weight_sum = np.zeros(self.width * self.height, np.float32)

    def add(self, samples: Samples) -> None:
        if samples.color.shape[1] != self.channels:
            raise ProjectionError(f"the image has {samples.color.shape[1]} channels, the texture {self.channels}")
        index = samples.index.reshape(-1)
        np.add.at(self.weight_sum, index, samples.weight.reshape(-1))
        for c in range(self.channels):
            np.add.at(self.color_sum[c], index, (samples.weight * samples.color[:, c : c + 1]).reshape(-1))

    def add_view_steps(
        self,
        image: np.ndarray,
        surface: ViewSurface,
        camera: ViewCamera,
        *,
        options: WeightOptions = WeightOptions(),
        island: np.ndarray | None = None,
        kernel: str = "bilinear",
        rows_per_step: int | None = None,
    ) -> Generator[None, None, None]:
        """Add one view in slices of `rows_per_step` uv-render rows (default: ~64 k pixels)."""
        h, w = surface.shape
        rows_per_step = max(1, rows_per_step or (1 << 16) // w)
        for r0 in range(0, h, rows_per_step):
            rows = (r0, min(h, r0 + rows_per_step))
            self.add(view_samples(image, surface, camera, (self.width, self.height), options=options, island=island, kernel=kernel, rows=rows))
            yield

    def add_view(self, image: np.ndarray, surface: ViewSurface, camera: ViewCamera, **kwargs: object) -> None:
        run(self.add_view_steps(image, surface, camera, **kwargs))

    @property
    def seen(self) -> np.ndarray:
        """(height, width) bool: texels some view painted."""
        return (self.weight_sum > 0).reshape(self.height, self.width)

    def blend_steps(self, rows_per_step: int = 256) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
        """(texture (height, width, C) float32, seen mask): Σ w·c / Σ w, zero where unseen."""
        out = np.zeros((self.height, self.width, self.channels), np.float32)
        for r0 in range(0, self.height, max(1, rows_per_step)):
            band = slice(r0 * self.width, min(self.height, r0 + rows_per_step) * self.width)
            w = self.weight_sum[band]
            with np.errstate(invalid="ignore", divide="ignore"):
                rows = np.where(w > 0, self.color_sum[:, band] / w, 0.0)
            out.reshape(-1, self.channels)[band] = rows.T
            yield
        return out, self.seen

    def blend(self) -> tuple[np.ndarray, np.ndarray]:
        return run(self.blend_steps())

    def weights(self) -> np.ndarray:
        """(height, width) Σ weight per texel (a confidence map)."""
        return self.weight_sum.reshape(self.height, self.width).copy()


def texel_weight_map(samples: list[Samples] | Samples, width: int, height: int) -> np.ndarray:
    """(height, width) total weight the given samples put on each texel (e.g. one view's)."""
    if isinstance(samples, Samples):
        samples = [samples]
    total = np.zeros(width * height, np.float64)
    for s in samples:
        total += np.bincount(s.index.reshape(-1), s.weight.reshape(-1).astype(np.float64), minlength=width * height)
    return total.reshape(height, width)


def blend_weights(view_maps: list[np.ndarray]) -> list[np.ndarray]:
    """Per-view texel weights normalised to sum to 1 wherever any view has weight (0 elsewhere)."""
    total = np.sum(view_maps, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(total > 0, m / total, 0.0) for m in view_maps]


def view_init(
    texture: np.ndarray,
    painted: np.ndarray,
    surface: ViewSurface,
    image_size: tuple[int, int] | None = None,
    *,
    background: float | tuple[float, ...] = 0.5,
    grow_px: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The current texture seen from a view, for "consistent views": (init image (ih, iw, C),
    inpaint mask (ih, iw) float32, 1 = still to paint). A pixel counts as painted when any of
    the four texels around its UV is painted (so pixels at island borders, whose outer texels
    lie in the unpainted margin, still count); its colour is the texture sampled bilinearly
    there, normalised over the painted texels only. Everything else (background,
    unpainted surface) is `background` in the init and 1 in the mask, which then grows by
    `grow_px` image pixels so the new view can blend across the seam."""
    tex = _image(texture, "texture")
    th, tw, channels = tex.shape
    painted_flat = np.asarray(painted, bool).reshape(-1)
    if painted_flat.size != th * tw:
        raise ProjectionError(f"painted mask must have the texture's shape {(th, tw)}")
    h, w = surface.shape
    scale = _scale(surface, image_size)
    ys, xs = np.nonzero(surface.coverage)
    index, tap = texel_taps(surface.uv[ys, xs], tw, th, "bilinear")
    tap = tap * painted_flat[index]
    share = tap.sum(axis=1)
    flat_tex = tex.reshape(-1, channels)
    with np.errstate(invalid="ignore", divide="ignore"):
        color = np.einsum("nk,nkc->nc", tap, flat_tex[index]) / share[:, None]
    init = np.empty((h, w, channels), np.float32)
    init[:] = np.broadcast_to(np.asarray(background, np.float32), (channels,))
    todo = np.ones((h, w), np.float32)
    done = share > 1e-3
    init[ys[done], xs[done]] = color[done]
    todo[ys[done], xs[done]] = 0.0
    if scale > 1:  # box-average to the generated image; any unpainted sub-pixel repaints
        init = init.reshape(h // scale, scale, w // scale, scale, channels).mean(axis=(1, 3))
        todo = todo.reshape(h // scale, scale, w // scale, scale).max(axis=(1, 3))
    mask = todo > 0
    mask = grow_mask(mask, max(0, grow_px))
    return init.astype(np.float32), mask.astype(np.float32)
