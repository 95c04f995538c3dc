"""Live mode's captures (main thread, bpy): the fastest correct picture of what the artist sees.

- An offscreen draw of the 3D view (`gpu.types.GPUOffScreen.draw_view3d` with the view's own
  matrices) where Blender has a window and a GPU context: a few milliseconds, exactly the view.
- Otherwise (bpy as a module, background mode: no window, no GPU context) a reduced-size
  Workbench render of the scene camera at the live frame's size.
- With the scene controls (the Controls panel's depth, normal, line art, segmentation): ONE
  Cycles render of the camera gives the colour and the exact passes (passes.render_passes; the
  viewport has no exact depth to read), at the frame's size; the ControlNet maps are made from
  them on the worker thread (conditioning.ControlSpec.build_map, as a Generate does).

A server on this computer gets raw RGB parts (nothing to encode); others get PNG, encoded on the
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

from . import capture, conditioning, control_maps, control_ui, passes, png
from .worker import Task, worker

FALLBACK_NOTE = "No 3D view with a GPU context: live frames are Workbench renders of the camera"
_offscreen: dict[str, Any] = {}  # the reused GPUOffScreen ("buffer", "size")


@dataclass
class Frame:
    parts: dict[str, bytes]  # role → bytes (init, control.<i>)
    format: str  # rgb or png
    width: int
    height: int
    note: str = ""


def _round8(value: float) -> int:
    return max(64, int(round(value / 8.0)) * 8)


def frame_size(scene: bpy.types.Scene, longest: int, context: bpy.types.Context | None = None) -> tuple[int, int]:
    """The live frames' size: the 3D view's aspect where it is drawn, else the render's; the
    longest side `longest`, both sides multiples of 8."""
    view = _view3d(context or bpy.context)
    if view is not None and not _controlled(scene):
        width, height = view[1].width, view[1].height
    else:
        pct = scene.render.resolution_percentage / 100.0
        width, height = scene.render.resolution_x * pct, scene.render.resolution_y * pct
    scale = longest / max(width, height, 1)
    return _round8(width * scale), _round8(height * scale)


def _view3d(context: bpy.types.Context) -> tuple[Any, Any, Any] | None:
    """(area, region, space) of the first 3D view with a drawable region, or None (background)."""
    if bpy.app.background or context.window_manager is None:
        return None
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type != "VIEW_3D":
                continue
            region = next((r for r in area.regions if r.type == "WINDOW" and r.width > 0 and r.height > 0), None)
            if region is not None:
                return area, region, area.spaces.active
    return None


def _controlled(scene: bpy.types.Scene) -> bool:
    """Whether live frames carry scene controls (then they are renders of the camera)."""
    try:
        return bool(control_specs(scene))
    except capture.CaptureError:
        return True  # ticked, only badly set: the start reports why


def needs_camera(context: bpy.types.Context, scene: bpy.types.Scene) -> bool:
    """Whether captures render the scene camera (no 3D view to draw, or scene controls)."""
    return _controlled(scene) or _view3d(context) is None


def view_key(context: bpy.types.Context) -> tuple:
    """What the 3D views show (matrices and sizes): a change means a new picture. () without views."""
    if bpy.app.background or context.window_manager is None:
        return ()
    key = []
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                space = area.spaces.active
                r3d = space.region_3d
                key.append((area.width, area.height, r3d.view_perspective,
                            tuple(round(v, 5) for row in r3d.view_matrix for v in row),
                            tuple(round(v, 5) for row in r3d.window_matrix for v in row), space.shading.type))
    return tuple(key)


def changes_picture(depsgraph: Any) -> bool:
    return capture.changes_picture(depsgraph)


def control_specs(scene: bpy.types.Scene) -> list[conditioning.ControlSpec]:
    """The scene controls (the Controls panel's ticked units) live frames carry, when the Live
    panel's Scene Controls is on; raises CaptureError on settings that cannot make a request."""
    if not scene.latentbridge_live.use_controls:
        return []
    return control_ui.scene_specs(scene, "img2img")


def grab(context: bpy.types.Context, scene: bpy.types.Scene, live: Any, raw: bool) -> Frame | Task:
    """One live frame of the scene as the artist sees it (see the module docstring): ready, or a
    worker task that finishes it (control maps, PNG encoding) off the main thread."""
    width, height = frame_size(scene, live.size, context)
    specs = control_specs(scene)
    if specs:
        return _with_controls(scene, live, specs, width, height, raw)
    view = _view3d(context)
    if view is not None:
        try:
            rgb = _draw_view(context, scene, view, width, height)
        except Exception as exc:  # noqa: BLE001 - a GPU context that cannot draw: fall back, say why
            note = f"The 3D view could not be drawn offscreen ({exc}): live frames are Workbench renders"
            return _workbench(scene, width, height, note)
        if raw:
            return _frame({"init": rgb}, width, height, raw)
        return worker.submit(_frame, {"init": rgb}, width, height, raw, label="live frame")
    return _workbench(scene, width, height, FALLBACK_NOTE)


def _frame(arrays: dict[str, np.ndarray], width: int, height: int, raw: bool, note: str = "") -> Frame:
    if raw:
        return Frame({role: np.ascontiguousarray(a).tobytes() for role, a in arrays.items()}, "rgb", width, height, note)
    return Frame({role: png.encode_png(a, level=1) for role, a in arrays.items()}, "png", width, height, note)


def _workbench(scene: bpy.types.Scene, width: int, height: int, note: str) -> Frame:
    """A solid-shaded render of the camera at the frame's size (PNG straight from Blender)."""
    render = scene.render
    with capture.temporarily((render, "resolution_x", width), (render, "resolution_y", height),
                             (render, "resolution_percentage", 100)):
        data = capture.workbench_png(scene)
    return Frame({"init": data}, "png", width, height, note)


CONTROLS_NOTE = "Scene controls: frames are Cycles renders of the camera (colour and passes in one)"


def _with_controls(scene: bpy.types.Scene, live: Any, specs: list[conditioning.ControlSpec], width: int, height: int,
                   raw: bool) -> Task:
    """ONE render of the camera on the main thread (the colour unless Controls Only, and the
    passes the maps need); the maps and the parts are made on the worker thread."""
    wanted = conditioning.passes_needed(specs) | (set() if live.controls_only else {"color"})
    pass_set = passes.render_passes(scene, wanted, (width, height))
    color = None if live.controls_only else pass_set.arrays.pop("color")
    return worker.submit(_controlled_frame, color, pass_set, specs, width, height, raw, label="live control maps")


def _controlled_frame(color: np.ndarray | None, pass_set: control_maps.PassSet, specs: list[conditioning.ControlSpec],
                      width: int, height: int, raw: bool) -> Frame:
    """Worker thread (no bpy): the frame's parts from one render's colour and passes."""
    arrays: dict[str, np.ndarray] = {}
    if color is not None:
        arrays["init"] = control_maps.color_rgb8(color)
    for i, spec in enumerate(specs):
        arrays[f"control.{i}"] = spec.build_map(pass_set)
    return _frame(arrays, width, height, raw, note=CONTROLS_NOTE)


def _draw_view(context: bpy.types.Context, scene: bpy.types.Scene, view: tuple[Any, Any, Any], width: int,
               height: int) -> np.ndarray:
    """The 3D view drawn offscreen at width x height with its own matrices: uint8 RGB, top row first."""
    import gpu

    _area, region, space = view
    offscreen = _offscreen.get("buffer")
    if offscreen is None or _offscreen.get("size") != (width, height):
        free_offscreen()
        offscreen = gpu.types.GPUOffScreen(width, height)
        _offscreen.update(buffer=offscreen, size=(width, height))
    r3d = space.region_3d
    offscreen.draw_view3d(scene, context.view_layer, space, region, r3d.view_matrix, r3d.window_matrix,
                          do_color_management=True)
    buffer = offscreen.texture_color.read()
    pixels = np.asarray(buffer)
    if pixels.dtype != np.uint8:  # a float texture: 0..1
        pixels = (np.clip(pixels.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return pixels.reshape(height, width, 4)[::-1, :, :3]


def free_offscreen() -> None:
    buffer = _offscreen.pop("buffer", None)
    _offscreen.pop("size", None)
    if buffer is not None:
        buffer.free()


# ------------------------------------------------------------------ the viewport overlay


def overlay(state: Any, on: bool, image_name: str) -> None:
    """Draw the newest result over the 3D views (a POST_PIXEL draw handler), or stop drawing it."""
    if not on or bpy.app.background:
        if state.overlay is not None:
            bpy.types.SpaceView3D.draw_handler_remove(state.overlay, "WINDOW")
            state.overlay = None
        if not on:
            free_offscreen()
        return
    if state.overlay is None:
        state.overlay = bpy.types.SpaceView3D.draw_handler_add(_draw_overlay, (image_name,), "WINDOW", "POST_PIXEL")


def _draw_overlay(image_name: str) -> None:
    import gpu
    from gpu_extras.presets import draw_texture_2d

    image = bpy.data.images.get(image_name)
    region = bpy.context.region
    if image is None or region is None or not image.size[0]:
        return
    scale = min(region.width / image.size[0], region.height / image.size[1])
    width, height = image.size[0] * scale, image.size[1] * scale
    gpu.state.blend_set("ALPHA")
    draw_texture_2d(gpu.texture.from_image(image), ((region.width - width) / 2, (region.height - height) / 2),
                    width, height)
    gpu.state.blend_set("NONE")
