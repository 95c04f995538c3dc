"""One object's texture through a multi-view projection, as one object to drive (bpy-free).

    bake = TextureBake(2048, 2048, uv_triangles=tris)      # tris: (T, 3, 2) of the active UV map
    run(bake.prepare_steps())                              # island mask
    for image, surface, camera in views:                   # surface: that view's uv render
        init, mask = bake.init_for_view(surface, image_size)   # consistent views: img2img/inpaint inputs
        run(bake.add_view_steps(image, surface, camera))
        texture, seen = bake.texture()                     # the partial texture, for live display
    result = run(bake.finish_steps(margin_px=16))          # fill + dilate: the texture to pack

`tile_views` / `split_views` pack per-view images (control maps, init images, masks) into one
grid image and back, for generating all views at once.

Every `*_steps` generator does bounded slices, so the add-on can drive it from a timer with
`slices.Sliced` or run it whole in a worker thread with `slices.run`.
"""

from __future__ import annotations

from typing import Generator, Iterable

import math

import numpy as np

from .bake import BakeResult, finish_steps, rasterize_uv_steps
from .projection import Accumulator, ViewSurface, WeightOptions, view_init
from .slices import run
from .views import ProjectionError, ViewCamera


class TextureBake:
    """Accumulates views into one (width, height) texture of one object. `uv_triangles` (or a
    ready `island` mask) confines every view's taps to UV islands, so a view's pixels never
    leak into a neighbouring island that belongs to a face the view did not see."""

    def __init__(
        self,
        width: int,
        height: int,
        *,
        uv_triangles: np.ndarray | None = None,
        island: np.ndarray | None = None,
        channels: int = 3,
        options: WeightOptions = WeightOptions(),
        kernel: str = "bilinear",
    ) -> None:
        self.accumulator = Accumulator(width, height, channels)
        self.width, self.height = width, height
        self.options = options
        self.kernel = kernel
        self._triangles = uv_triangles
        self.island = None if island is None else np.asarray(island, bool)
        if self.island is not None and self.island.shape != (height, width):
            raise ProjectionError(f"island mask must be (height, width) = {(height, width)}")
        self.views = 0

    def prepare_steps(self) -> Generator[None, None, None]:
        """Rasterise the UV islands (once), in slices."""
        if self.island is None and self._triangles is not None:
            self.island = yield from rasterize_uv_steps(self._triangles, self.width, self.height)

    def add_view_steps(
        self, image: np.ndarray, surface: ViewSurface, camera: ViewCamera, *, rows_per_step: int | None = None
    ) -> Generator[None, None, None]:
        yield from self.prepare_steps()
        yield from self.accumulator.add_view_steps(
            image, surface, camera, options=self.options, island=self.island, kernel=self.kernel, rows_per_step=rows_per_step
        )
        self.views += 1

    def add_view(self, image: np.ndarray, surface: ViewSurface, camera: ViewCamera) -> None:
        run(self.add_view_steps(image, surface, camera))

    def texture_steps(self) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
        """The blend so far: (texture, seen)."""
        return (yield from self.accumulator.blend_steps())

    def texture(self) -> tuple[np.ndarray, np.ndarray]:
        return run(self.texture_steps())

    def init_for_view(self, surface: ViewSurface, image_size: tuple[int, int] | None = None, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        """Init image and inpaint mask of a view from what earlier views painted."""
        texture, seen = self.texture()
        return view_init(texture, seen, surface, image_size, **kwargs)

    def finish_steps(self, *, margin_px: int = 16, fill: bool = True, fill_background: bool = True) -> Generator[None, None, BakeResult]:
        yield from self.prepare_steps()
        texture, seen = yield from self.texture_steps()
        return (yield from finish_steps(texture, seen, self.island, margin_px=margin_px, fill=fill, fill_background=fill_background))


def bake_steps(
    width: int,
    height: int,
    views: Iterable[tuple[np.ndarray, ViewSurface, ViewCamera]],
    *,
    uv_triangles: np.ndarray | None = None,
    margin_px: int = 16,
    fill: bool = True,
    rows_per_step: int | None = None,
    **options: object,
) -> Generator[None, None, BakeResult]:
    """Project every (image, surface, camera) view, blend, fill and dilate: the whole bake."""
    bake = TextureBake(width, height, uv_triangles=uv_triangles, **options)
    for image, surface, camera in views:
        yield from bake.add_view_steps(image, surface, camera, rows_per_step=rows_per_step)
    return (yield from bake.finish_steps(margin_px=margin_px, fill=fill))


def grid_layout(count: int) -> tuple[int, int]:
    """(rows, columns) of the most square grid that holds `count` views, wider than tall."""
    if count < 1:
        raise ProjectionError("a grid needs at least one view")
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def tile_views(images: list[np.ndarray], fill: float = 0.0) -> np.ndarray:
    """Equally sized (h, w[, C]) view images in one grid image, row by row, left to right;
    unused cells hold `fill`."""
    if not images:
        raise ProjectionError("no views to tile")
    first = np.asarray(images[0])
    if any(np.shape(im) != first.shape for im in images):
        raise ProjectionError("all views in a grid must have the same size")
    rows, cols = grid_layout(len(images))
    h, w = first.shape[:2]
    grid = np.full((rows * h, cols * w) + first.shape[2:], fill, dtype=first.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return grid


def split_views(grid: np.ndarray, count: int) -> list[np.ndarray]:
    """The `count` view images of a grid made by `tile_views` (or generated in its layout)."""
    rows, cols = grid_layout(count)
    grid = np.asarray(grid)
    if grid.shape[0] % rows or grid.shape[1] % cols:
        raise ProjectionError(f"a {grid.shape[1]}×{grid.shape[0]} grid does not split into {rows}×{cols} equal views")
    h, w = grid.shape[0] // rows, grid.shape[1] // cols
    return [grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w].copy() for i in range(count)]
