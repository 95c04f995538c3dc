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
    triangles: np.ndarray, width: int, height: int, *, rows_per_step: int = 1 << 18
) -> Generator[None, None, np.ndarray]:
    """Island mask (height, width) bool of UV triangles (T, 3, 2): texels whose centre lies in
    (or on the edge of) a triangle. Scanline spans: each (triangle, texel row) pair gives the
    span of texel centres it covers, marked with +1/-1 in a difference array, then summed along
    the rows — the cost grows with triangles × rows, not with their area. One slice per
    `rows_per_step` pairs. UVs outside [0, 1] wrap, as a repeating texture."""
    width, height = _texture_size(width, height)
    tri = np.asarray(triangles, dtype=np.float64)
    if tri.ndim != 3 or tri.shape[1:] != (3, 2):
        raise ProjectionError(f"UV triangles must be a (count, 3, 2) array, got shape {tri.shape}")
    tri = tri[np.isfinite(tri).all(axis=(1, 2))]
    # Each triangle into the base tile by its lowest corner (a repeating texture), then into
    # texel-centre coordinates: texel (r, c) has its centre at (c, r).
    tri = tri - np.floor(tri.min(axis=1, keepdims=True))
    x = tri[:, :, 0] * width - 0.5
    y = (1.0 - tri[:, :, 1]) * height - 0.5
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    eps = 1e-6  # texels: centres on an edge count as inside, so shared edges leave no cracks
    y_lo = np.ceil(y.min(axis=1) - eps).astype(np.int64)
    ny = np.floor(y.max(axis=1) + eps).astype(np.int64) - y_lo + 1
    live = np.nonzero((np.abs(area2) > 1e-12) & (ny > 0))[0]
    item_tri = np.repeat(live, ny[live])
    item_row = np.arange(len(item_tri)) - np.repeat(np.cumsum(ny[live]) - ny[live], ny[live]) + y_lo[item_tri]
    diff = np.zeros((height, width + 1), np.int32)
    for start in range(0, len(item_tri), rows_per_step):
        t, row = item_tri[start : start + rows_per_step], item_row[start : start + rows_per_step]
        xs, ys, py = x[t], y[t], row.astype(np.float64)[:, None]
        lo = np.full(len(t), np.inf)
        hi = np.full(len(t), -np.inf)
        for i, j in ((0, 1), (1, 2), (2, 0)):
            xi, yi, xj, yj = xs[:, i : i + 1], ys[:, i : i + 1], xs[:, j : j + 1], ys[:, j : j + 1]
            dy = yj - yi
            crosses = ((py >= np.minimum(yi, yj) - eps) & (py <= np.maximum(yi, yj) + eps))[:, 0]
            flat = np.abs(dy[:, 0]) < 1e-12
            with np.errstate(invalid="ignore", divide="ignore"):
                at = np.clip(np.where(flat[:, None], 0.0, (py - yi) / dy), 0.0, 1.0)
            xa = (xi + at * (xj - xi))[:, 0]
            xb = np.where(flat, xj[:, 0], xa)  # a horizontal edge spans both its ends
            lo = np.where(crosses, np.minimum(lo, np.minimum(xa, xb)), lo)
            hi = np.where(crosses, np.maximum(hi, np.maximum(xa, xb)), hi)
        c0 = np.ceil(lo - eps)
        c1 = np.floor(hi + eps)
        ok = np.isfinite(c0) & (c1 >= c0)
        c0, c1, r = c0[ok].astype(np.int64), c1[ok].astype(np.int64), row[ok] % height
        # Spans wrap around the texture: a full row, or up to two pieces inside [0, width).
        full = c1 - c0 + 1 >= width
        a0 = np.where(full, 0, c0 % width)
        a1 = np.where(full, width - 1, a0 + (c1 - c0))
        first_end = np.minimum(a1, width - 1)
        np.add.at(diff, (r, a0), 1)
        np.add.at(diff, (r, first_end + 1), -1)
        wraps = a1 >= width
        np.add.at(diff, (r[wraps], 0), 1)
        np.add.at(diff, (r[wraps], a1[wraps] - width + 1), -1)
        yield
    return np.cumsum(diff[:, :width], axis=1) > 0


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


def dilate_steps(
    texture: np.ndarray, filled: np.ndarray, pixels: int, *, copy: bool = True
) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
    """Grow the set texels `pixels` steps outwards (one slice per step); returns the new
    (texture, filled). After k steps every texel within chessboard distance k is set.
    With copy=False a float32 texture is updated in place."""
    tex = np.array(texture, dtype=np.float32, copy=copy)
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
    yield
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


