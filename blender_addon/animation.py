"""Animation: img2img of every frame of a range from the render, with one fixed seed.

Frames run one after the other: set the frame, render it, send it (optionally blended with the
previous frame's result, for temporal consistency), write the result as `<scene>_####.png` in
the frames folder (next to the .blend by default) and, on request, pack it. Cancel stops at once
and keeps every finished frame; Resume starts again at the first frame of the range whose file
is missing. The frame is rendered on the main thread (like any render); everything else waits
on the network without blocking Blender.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import bpy
import numpy as np

from . import apply, capture, conditioning, control_ui, png, render_files
from .controller import ConnectRefused, JobContext, controller
from .worker import Task, worker


class AnimationError(Exception):
    """An animation that cannot start (unsaved file, empty range…); shown as-is."""


@dataclass
class AnimationRun:
    scene: str
    frames: list[int]  # still to do, in order
    first: int
    last: int
    folder: str
    request: dict[str, Any]
    feed_previous: bool = False
    feed_weight: float = 0.5
    pack: bool = False
    epoch: int = 0
    specs: list[conditioning.ControlSpec] = field(default_factory=list)  # scene controls of every frame
    done: list[int] = field(default_factory=list)
    current: int | None = None
    job: JobContext | None = None
    state: str = "running"  # running, done, cancelled, failed
    message: str = ""
    _next_due: bool = True

    @property
    def total(self) -> int:
        return self.last - self.first + 1

    @property
    def position(self) -> int:
        """1-based number of the frame being made, within the range."""
        return (self.current if self.current is not None else self.first) - self.first + 1


_runs: dict[str, AnimationRun] = {}  # scene name → its animation


def frame_path(folder: str, scene_name: str, frame: int) -> str:
    return os.path.join(folder, f"{bpy.path.clean_name(scene_name)}_{frame:04d}.png")


def frame_range(scene: bpy.types.Scene) -> tuple[int, int]:
    settings = scene.latentbridge
    if settings.anim_use_scene_range:
        return scene.frame_start, scene.frame_end
    return settings.anim_start, settings.anim_end


def output_folder(scene: bpy.types.Scene) -> str:
    folder = scene.latentbridge.anim_folder or "//latentbridge_frames/"
    if folder.startswith("//") and not bpy.data.filepath:
        raise AnimationError("Save the .blend first: the frames are written next to it (or pick an absolute Folder)")
    return os.path.normpath(bpy.path.abspath(folder))


def missing_frames(scene: bpy.types.Scene) -> list[int]:
    first, last = frame_range(scene)
    folder = output_folder(scene)
    return [f for f in range(first, last + 1) if not os.path.isfile(frame_path(folder, scene.name, f))]


def running(scene_name: str) -> AnimationRun | None:
    run = _runs.get(scene_name)
    return run if run is not None and run.state == "running" and run.epoch == controller.epoch else None


def frame_text(scene_name: str) -> str:
    run = running(scene_name)
    return "" if run is None else f"Frame {run.position}/{run.total}"


def start(context: bpy.types.Context, resume: bool = False) -> AnimationRun:
    """Start (or resume: only the missing frames) the scene's animation."""
    scene = context.scene
    settings = scene.latentbridge
    if running(scene.name) is not None:
        raise AnimationError("An animation is already running in this scene")
    if scene.camera is None:
        raise AnimationError("The scene has no active camera to render from")
    first, last = frame_range(scene)
    if last < first:
        raise AnimationError(f"The frame range {first}-{last} is empty")
    folder = output_folder(scene)
    frames = missing_frames(scene) if resume else list(range(first, last + 1))
    if not frames:
        raise AnimationError(f"Every frame of {first}-{last} is already in {folder}")
    specs = control_ui.scene_specs(scene, "img2img")
    control_ui.check_server(specs, "img2img")
    seed = settings.next_seed()  # one seed for every frame
    request = settings.build_request(scene, seed)
    request.update(mode="img2img", batch_size=1)
    request.pop("mask", None)
    request.pop("outpaint", None)
    conditioning.add_units(request, specs)
    os.makedirs(folder, exist_ok=True)
    run = AnimationRun(scene.name, frames, first, last, folder, request, settings.anim_feed_previous,
                       settings.anim_feed_weight, settings.anim_pack, controller.epoch, specs=specs)
    _runs[scene.name] = run
    settings.running, settings.error = True, ""
    settings.remember_prompt()
    _next_frame(run)
    return run


