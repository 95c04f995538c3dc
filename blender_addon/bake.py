"""Texture-space side of the projection, without bpy: UV island masks, margin dilation, hole fill.

- `rasterize_uv`: which texels lie in a UV island — texel centres inside any of the mesh's UV
  triangles (edges inclusive, so shared edges leave no cracks), vectorised over candidate texels.
- `dilate`: extends the texture `pixels` texels past the island borders (8-neighbour steps, each
  new texel the mean of its already-set neighbours), so texture filtering and mipmaps at the
  borders never read unpainted texels. It only touches the moving frontier, not the whole texture.
- `push_pull`: fills texels from their known neighbours at every scale (a pull-push pyramid:
  average down, blend back up bilinearly), smooth and fast; used for island texels no view saw
  and for the texture outside the margins.
- `finish`: the seam-free bake of a blended texture (fill, dilate, fill the rest), returning the
  mask of unseen island texels so a caller can send a UV-space inpaint instead.

All functions have `*_steps` generator forms that do bounded slices (see slices.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import numpy as np

from .slices import run
from .views import ProjectionError

_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _texture_size(width: int, height: int) -> tuple[int, int]:
    if int(width) < 1 or int(height) < 1:
        raise ProjectionError(f"texture size must be positive, got {width}×{height}")
    return int(width), int(height)


def rasterize_uv_steps(
    triangles: np.ndarray, width: int, height: int, *, candidates_per_step: int = 1 << 20
) -> Generator[None, None, np.ndarray]:
    """Island mask (height, width) bool of UV triangles (T, 3, 2); one slice per
    ~`candidates_per_step` candidate texels. UVs outside [0, 1] wrap, as a repeating texture."""
    width, height = _texture_size(width, height)
    tri = np.asarray(triangles, dtype=np.float64)
    if tri.ndim != 3 or tri.shape[1:] != (3, 2):
        raise ProjectionError(f"UV triangles must be a (count, 3, 2) array, got shape {tri.shape}")
    mask = np.zeros(height * width, bool)
    tri = tri[np.isfinite(tri).all(axis=(1, 2))]
    # Each triangle into the base tile by its lowest corner (a repeating texture), then into
    # texel-centre coordinates: texel (r, c) has its centre at (c, r).
    tri = tri - np.floor(tri.min(axis=1, keepdims=True))
    x = tri[:, :, 0] * width - 0.5
    y = (1.0 - tri[:, :, 1]) * height - 0.5
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    x_lo, x_hi = np.ceil(x.min(axis=1)).astype(np.int64), np.floor(x.max(axis=1)).astype(np.int64)
    y_lo, y_hi = np.ceil(y.min(axis=1)).astype(np.int64), np.floor(y.max(axis=1)).astype(np.int64)
    nx, ny = x_hi - x_lo + 1, y_hi - y_lo + 1
    live = np.nonzero((np.abs(area2) > 1e-12) & (nx > 0) & (ny > 0))[0]
    # Work items are (triangle, bounding-box row) pairs, grouped into slices by candidate count.
    item_tri = np.repeat(live, ny[live])
    item_row = np.arange(len(item_tri)) - np.repeat(np.cumsum(ny[live]) - ny[live], ny[live]) + y_lo[item_tri]
    item_n = nx[item_tri]
    ends = np.cumsum(item_n)
    start = 0
    while start < len(item_tri):
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + candidates_per_step, side="right")))
        t, row, n = item_tri[start:stop], item_row[start:stop], item_n[start:stop]
        t = np.repeat(t, n)
        py = np.repeat(row, n).astype(np.float64)
        px = (np.arange(len(t)) - np.repeat(np.cumsum(n) - n, n) + x_lo[t]).astype(np.float64)
        xs, ys, a = x[t], y[t], area2[t]
        inside = np.ones(len(t), bool)
        tolerance = 1e-7 * np.abs(a)
        for i, j in ((1, 2), (2, 0), (0, 1)):
            edge = (xs[:, i] - px) * (ys[:, j] - py) - (xs[:, j] - px) * (ys[:, i] - py)
            inside &= edge * np.sign(a) >= -tolerance
        cols = px[inside].astype(np.int64) % width
        rows = py[inside].astype(np.int64) % height
        mask[rows * width + cols] = True
        start = stop
        yield
    return mask.reshape(height, width)


def rasterize_uv(triangles: np.ndarray, width: int, height: int) -> np.ndarray:
    return run(rasterize_uv_steps(triangles, width, height))


def grow_mask(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """A bool mask grown by `steps` 8-neighbour (chessboard) steps."""
    for _ in range(steps):
        mask = _dilate8(mask)
    return mask


def _dilate8(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    wide = out.copy()
    wide[:, 1:] |= out[:, :-1]
    wide[:, :-1] |= out[:, 1:]
    return wide


def _neighbours(index: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour flat indices (8, n), inside-texture flags (8, n)) of flat texel indices."""
    ys, xs = np.divmod(index, width)
    dy = np.array([d[0] for d in _NEIGHBOURS])[:, None]
    dx = np.array([d[1] for d in _NEIGHBOURS])[:, None]
    ny, nx = ys[None] + dy, xs[None] + dx
    ok = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
    return np.where(ok, ny * width + nx, 0), ok


