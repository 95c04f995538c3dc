"""What a Generate uploads, captured from the scene: one render (its colour and exact passes),
or an existing image/viewport plus the passes the controls and the selected-objects mask need.

The main thread only renders and reads the render back (arrays); the PNGs and control maps are
made on the worker thread (`conditioning.build_uploads`), and the job is sent when they are ready
(`controller.submit(..., pending=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bpy

from . import capture, conditioning, control_ui, png
from .worker import Task, worker


@dataclass
class Inputs:
    """A Generate's uploads: those ready now (PNG bytes by role) and the worker task making the
    rest (None when there is nothing to make)."""

    images: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    pending: Task | None = None
    note: str = ""
    renders: int = 0


def round8(value: int) -> int:
    return max(64, (int(value) // 8) * 8)


def render_size(scene: bpy.types.Scene) -> tuple[int, int]:
    scale = scene.render.resolution_percentage / 100.0
    return max(1, round(scene.render.resolution_x * scale)), max(1, round(scene.render.resolution_y * scale))


def outpaint_overscan(settings: Any, scene: bpy.types.Scene) -> tuple[int, int, int, int]:
    """The outpaint extents (pixels of the generated image) in pixels of the scene's render, so
    the passes cover the extended canvas."""
    width, height = render_size(scene)
    out_w, out_h = (round8(width), round8(height)) if settings.size_mode == "RENDER" else (round8(settings.width), round8(settings.height))
    sx, sy = width / out_w, height / out_h
    return (round(settings.outpaint_left * sx), round(settings.outpaint_top * sy),
            round(settings.outpaint_right * sx), round(settings.outpaint_bottom * sy))


def capture_inputs(context: bpy.types.Context, settings: Any, mode: str, request: dict[str, Any],
                   specs: list[conditioning.ControlSpec], selected: list[bpy.types.Object]) -> Inputs:
    """Capture what `request` needs (its width/height follow the source in Render size mode)."""
    scene = context.scene
    object_mask = mode == "inpaint" and settings.mask_source == "OBJECTS"
    wanted = conditioning.passes_needed(specs) | ({"object_index"} if object_mask else set())
    overscan = outpaint_overscan(settings, scene) if mode == "outpaint" and specs else None
    out = Inputs()
    job = conditioning.Capture(mask_objects=tuple(o.name_full for o in selected) if object_mask else None)
    if mode in control_ui.IMAGE_MODES:
        if settings.source == "RENDER":
            rendered = capture.render(scene, passes=wanted, overscan=overscan, reuse=settings.reuse_render)
            job.color, job.passes = rendered.color, rendered.passes
            size = rendered.size
            out.renders = rendered.renders
        else:
            if settings.source == "VIEWPORT":
                init, out.note = capture.viewport_png(context)
            else:
                init = capture.image_png(settings.source_image, scene)
            out.images["init"] = (init, "png")
            size = png.png_size(init)
            if wanted:
                rendered = capture.render(scene, color=False, passes=wanted, overscan=overscan)
                job.passes, out.renders = rendered.passes, rendered.renders
        job.mask_size = size
        if settings.size_mode == "RENDER":
            request["width"], request["height"] = round8(size[0]), round8(size[1])
        if mode == "inpaint" and not object_mask:
            if settings.mask_source == "IMAGE":
                out.images["mask"] = (capture.painted_mask_png(settings.mask_image, size), "png")
            else:
                out.images["mask"] = (capture.alpha_mask_png(settings.source_image), "png")
    elif specs:  # text to image shaped by the scene: the passes at the image's size
        rendered = capture.render(scene, color=False, passes=wanted, size=(request["width"], request["height"]))
        job.passes, out.renders = rendered.passes, rendered.renders
    if job.color is not None or job.passes is not None:
        out.pending = worker.submit(conditioning.build_uploads, job, specs, label="scene uploads")
    return out