def cancel(scene_name: str) -> bool:
    run = running(scene_name)
    if run is None:
        return False
    run.state = "cancelled"
    if run.job is not None and not run.job.finished:
        controller.cancel(run.job)
    _end(run, f"Animation cancelled: {len(run.done)} frame(s) done; Resume continues at the first missing frame", "INFO")
    return True


def stop_all(reason: str) -> None:
    for run in [r for r in _runs.values() if r.state == "running"]:
        run.state = "cancelled"
        if run.job is not None and not run.job.finished:
            controller.cancel(run.job)
        controller.report("WARNING", f"Animation stopped ({reason}): {len(run.done)} frame(s) kept in {run.folder}")


def tick() -> None:
    """Called after each drain: start the next frame once the previous one is finished."""
    for run in list(_runs.values()):
        if run.state == "running" and run._next_due and run.epoch == controller.epoch:
            _next_frame(run)


def frame_images(scene: bpy.types.Scene, run: AnimationRun, frame: int) -> Task:
    """The uploads of one frame, made on the worker thread from ONE capture of its render: `init`
    is the frame's colour (blended with the previous frame's result when asked), `control.<i>`
    the maps of the scene controls from the same render's passes."""
    rendered = capture.render(scene, passes=conditioning.passes_needed(run.specs))
    job = conditioning.Capture(color=rendered.color, passes=rendered.passes)
    previous = frame_path(run.folder, run.scene, frame - 1)
    if run.feed_previous and run.feed_weight > 0 and os.path.isfile(previous):
        with open(previous, "rb") as f:
            job.previous, job.previous_weight = png_pixels(f.read()), run.feed_weight
    return worker.submit(conditioning.build_uploads, job, run.specs, label=f"frame {frame}")


def png_pixels(data: bytes) -> np.ndarray:
    """PNG bytes → float RGBA (height, width, 4), top row first, decoded by Blender."""
    image = apply.image_from_bytes(data, "png")
    try:
        return capture.image_pixels(image).copy()
    finally:
        bpy.data.images.remove(image)


def _next_frame(run: AnimationRun) -> None:
    run._next_due = False
    scene = bpy.data.scenes.get(run.scene)
    if scene is None:
        run.state = "failed"
        return
    if not run.frames:
        run.state = "done"
        _end(run, f"Animation done: {len(run.done)} frame(s) in {run.folder}", "INFO")
        return
    frame = run.frames.pop(0)
    run.current = frame
    scene.frame_set(frame)
    try:
        pending = frame_images(scene, run, frame)
        run.job = controller.submit(bpy.context, dict(run.request), {}, pack_inputs=False, on_result=_on_result,
                                    on_end=_on_end, scene=scene, pending=pending, on_prepared=control_ui.show_uploads)
    except (capture.CaptureError, ConnectRefused, render_files.RenderFileError) as exc:
        run.state = "failed"
        _end(run, f"Animation stopped at frame {frame}: {exc}", "ERROR")
        return
    scene.latentbridge.status = f"Frame {run.position}/{run.total}: submitted"


def _run_of(job: JobContext) -> AnimationRun | None:
    return next((r for r in _runs.values() if r.job is job), None)


def _on_result(job: JobContext, index: int, data: bytes) -> None:
    run = _run_of(job)
    if run is None or run.current is None:
        return
    path = frame_path(run.folder, run.scene, run.current)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a listed frame is always complete: Resume trusts the files
    job.results[index] = path
    if run.pack and run.epoch == controller.epoch:
        width, height = png.png_size(data)
        name = f"LB frame {run.scene} {run.current:04d}"
        old = bpy.data.images.get(name)
        if old is not None:
            bpy.data.images.remove(old)
        image = apply.pack_png(data, name, width, height)
        apply.store_request(image, job.result_events.get(index, {}).get("request") or job.request, int(job.request.get("seed", 0)), job.job_id)


def _on_end(job: JobContext) -> None:
    run = _run_of(job)
    if run is None or run.state != "running":
        return
    if job.state == "done" and job.results:
        run.done.append(run.current)
        run._next_due = True  # the next frame starts after this drain
        return
    run.state = "failed"
    _end(run, f"Animation stopped at frame {run.current}: {job.error or job.state}; Resume continues there", "ERROR")


def _end(run: AnimationRun, text: str, level: str) -> None:
    scene = bpy.data.scenes.get(run.scene)
    if scene is not None and run.epoch == controller.epoch:
        settings = scene.latentbridge
        settings.running = bool(controller.active_jobs(run.scene)) and run.state == "running"
        settings.status = text
        if level == "ERROR":
            settings.error = text
    controller.report(level, text)


controller.after_drain.append(tick)