def _downsample_rows(color: np.ndarray, weight: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """One push step for coarse rows [r0, r1): 2×2 weighted mean colour and summed weight
    (clamped to 1); a missing last row/column (odd sizes) counts as weight 0."""
    h, w = weight.shape
    rows = slice(2 * r0, min(h, 2 * r1))
    c, wt = color[rows], weight[rows]
    if c.shape[0] % 2 or w % 2:
        c = np.pad(c, ((0, c.shape[0] % 2), (0, w % 2), (0, 0)))
        wt = np.pad(wt, ((0, wt.shape[0] % 2), (0, w % 2)))
    pc = c * wt[:, :, None]
    wsum = wt[0::2, 0::2] + wt[1::2, 0::2] + wt[0::2, 1::2] + wt[1::2, 1::2]
    csum = pc[0::2, 0::2] + pc[1::2, 0::2] + pc[0::2, 1::2] + pc[1::2, 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(wsum[:, :, None] > 0, csum / wsum[:, :, None], 0.0).astype(np.float32)
    return mean, np.minimum(wsum, 1.0).astype(np.float32)


def _upsample_rows(coarse: np.ndarray, height: int, width: int, r0: int, r1: int) -> np.ndarray:
    """Fine rows [r0, r1) (r0 even) of the bilinear 2× upsampling of `coarse` to (height, width):
    fine texel 2k sits a quarter texel before coarse texel k, 2k+1 a quarter after."""
    ch, cw = coarse.shape[:2]
    k = np.arange(r0 // 2, (r1 + 1) // 2)
    here = coarse[k]
    rows = np.empty((2 * len(k),) + coarse.shape[1:], np.float32)
    rows[0::2] = 0.75 * here + 0.25 * coarse[np.maximum(k - 1, 0)]
    rows[1::2] = 0.75 * here + 0.25 * coarse[np.minimum(k + 1, ch - 1)]
    rows = rows[: r1 - r0]
    left = np.concatenate([rows[:, :1], rows[:, :-1]], axis=1)
    right = np.concatenate([rows[:, 1:], rows[:, -1:]], axis=1)
    out = np.empty((rows.shape[0], 2 * cw) + coarse.shape[2:], np.float32)
    out[:, 0::2] = 0.75 * rows + 0.25 * left
    out[:, 1::2] = 0.75 * rows + 0.25 * right
    return out[:, :width]


def push_pull_steps(values: np.ndarray, known: np.ndarray, *, rows_per_step: int = 128) -> Generator[None, None, np.ndarray]:
    """Every texel filled from the known ones at all scales; known texels keep their values.
    Returns (height, width, C) float32 (zeros when nothing is known). One slice per band of
    `rows_per_step` rows on the large levels."""
    color = np.asarray(values, dtype=np.float32)
    if color.ndim == 2:
        color = color[:, :, None]
    weight = np.asarray(known, dtype=np.float32)
    if weight.shape != color.shape[:2]:
        raise ProjectionError(f"known mask must have the texture's shape {color.shape[:2]}")
    weight = np.clip(weight, 0.0, 1.0)
    yield
    step = max(2, rows_per_step - rows_per_step % 2)
    levels = [(color, weight)]
    while levels[-1][1].shape[0] > 1 or levels[-1][1].shape[1] > 1:
        fine_color, fine_weight = levels[-1]
        h, w = fine_weight.shape
        ch, cw = (h + 1) // 2, (w + 1) // 2
        mean = np.empty((ch, cw, color.shape[2]), np.float32)
        wsum = np.empty((ch, cw), np.float32)
        for r0 in range(0, ch, step // 2):
            r1 = min(ch, r0 + step // 2)
            mean[r0:r1], wsum[r0:r1] = _downsample_rows(fine_color, fine_weight, r0, r1)
            yield
        levels.append((mean, wsum))
    if not levels[-1][1].any():
        return np.zeros_like(color)
    result = levels[-1][0]
    for level_color, level_weight in reversed(levels[:-1]):
        h, w = level_weight.shape
        out = np.empty_like(level_color)
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            wgt = level_weight[r0:r1, :, None]
            out[r0:r1] = wgt * level_color[r0:r1] + (1.0 - wgt) * _upsample_rows(result, h, w, r0, r1)
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


def _copy_where(target: np.ndarray, source: np.ndarray, where: np.ndarray, rows_per_step: int = 256) -> Generator[None, None, None]:
    for r0 in range(0, target.shape[0], rows_per_step):
        rows = slice(r0, r0 + rows_per_step)
        np.copyto(target[rows], source[rows], where=where[rows, :, None])
        yield


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
    yield
    # One smooth fill from the painted texels serves both the unseen island texels and the
    # background beyond the margins.
    fill = fill and bool(unseen.any())
    smooth = None
    if (fill or fill_background) and seen.any():
        smooth = yield from push_pull_steps(tex, seen)
    if fill and smooth is not None:
        yield from _copy_where(tex, smooth, unseen)
        have |= island
    tex, grown = yield from dilate_steps(tex, have, margin_px, copy=False)
    margin = grown & ~have & ~island
    if fill_background and smooth is not None:
        yield from _copy_where(tex, smooth, ~grown)
    return BakeResult(texture=tex, island=island, unseen=unseen, margin=margin)


def finish(texture: np.ndarray, seen: np.ndarray, island: np.ndarray | None = None, **kwargs: object) -> BakeResult:
    return run(finish_steps(texture, seen, island, **kwargs))
