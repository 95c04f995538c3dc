"""Multi-view texturing without bpy: what each view sends and what each generated view does.

For a view: its control maps come from its UV render's exact depth/normal/object passes (the
render the projection uses anyway, reduced to the generated image's size); for consistent views
the init image is the current texture seen from the view and the inpaint mask the part not yet
painted (`TextureBake.init_for_view`, combined over the objects). A generated view is projected
into every object's texture (`TextureBake.add_view_steps`) and the partial textures come back in
Blender's pixel layout for the live display. The finish fills what no view saw (from the
neighbours, or through a UV-space inpaint by the backend: `fill_inputs` / `merge_fill_steps`),
dilates the margins and encodes the PNGs.

Everything here runs on the add-on's worker thread (arrays in, arrays out); the generator forms
do bounded slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Generator

import numpy as np

from . import pixels, png
from .bake import BakeResult, finish_steps, grow_mask
from .conditioning import ControlSpec
from .control_maps import PassSet
from .multiview import TextureBake, tile_views
from .projection import ViewSurface, sample_bilinear
from .views import ProjectionError, ViewCamera

LIVE_MAX = 2048  # longest side of the live partial texture (a 4K texture is shown at 2K)
BACKGROUND = 0.5  # init colour where nothing is painted yet


def direction_word(camera: ViewCamera, center: Any) -> str:
    """'front view', 'right view', 'back view', 'left view', 'top view' or 'bottom view': where
    the camera looks from, Blender's front being −Y (numpad 1) and right +X (numpad 3)."""
    d = camera.location - np.asarray(center, np.float64)
    elevation = math.degrees(math.atan2(d[2], math.hypot(d[0], d[1])))
    if elevation > 60:
        return "top view"
    if elevation < -60:
        return "bottom view"
    azimuth = math.degrees(math.atan2(d[0], -d[1])) % 360  # 0 in front, 90 on the right
    return ("front view", "right view", "back view", "left view")[int(((azimuth + 45) % 360) // 90)]


def view_prompt(prompt: str, *extra: str) -> str:
    """The main prompt with a view's own words after it."""
    return ", ".join(p.strip() for p in (prompt, *extra) if p and p.strip())


def camera_to_dict(camera: ViewCamera) -> dict[str, Any]:
    return {"matrix_world": camera.matrix_world.tolist(), "width": camera.width, "height": camera.height,
            "kind": camera.kind, "lens": camera.lens, "sensor_width": camera.sensor_width,
            "sensor_height": camera.sensor_height, "sensor_fit": camera.sensor_fit, "ortho_scale": camera.ortho_scale,
            "shift_x": camera.shift_x, "shift_y": camera.shift_y, "clip_start": camera.clip_start, "clip_end": camera.clip_end}


def camera_from_dict(data: dict[str, Any]) -> ViewCamera:
    try:
        return ViewCamera(matrix_world=np.asarray(data["matrix_world"], np.float64), **{k: v for k, v in data.items() if k != "matrix_world"})
    except (KeyError, TypeError) as exc:
        raise ProjectionError(f"a stored view camera is incomplete ({exc})") from None


def spec_to_dict(spec: ControlSpec) -> dict[str, Any]:
    return dict(spec.__dict__)


def spec_from_dict(data: dict[str, Any]) -> ControlSpec:
    return ControlSpec(**data)


# ---------------------------------------------------------------------------------- view inputs


def surface_passes(surface: ViewSurface) -> PassSet:
    """The UV render's passes as a PassSet for control_maps: planar depth (every object the view
    sees, occluders too), camera-space normals (so camera_to_world is the identity) and the
    target objects' numbers (others 0)."""
    if surface.normal is None:
        raise ProjectionError("control maps need the UV render's normals")
    h, w = surface.shape
    index = np.where(surface.coverage, surface.object_index + 1 if surface.object_index is not None else 1, 0)
    return PassSet(width=w, height=h, camera_to_world=np.eye(3),
                   arrays={"depth": surface.depth, "normal": surface.normal, "object_index": index.astype(np.float32),
                           "material_index": index.astype(np.float32)})


def view_maps(surface: ViewSurface, specs: list[ControlSpec], factor: int) -> list[np.ndarray]:
    """Each spec's map of the view, at the generated image's size (the UV render is `factor`×)."""
    passes = surface_passes(surface)
    how = {"edges": "max", "segmentation": "centre"}
    return [pixels.box_reduce(spec.build_map(passes), factor, how=how.get(spec.kind, "mean")) for spec in specs]


@dataclass
class ViewInputs:
    """What one view (or the grid of all views) sends: "txt2img", "inpaint" (init + mask of what
    is painted), or "skip" (every pixel it sees is painted already); the uploads by role, and the
    "Latent Bridge Control" pixels (the maps, then the init, side by side)."""

    mode: str
    images: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    shown: np.ndarray | None = None
    shown_size: tuple[int, int] = (0, 0)


def painted_init(bakes: list[TextureBake], surface: ViewSurface, image_size: tuple[int, int], grow_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The current textures seen from a view: (init (h, w, 3) float, mask (h, w) bool, True =
    still to paint), over every object (object k's pixels sample its own texture), the mask grown
    by `grow_px` so the new view blends across the seam."""
    width, height = image_size
    init = np.full((height, width, 3), BACKGROUND, np.float32)
    todo = np.ones((height, width), bool)
    for k, bake in enumerate(bakes):
        if not bake.views:
            continue
        image, mask = bake.init_for_view(surface.select(k), image_size, background=BACKGROUND)
        painted = mask < 0.5
        init[painted] = image[painted][:, :3]
        todo &= ~painted
    return init, grow_mask(todo, max(0, grow_px))


def _shown(images: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int]]:
    grid = tile_views(images)
    return pixels.blender_rgba(grid), (grid.shape[1], grid.shape[0])


def view_inputs(
    bakes: list[TextureBake], surface: ViewSurface, image_size: tuple[int, int], specs: list[ControlSpec], *,
    consistent: bool, grow_px: int = 8,
) -> ViewInputs:
    factor = surface.shape[1] // image_size[0]
    maps = view_maps(surface, specs, factor)
    out = ViewInputs("txt2img", {f"control.{i}": (png.encode_png(m), "png") for i, m in enumerate(maps)})
    shown = list(maps)
    if consistent and any(b.views for b in bakes):
        init, todo = painted_init(bakes, surface, image_size, grow_px)
        if not todo.any():
            out.mode = "skip"
        elif not todo.all():
            out.mode = "inpaint"
            rgb = png.float_to_uint8(init)
            out.images["init"] = (png.encode_png(rgb), "png")
            out.images["mask"] = (png.encode_png(todo.astype(np.uint8) * np.uint8(255)), "png")
            shown.append(rgb)
    if shown:
        out.shown, out.shown_size = _shown(shown)
    return out


def grid_inputs(surfaces: list[ViewSurface], image_size: tuple[int, int], specs: list[ControlSpec]) -> ViewInputs:
    """All views at once: each spec's maps of every view tiled into one grid image (multiview
    grid layout), for one text-to-image of the grid's size."""
    factor = surfaces[0].shape[1] // image_size[0]
    per_view = [view_maps(s, specs, factor) for s in surfaces]
    grids = [tile_views([maps[i] for maps in per_view]) for i in range(len(specs))]
    out = ViewInputs("txt2img", {f"control.{i}": (png.encode_png(g), "png") for i, g in enumerate(grids)})
    if grids:
        out.shown, out.shown_size = pixels.blender_rgba(grids[0]), (grids[0].shape[1], grids[0].shape[0])
    return out


# ------------------------------------------------------------------------------ projection


def live_pixels(texture: np.ndarray, seen: np.ndarray, limit: int = LIVE_MAX) -> tuple[np.ndarray, int, int]:
    """A partial texture for display: unpainted texels grey, at most `limit` texels a side, in
    Blender's layout: (flat pixels, width, height)."""
    shown = np.where(seen[..., None], texture[..., :3], np.float32(BACKGROUND)).astype(np.float32)
    factor = max(1, math.ceil(max(shown.shape[:2]) / limit))
    shown = pixels.box_reduce(shown, factor)
    return pixels.blender_rgba(shown), shown.shape[1], shown.shape[0]


def project_view_steps(
    bakes: list[TextureBake], image: np.ndarray, surface: ViewSurface, camera: ViewCamera, *, live: bool = True,
) -> Generator[None, None, list[tuple[np.ndarray, int, int]]]:
    """Project one generated view (float (h, w, 3|4) top row first) into every object's texture;
    returns each object's live partial texture (`live_pixels`), or [] without `live`."""
    image = np.asarray(image, np.float32)[..., :3]
    for k, bake in enumerate(bakes):
        yield from bake.add_view_steps(image, surface.select(k), camera)
    out = []
    if live:
        for bake in bakes:
            texture, seen = yield from bake.texture_steps()
            out.append(live_pixels(texture, seen))
            yield
    return out


# ------------------------------------------------------------------------------------ finish


def finish_all_steps(bakes: list[TextureBake], *, margin_px: int) -> Generator[None, None, list[BakeResult]]:
    """Each object's seam-free texture: blend, fill what no view saw from its neighbours (push-
    pull; `unseen` says which texels, for a UV-space inpaint to replace), dilate the margins,
    fill the background."""
    out = []
    for bake in bakes:
        out.append((yield from bake.finish_steps(margin_px=margin_px, fill=True)))
    return out


def fill_size(width: int, height: int, max_side: int, max_pixels: int) -> tuple[int, int]:
    """The size a UV-space inpaint runs at: the texture's, shrunk by a power of two until the
    server takes it, multiples of 8."""
    w, h = width, height
    while w > max_side or h > max_side or w * h > max_pixels:
        w, h = w // 2, h // 2
    return max(64, w - w % 8), max(64, h - h % 8)


def fill_inputs(result: BakeResult, size: tuple[int, int], grow_px: int = 2) -> dict[str, tuple[bytes, str]]:
    """The UV-space inpaint of the texels no view saw: init = the texture (its holes filled
    smoothly), mask = those texels (grown a little), both at `size`."""
    width, height = size
    th, tw = result.texture.shape[:2]
    ys = (np.arange(height) + 0.5) * th / height
    xs = (np.arange(width) + 0.5) * tw / width
    gx, gy = np.meshgrid(xs, ys)
    init = sample_bilinear(result.texture[..., :3], gx.ravel(), gy.ravel()).reshape(height, width, 3)
    mask = grow_mask(result.unseen, grow_px)
    rows = np.minimum((ys).astype(np.int64), th - 1)
    cols = np.minimum((xs).astype(np.int64), tw - 1)
    small = mask[rows][:, cols]
    return {"init": (png.encode_png(png.float_to_uint8(init)), "png"),
            "mask": (png.encode_png(small.astype(np.uint8) * np.uint8(255)), "png")}


def merge_fill_steps(result: BakeResult, generated: np.ndarray, *, margin_px: int) -> Generator[None, None, BakeResult]:
    """The inpainted texels (the generated image sampled at each unseen texel) into the texture,
    then the margins and background again from the now complete islands."""
    texture = result.texture.copy()
    th, tw = texture.shape[:2]
    gen = np.asarray(generated, np.float32)[..., :3]
    ys, xs = np.nonzero(result.unseen)
    if len(ys):
        sx, sy = gen.shape[1] / tw, gen.shape[0] / th
        texture[ys, xs, :3] = sample_bilinear(gen, (xs + 0.5) * sx, (ys + 0.5) * sy)
    yield
    final = yield from finish_steps(texture, result.island, result.island, margin_px=margin_px, fill=False)
    return BakeResult(texture=final.texture, island=result.island, unseen=result.unseen, margin=final.margin)


def encode_texture(texture: np.ndarray) -> bytes:
    """The finished texture as an RGB PNG (the image packed into the .blend)."""
    return png.encode_png(png.float_to_uint8(np.asarray(texture)[..., :3]))
