"""Pixels out of Blender: the render (its colour and exact passes), the viewport, an image, painted
and alpha masks.

"Render Result" has no pixels in background/module mode, so renders are saved and read back:
`render()` captures the scene's colour (saved as an uncompressed Targa with the scene's view
transform: the artist gets what they see) together with the exact passes of the same view
(passes.py) — the selected-objects mask comes from that render's object index pass, control maps
from its depth/normal/index passes. The arrays are encoded to PNG off the main thread
(conditioning.py). Other sources (viewport, existing images) are PNG bytes at once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import png
from .control_maps import PassSet
from .pixels import nearest_resize, opaque_rgb

# Data whose change does not change a render: ours (previews, results) and UI data.
_IGNORED_UPDATES = (bpy.types.Image, bpy.types.WindowManager, bpy.types.Screen, bpy.types.WorkSpace)


class CaptureError(Exception):
    """A capture the artist can fix (no camera, no image, mismatched mask…); shown as-is."""


@contextlib.contextmanager
def temporarily(*settings: tuple[Any, str, Any]) -> Iterator[None]:
    """Set (owner, attribute, value) triples and put the old values back afterwards."""
    saved = []
    try:
        for owner, attr, value in settings:
            old = getattr(owner, attr)
            if not isinstance(old, (str, int, float, bool)) and hasattr(old, "__len__"):
                old = tuple(old)  # a live bpy array would otherwise "remember" the new value
            saved.append((owner, attr, old))
            setattr(owner, attr, value)
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


@contextlib.contextmanager
def _temp_png(suffix: str = ".png") -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="latentbridge-", suffix=suffix)
    os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def image_pixels(image: bpy.types.Image) -> np.ndarray:
    """Float RGBA pixels, shape (height, width, 4), top row first."""
    width, height = image.size
    if width == 0 or height == 0:
        raise CaptureError(f"Image “{image.name}” has no pixels (is its file missing?)")
    flat = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, 4)[::-1]


def _png_settings(scene: bpy.types.Scene, color_mode: str) -> tuple[tuple[Any, str, Any], ...]:
    settings = scene.render.image_settings
    out: list[tuple[Any, str, Any]] = []
    if hasattr(settings, "media_type"):  # Blender 5.0+: file_format depends on it
        out.append((settings, "media_type", "IMAGE"))
    out += [(settings, "file_format", "PNG"), (settings, "color_mode", color_mode), (settings, "color_depth", "8")]
    return tuple(out)


def save_render_png(image: bpy.types.Image, scene: bpy.types.Scene, color_mode: str = "RGB") -> bytes:
    """PNG bytes of a render-type image (Render Result, Viewer Node), which have no pixels of
    their own in Python: `save_render` writes what the artist sees (view transform applied)."""
    with temporarily(*_png_settings(scene, color_mode)), _temp_png() as path:
        image.save_render(filepath=path, scene=scene)
        with open(path, "rb") as f:
            return f.read()


def render_op(scene: bpy.types.Scene, layer: str = "") -> None:
    """A still render, also from a timer (an animation's next frame), where the context has no
    screen: then the first window's screen is lent to the operator."""
    options = {"write_still": False, "scene": scene.name, **({"layer": layer} if layer else {})}
    context = bpy.context
    windows = context.window_manager.windows if context.window_manager else ()
    if context.screen is None and len(windows):
        with context.temp_override(window=windows[0], screen=windows[0].screen):
            bpy.ops.render.render(**options)
        return
    bpy.ops.render.render(**options)


def _render_to_png(scene: bpy.types.Scene, color_mode: str = "RGB") -> bytes:
    if scene.camera is None:
        raise CaptureError("The scene has no active camera to render from")
    render_op(scene)
    result = bpy.data.images.get("Render Result")
    if result is None:
        raise CaptureError("Rendering produced no result")
    return save_render_png(result, scene, color_mode)


@dataclass
class Render:
    """One capture of the scene from its camera: the colour as the artist sees it (uint8 RGBA or
    float RGBA 0..1, top row first; None when only passes were asked for) and the exact passes of
    the render (`passes.render_passes`). Plain data: the worker thread turns it into uploads."""

    color: np.ndarray | None
    passes: PassSet | None = None
    renders: int = 0
    key: tuple = ()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the colour (or of the passes when there is no colour)."""
        if self.color is not None:
            return self.color.shape[1], self.color.shape[0]
        return (self.passes.width, self.passes.height) if self.passes is not None else (0, 0)


class _Changes:
    """Counts changes to data a render depends on (fed by a depsgraph handler)."""

    count = 0


_last: dict[str, Render] = {}  # scene name → its last render


def changes_picture(depsgraph: Any) -> bool:
    """Whether a depsgraph update could alter a render (live mode uses it too)."""
    for update in depsgraph.updates:
        if isinstance(update.id, _IGNORED_UPDATES + (bpy.types.Scene, bpy.types.Collection)):
            continue
        # Adding any data block rebuilds the depsgraph's relations, which reports every object
        # with a shading update; a real change of an object moves or reshapes it.
        if isinstance(update.id, bpy.types.Object) and not (update.is_updated_transform or update.is_updated_geometry):
            continue
        return True
    return False


@persistent
def note_changes(_scene: Any, depsgraph: Any) -> None:
    """depsgraph_update_post: a change that could alter a render invalidates the reused one."""
    if changes_picture(depsgraph):
        _Changes.count += 1


def _flush_changes(scene: bpy.types.Scene) -> None:
    """Evaluate pending changes now, so `note_changes` has counted them."""
    for layer in scene.view_layers:
        layer.update()


def _render_key(scene: bpy.types.Scene, what: tuple) -> tuple:
    r, v = scene.render, scene.view_settings
    return (_Changes.count, bpy.data.filepath, scene.frame_current, scene.camera.name if scene.camera else "",
            r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage, r.film_transparent,
            v.view_transform, v.look, v.exposure, v.gamma, scene.display_settings.display_device, what)


def render(
    scene: bpy.types.Scene,
    *,
    passes: Iterable[str] = (),
    color: bool = True,
    size: tuple[int, int] | None = None,
    overscan: tuple[int, int, int, int] | None = None,
    reuse: bool = False,
) -> Render:
    """Capture the scene from its camera: its colour as the artist renders it and the exact
    `passes` (any of depth, normal, object_index, material_index) of the same view.

    - Cycles scene: ONE render gives the colour (the scene's own samples, denoiser, lights and
      materials) and every pass (`passes.render_passes`).
    - Another engine (EEVEE, Workbench): the colour comes from the scene's own engine (the look
      the artist chose, which Cycles cannot reproduce) and, when passes are asked for, one
      data-only Cycles render (1 sample, no bounces) adds them: see docs/blender-passes.md.
    - No colour: one data-only render at `size` (default: the render resolution).

    `overscan` (left, top, right, bottom) render pixels grows the passes' frame past the camera's
    (outpainting); the colour stays the camera's own frame. `reuse`: the last capture again when
    nothing it depends on changed since."""
    from . import passes as passes_mod  # passes.py builds on this module's helpers

    if scene.camera is None:
        raise CaptureError("The scene has no active camera to render from")
    wanted = frozenset(passes)
    what = (color, tuple(sorted(wanted)), size, overscan)
    _flush_changes(scene)
    last = _last.get(scene.name)
    if reuse and last is not None and last.key == _render_key(scene, what):
        return last
    pass_set, image, count = None, None, 0
    if color and scene.render.engine == "CYCLES":
        pass_set = passes_mod.render_passes(scene, wanted | {"color"}, overscan=overscan)
        image = pass_set.arrays.pop("color")
        if overscan is not None:  # the colour is the camera's frame: the middle of the grown one
            left, top, right, bottom = overscan
            image = image[top: image.shape[0] - bottom, left: image.shape[1] - right]
        count = 1
    else:
        if color:
            render_op(scene)
            result = bpy.data.images.get("Render Result")
            if result is None:
                raise CaptureError("Rendering produced no result")
            image = passes_mod.save_color(result, scene)
            count = 1
        if wanted:
            pass_set = passes_mod.render_passes(scene, wanted, size=None if color else size, overscan=overscan)
            count += 1
    _flush_changes(scene)  # our own temporary changes (pass indices…) are put back by now
    result = Render(image, pass_set, count, _render_key(scene, what))
    _last[scene.name] = result
    return result


def render_png(scene: bpy.types.Scene) -> bytes:
    """Render the scene with its own engine and settings; PNG bytes of what the artist sees."""
    return png.encode_png(opaque_rgb(render(scene).color))


def workbench_png(scene: bpy.types.Scene) -> bytes:
    """A fast solid-shaded render of the camera (the viewport fallback without a GPU context)."""
    with temporarily((scene.render, "engine", "BLENDER_WORKBENCH")):
        return _render_to_png(scene)


def viewport_png(context: bpy.types.Context) -> tuple[bytes, str]:
    """The 3D viewport as seen (OpenGL render) where a window with a GPU context exists; else a
    Workbench render of the camera. Returns (png, note) where note explains a fallback."""
    scene = context.scene
    area = next((a for w in context.window_manager.windows for a in w.screen.areas if a.type == "VIEW_3D"), None) if not bpy.app.background else None
    if area is not None:
        region = next((r for r in area.regions if r.type == "WINDOW"), None)
        try:
            with context.temp_override(area=area, region=region):
                bpy.ops.render.opengl(write_still=False, view_context=True)
            return save_render_png(bpy.data.images["Render Result"], scene), ""
        except (RuntimeError, KeyError):
            pass
    note = "No viewport with a GPU context here: used a Workbench render of the camera instead"
    return workbench_png(scene), note


def image_png(image: bpy.types.Image, scene: bpy.types.Scene | None = None) -> bytes:
    """PNG bytes of an existing image; an unchanged packed PNG is sent as it is. The Render
    Result and the compositor's Viewer image are read through `save_render`."""
    if image.type in ("RENDER_RESULT", "COMPOSITING"):
        try:
            return save_render_png(image, scene or bpy.context.scene)
        except RuntimeError:
            raise CaptureError(f"“{image.name}” is empty: render first (F12), or use Source: Render") from None
    if image.packed_file is not None and not image.is_dirty and image.file_format == "PNG":
        return bytes(image.packed_file.data)
    pixels = image_pixels(image)
    rgb = pixels[:, :, :3]
    if image.is_float and image.colorspace_settings.name not in ("sRGB", "Non-Color"):
        rgb = png.linear_to_srgb(rgb)
    return png.encode_png(png.float_to_uint8(rgb))


def painted_mask_png(mask_image: bpy.types.Image, size: tuple[int, int]) -> bytes:
    """A painted mask image (white = repaint), resized to `size` (width, height) if needed."""
    pixels = image_pixels(mask_image)
    mask = pixels[:, :, :3].max(axis=2) * pixels[:, :, 3]
    return png.encode_png(png.float_to_uint8(nearest_resize(mask, size)))


def alpha_mask_png(image: bpy.types.Image) -> bytes:
    """Erased (transparent) parts of an image become the area to repaint."""
    pixels = image_pixels(image)
    return png.encode_png(png.float_to_uint8(1.0 - pixels[:, :, 3]))