def dilate_steps(texture: np.ndarray, filled: np.ndarray, pixels: int) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
    """Grow the set texels `pixels` steps outwards (one slice per step); returns the new
    (texture, filled). After k steps every texel within chessboard distance k is set."""
    tex = np.array(texture, dtype=np.float32)
    if tex.ndim == 2:
        tex = tex[:, :, None]
    height, width, channels = tex.shape
    have = np.asarray(filled, bool)
    if have.shape != (height, width):
        raise ProjectionError(f"filled mask must have the texture's shape {(height, width)}")
    if pixels < 0:
        raise ProjectionError("the dilation margin cannot be negative")
    flat = tex.reshape(-1, channels)
    have = have.reshape(-1).copy()
    frontier = np.nonzero((_dilate8(have.reshape(height, width)) & ~have.reshape(height, width)).reshape(-1))[0]
    for _ in range(pixels):
        if frontier.size == 0:
            break
        near, ok = _neighbours(frontier, width, height)
        use = ok & have[near]
        sums = np.einsum("kn,knc->nc", use.astype(np.float32), flat[near])
        flat[frontier] = sums / use.sum(axis=0)[:, None]
        have[frontier] = True
        near, ok = _neighbours(frontier, width, height)
        candidates = np.unique(near[ok])
        frontier = candidates[~have[candidates]]
        yield
    return tex, have.reshape(height, width)


