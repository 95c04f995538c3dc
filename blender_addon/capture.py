"""Pixels out of Blender: the render, the viewport, an image, object and painted masks → PNG bytes.

"Render Result" has no pixels in background/module mode, so renders are saved to a temp PNG
(`save_render`, which applies the scene's view transform: the artist gets what they see) and
read back. Masks are rendered by us with Workbench, flat colours and the Standard view transform,
so white means exactly "repaint".
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import png, render_files

# Engines whose renders have an Object Index pass: the inpaint mask comes from the same render.
INDEX_PASS_ENGINES = {"CYCLES"}
INDEX_PASS_NAMES = ("Object Index", "IndexOB")  # Blender 5.x, 4.x
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


def _load_png_pixels(path: str) -> np.ndarray:
    image = bpy.data.images.load(path, check_existing=False)
    try:
        return image_pixels(image)
    finally:
        bpy.data.images.remove(image)


def _png_settings(scene: bpy.types.Scene, color_mode: str) -> tuple[tuple[Any, str, Any], ...]:
    settings = scene.render.image_settings
    out: list[tuple[Any, str, Any]] = []
    if hasattr(settings, "media_type"):  # Blender 5.0+: file_format depends on it
        out.append((settings, "media_type", "IMAGE"))
    out += [(settings, "file_format", "PNG"), (settings, "color_mode", color_mode), (settings, "color_depth", "8")]
    return tuple(out)


def _exr_settings(scene: bpy.types.Scene) -> tuple[tuple[Any, str, Any], ...]:
    settings = scene.render.image_settings
    out: list[tuple[Any, str, Any]] = []
    if hasattr(settings, "media_type"):
        out.append((settings, "media_type", "MULTI_LAYER_IMAGE"))
    out += [(settings, "file_format", "OPEN_EXR_MULTILAYER"), (settings, "exr_codec", "NONE"), (settings, "color_depth", "32")]
    return tuple(out)


def save_render_png(image: bpy.types.Image, scene: bpy.types.Scene, color_mode: str = "RGB") -> bytes:
    """PNG bytes of a render-type image (Render Result, Viewer Node), which have no pixels of
    their own in Python: `save_render` writes what the artist sees (view transform applied)."""
    with temporarily(*_png_settings(scene, color_mode)), _temp_png() as path:
        image.save_render(filepath=path, scene=scene)
        with open(path, "rb") as f:
            return f.read()


def _render_op(scene: bpy.types.Scene) -> None:
    """A still render, also from a timer (an animation's next frame), where the context has no
    screen: then the first window's screen is lent to the operator."""
    context = bpy.context
    windows = context.window_manager.windows if context.window_manager else ()
    if context.screen is None and len(windows):
        with context.temp_override(window=windows[0], screen=windows[0].screen):
            bpy.ops.render.render(write_still=False, scene=scene.name)
        return
    bpy.ops.render.render(write_still=False, scene=scene.name)


def _render_to_png(scene: bpy.types.Scene, color_mode: str = "RGB") -> bytes:
    if scene.camera is None:
        raise CaptureError("The scene has no active camera to render from")
    _render_op(scene)
    result = bpy.data.images.get("Render Result")
    if result is None:
        raise CaptureError("Rendering produced no result")
    return save_render_png(result, scene, color_mode)


@dataclass
class Render:
    """One render of the scene: what the artist sees (PNG), and where the objects asked for
    are seen (a float mask, top row first) when the engine has an Object Index pass."""

    png: bytes
    mask: np.ndarray | None = None
    key: tuple = ()


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


def _render_key(scene: bpy.types.Scene, masked: tuple[str, ...]) -> tuple:
    r, v = scene.render, scene.view_settings
    return (_Changes.count, bpy.data.filepath, scene.frame_current, scene.camera.name if scene.camera else "",
            r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage, r.film_transparent,
            v.view_transform, v.look, v.exposure, v.gamma, scene.display_settings.display_device, masked)


def render(scene: bpy.types.Scene, mask_objects: list[bpy.types.Object] | None = None, reuse: bool = False) -> Render:
    """Render the scene once with its own engine and settings. With `mask_objects`, the same
    render's Object Index pass gives their mask (engines without that pass: a quick flat
    Workbench render instead). `reuse`: the last render, when nothing it depends on changed."""
    if scene.camera is None:
        raise CaptureError("The scene has no active camera to render from")
    masked = tuple(sorted(o.name for o in mask_objects or ()))
    _flush_changes(scene)
    last = _last.get(scene.name)
    if reuse and last is not None and last.key == _render_key(scene, masked):
        return last
    if mask_objects is not None and scene.render.engine in INDEX_PASS_ENGINES:
        result = _render_with_index(scene, mask_objects)
    else:
        result = Render(_render_to_png(scene))
        if mask_objects is not None:
            result.mask = object_mask(scene, mask_objects)
    _flush_changes(scene)  # our own temporary changes (pass indices…) are put back by now
    result.key = _render_key(scene, masked)
    _last[scene.name] = result
    return result


def _render_with_index(scene: bpy.types.Scene, objects: list[bpy.types.Object]) -> Render:
    wanted = {o.name for o in objects}
    settings: list[tuple[Any, str, Any]] = [(layer, "use_pass_object_index", True) for layer in scene.view_layers]
    settings += [(o, "pass_index", 1 if o.name in wanted else 0) for o in scene.objects]
    with temporarily(*settings):
        data = _render_to_png(scene)
        result = bpy.data.images["Render Result"]
        with temporarily(*_exr_settings(scene)), _temp_png(".exr") as path:
            result.save_render(filepath=path, scene=scene)
            with open(path, "rb") as f:
                index = render_files.find_pass(render_files.read_exr(f.read()), *INDEX_PASS_NAMES)
    if index is None:
        raise CaptureError("The render has no Object Index pass")
    return Render(data, (np.abs(index - 1.0) < 0.5).astype(np.float32))


def render_png(scene: bpy.types.Scene) -> bytes:
    """Render the scene with its own engine and settings; PNG bytes of what the artist sees."""
    return render(scene).png


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


def mask_png(mask: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    return png.encode_png(png.float_to_uint8(mask if size is None else _resize_nearest(mask, size)))


def object_mask_png(scene: bpy.types.Scene, objects: list[bpy.types.Object], size: tuple[int, int] | None = None) -> bytes:
    """PNG of `object_mask`, resized to `size` (width, height) to match the image it masks."""
    return mask_png(object_mask(scene, objects), size)


def object_mask(scene: bpy.types.Scene, objects: list[bpy.types.Object]) -> np.ndarray:
    """White where the given objects are visible from the camera, black elsewhere (occlusion by
    other objects included): a flat Workbench render with per-object colours."""
    if not objects:
        raise CaptureError("Select the objects to mask first")
    wanted = {o.name for o in objects}
    shading = scene.display.shading
    view = scene.view_settings
    settings: list[tuple[Any, str, Any]] = [
        (scene.render, "engine", "BLENDER_WORKBENCH"),
        (scene.render, "film_transparent", True),
        (shading, "light", "FLAT"),
        (shading, "color_type", "OBJECT"),
        (shading, "show_object_outline", False),
        (shading, "show_cavity", False),
        (shading, "show_shadows", False),
        (shading, "show_xray", False),
        (view, "view_transform", "Standard"),
        (view, "look", "None"),
        (view, "exposure", 0.0),
        (view, "gamma", 1.0),
    ]
    for obj in scene.objects:
        settings.append((obj, "color", (1.0, 1.0, 1.0, 1.0) if obj.name in wanted else (0.0, 0.0, 0.0, 1.0)))
    with temporarily(*settings):
        data = _render_to_png(scene, color_mode="RGBA")
    with _temp_png() as path:
        with open(path, "wb") as f:
            f.write(data)
        pixels = _load_png_pixels(path)
    return pixels[:, :, 0] * pixels[:, :, 3]


def painted_mask_png(mask_image: bpy.types.Image, size: tuple[int, int]) -> bytes:
    """A painted mask image (white = repaint), resized to `size` (width, height) if needed."""
    pixels = image_pixels(mask_image)
    mask = pixels[:, :, :3].max(axis=2) * pixels[:, :, 3]
    return png.encode_png(png.float_to_uint8(_resize_nearest(mask, size)))


def alpha_mask_png(image: bpy.types.Image) -> bytes:
    """Erased (transparent) parts of an image become the area to repaint."""
    pixels = image_pixels(image)
    return png.encode_png(png.float_to_uint8(1.0 - pixels[:, :, 3]))


def _resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    if values.shape[1] == width and values.shape[0] == height:
        return values
    rows = (np.arange(height) * values.shape[0] // height).clip(0, values.shape[0] - 1)
    cols = (np.arange(width) * values.shape[1] // width).clip(0, values.shape[1] - 1)
    return values[rows][:, cols]