def dilate(texture: np.ndarray, filled: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    return run(dilate_steps(texture, filled, pixels))


def _downsample(color: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One push step: 2×2 weighted mean colour and summed (clamped to 1) weight."""
    h, w = weight.shape
    if h % 2 or w % 2:  # pad with zero weight
        color = np.pad(color, ((0, h % 2), (0, w % 2), (0, 0)))
        weight = np.pad(weight, ((0, h % 2), (0, w % 2)))
        h, w = weight.shape
    wc = (color * weight[:, :, None]).reshape(h // 2, 2, w // 2, 2, -1).sum(axis=(1, 3))
    ws = weight.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ws[:, :, None] > 0, wc / ws[:, :, None], 0.0).astype(np.float32)
    return mean, np.minimum(ws, 1.0).astype(np.float32)


def _upsample_rows(coarse: np.ndarray, height: int, width: int, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of the bilinear 2× upsampling of `coarse` to (height, width)."""
    ch, cw = coarse.shape[:2]
    y = np.arange(r0, r1) / 2.0 - 0.25
    x = np.arange(width) / 2.0 - 0.25
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    ty, tx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    ya, yb = np.clip(y0, 0, ch - 1), np.clip(y0 + 1, 0, ch - 1)
    xa, xb = np.clip(x0, 0, cw - 1), np.clip(x0 + 1, 0, cw - 1)
    rows = coarse[ya] * (1 - ty) + coarse[yb] * ty
    return rows[:, xa] * (1 - tx) + rows[:, xb] * tx


def push_pull_steps(values: np.ndarray, known: np.ndarray, *, rows_per_step: int = 256) -> Generator[None, None, np.ndarray]:
    """Every texel filled from the known ones at all scales; known texels keep their values.
    Returns (height, width, C) float32 (zeros when nothing is known)."""
    color = np.asarray(values, dtype=np.float32)
    if color.ndim == 2:
        color = color[:, :, None]
    weight = np.asarray(known, dtype=np.float32)
    if weight.shape != color.shape[:2]:
        raise ProjectionError(f"known mask must have the texture's shape {color.shape[:2]}")
    weight = np.clip(weight, 0.0, 1.0)
    levels = [(color, weight)]
    while levels[-1][1].shape[0] > 1 or levels[-1][1].shape[1] > 1:
        levels.append(_downsample(*levels[-1]))
        yield
    if not levels[-1][1].any():
        return np.zeros_like(color)
    result = levels[-1][0]
    for level_color, level_weight in reversed(levels[:-1]):
        h, w = level_weight.shape
        out = np.empty_like(level_color)
        for r0 in range(0, h, rows_per_step):
            r1 = min(h, r0 + rows_per_step)
            up = _upsample_rows(result, h, w, r0, r1)
            wgt = level_weight[r0:r1, :, None]
            out[r0:r1] = wgt * level_color[r0:r1] + (1.0 - wgt) * up
            if h * w > rows_per_step * 2048:
                yield
        result = out
    return result


def push_pull(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    return run(push_pull_steps(values, known))


@dataclass
class BakeResult:
    """A finished texture and what it is made of (all (height, width), top row first)."""

    texture: np.ndarray  # (height, width, C) float32
    island: np.ndarray  # texels inside a UV island
    unseen: np.ndarray  # island texels no view painted (filled, or to inpaint in UV space)
    margin: np.ndarray  # texels set by the margin dilation (outside islands)


def finish_steps(
    texture: np.ndarray,
    seen: np.ndarray,
    island: np.ndarray | None = None,
    *,
    margin_px: int = 16,
    fill: bool = True,
    fill_background: bool = True,
) -> Generator[None, None, BakeResult]:
    """The seam-free bake of a blended texture: with `fill`, island texels no view saw are
    filled from their neighbours (push-pull); the result is dilated `margin_px` texels past the
    islands; with `fill_background`, texels beyond the margins get a smooth fill too (so
    mipmaps never average in black). Without `fill`, send the texture and `unseen` mask to a
    UV-space inpaint, then call this again with seen = the island mask."""
    tex = np.array(texture, dtype=np.float32)
    if tex.ndim == 2:
        tex = tex[:, :, None]
    shape = tex.shape[:2]
    seen = np.asarray(seen, bool)
    island = seen.copy() if island is None else np.asarray(island, bool)
    if seen.shape != shape or island.shape != shape:
        raise ProjectionError(f"seen and island masks must have the texture's shape {shape}")
    unseen = island & ~seen
    have = seen.copy()
    if fill and unseen.any() and seen.any():
        filled = yield from push_pull_steps(tex, seen)
        tex[unseen] = filled[unseen]
        have |= island
    tex, grown = yield from dilate_steps(tex, have, margin_px)
    margin = grown & ~have & ~island
    if fill_background and not grown.all() and grown.any():
        filled = yield from push_pull_steps(tex, grown)
        tex[~grown] = filled[~grown]
    return BakeResult(texture=tex, island=island, unseen=unseen, margin=margin)


def finish(texture: np.ndarray, seen: np.ndarray, island: np.ndarray | None = None, **kwargs: object) -> BakeResult:
    return run(finish_steps(texture, seen, island, **kwargs))
