"""Project Texture: the selected meshes textured from several generated views, projected into
their UV maps, blended and baked seam-free (docs/projection.md, "The operator").

A run (`ProjectionRun`) goes through its views one after another, driven from the add-on's drain
step (`tick`, after each drain, as animations are): the UV render of every view (one render
session: the one main-thread block, like any render), then per view — its control maps and, for
consistent views, the init image and mask of what earlier views painted (worker thread), the job
(network), the result decoded (two short main-thread ticks), its projection into every object's
texture (worker thread) and the partial texture shown on the object (one `foreach_set`). Then the
finish (fill, margins) on the worker, the UV-space inpaint of unseen texels through the backend
when asked, the PNGs (worker), and on the main thread: packed, wired into the material, the recipe
stored. Cancel stops between views and finishes the texture from the views done.

The recipe (`Plan.recipe()`, stored on every result image as `latentbridge_projection`) holds
the cameras, sizes, options, control units and every view's request, so Regenerate repeats the run
exactly: same UV renders, same inputs, same seeds — the same pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import bpy

from . import apply, capture, texture_views, uv_render
from .conditioning import ControlSpec
from .controller import ConnectRefused, JobContext, controller
from .multiview import TextureBake, split_views
from .views import ProjectionError, ViewCamera
from .worker import Task, TaskCancelled, worker

PROJECTION_PROP = "latentbridge_projection"
PREVIEW_PREFIX = "Latent Bridge Projection"
RECIPE_VERSION = 1
FILL_MODES = ("NEIGHBOURS", "INPAINT")


class ProjectTextureError(Exception):
    """A projection that cannot start (no meshes, no UVs, bad views…); shown as-is."""


@dataclass
class Plan:
    """Everything a run needs (and its recipe stores)."""

    objects: list[str]
    cameras: list[ViewCamera]  # at the generated view size
    view_size: tuple[int, int]
    texture_size: int
    requests: list[dict[str, Any]]  # per view (one for the grid): txt2img with the view's seed and prompt
    fill_request: dict[str, Any]  # the UV-space inpaint's request (seed + object number)
    specs: list[ControlSpec] = field(default_factory=list)
    supersample: int = 2
    margin: int = 16
    fill: str = "NEIGHBOURS"
    consistent: bool = True
    grid: bool = False
    seam_blend: int = 8
    strength: float = 1.0
    views_done: int | None = None  # a recipe of a cancelled run: only its first views

    def recipe(self, views_done: int) -> dict[str, Any]:
        return {
            "version": RECIPE_VERSION, "objects": list(self.objects), "views_done": views_done,
            "cameras": [texture_views.camera_to_dict(c) for c in self.cameras], "view_size": list(self.view_size),
            "texture_size": self.texture_size, "requests": self.requests, "fill_request": self.fill_request,
            "specs": [texture_views.spec_to_dict(s) for s in self.specs], "supersample": self.supersample,
            "margin": self.margin, "fill": self.fill, "consistent": self.consistent, "grid": self.grid,
            "seam_blend": self.seam_blend, "strength": self.strength,
        }

    @classmethod
    def from_recipe(cls, data: dict[str, Any]) -> "Plan":
        if not isinstance(data, dict) or data.get("version") != RECIPE_VERSION:
            raise ProjectTextureError("This image's projection recipe is from another version of the add-on")
        try:
            return cls(
                objects=list(data["objects"]), cameras=[texture_views.camera_from_dict(c) for c in data["cameras"]],
                view_size=tuple(data["view_size"]), texture_size=int(data["texture_size"]), requests=list(data["requests"]),
                fill_request=dict(data["fill_request"]), specs=[texture_views.spec_from_dict(s) for s in data["specs"]],
                supersample=int(data["supersample"]), margin=int(data["margin"]), fill=data["fill"],
                consistent=bool(data["consistent"]), grid=bool(data["grid"]), seam_blend=int(data["seam_blend"]),
                strength=float(data["strength"]), views_done=data.get("views_done"),
            )
        except (KeyError, TypeError, ValueError, ProjectionError) as exc:
            raise ProjectTextureError(f"This image's projection recipe is incomplete ({exc})") from None

    @property
    def view_count(self) -> int:
        count = len(self.cameras)
        return count if self.views_done is None or self.grid else min(count, int(self.views_done))


def view_request(base: dict[str, Any], mode: str, plan: Plan) -> dict[str, Any]:
    """A view's request as sent: txt2img, or inpaint of the unpainted part (consistent views)."""
    request = json.loads(json.dumps(base))
    if mode == "inpaint":
        request.update(mode="inpaint", strength=plan.strength, mask={"blur": plan.seam_blend // 2, "invert": False})
    return request


class ProjectionRun:
    def __init__(self, scene: bpy.types.Scene, plan: Plan, objects: list[bpy.types.Object]) -> None:
        self.scene, self.plan, self.epoch = scene.name, plan, controller.epoch
        self.objects = [o.name for o in objects]
        self.count = 1 if plan.grid else plan.view_count
        self.surfaces: list[Any] = []
        self.cameras: list[ViewCamera] = []
        self.bakes: list[TextureBake] = []
        self.state = "running"  # running, done, cancelled, failed
        self.phase = "islands"
        self.view = 0  # the next view to generate
        self.views_done = 0  # views projected (or found fully painted)
        self.task: Task | None = None
        self.job: JobContext | None = None
        self.result_png: bytes | None = None
        self.scratch: bpy.types.Image | None = None
        self.then: Callable[[Any], None] | None = None
        self.cancel_requested = False
        self.error = ""
        self.results: list[Any] = []
        self.fill_queue: list[int] = []
        self.generating = "view"  # what the job in flight makes: a "view", or a UV-space "fill"
        self.images: list[str] = []
        self.started_at = time.monotonic()
        self.render_s = 0.0
        self.longest_tick_s = 0.0
        self.longest_tick_stage = ""  # the stage whose result that tick handled
        self.ticks = 0
        self.worker_s: dict[str, float] = {}  # seconds on the worker thread by stage (inputs, projection, bake, …)

    # ------------------------------------------------------------------ driving

    def step(self) -> None:
        """One tick's worth of main-thread work: take a finished task's result, or run one short
        stage (a decode, a read). Never raises: the drain step's timer must live on."""
        start = time.perf_counter()
        phase = self.phase
        try:
            if self.task is not None:
                if self.task.done:
                    task, self.task = self.task, None
                    self._task_done(task)
            elif self.phase == "decode":
                self.scratch = apply.image_from_bytes(self.result_png or b"", "png")  # Blender decodes now
                self.phase = "read"
            elif self.phase == "read":
                scratch, self.scratch = self.scratch, None
                try:
                    image = capture.image_pixels(scratch).copy()
                finally:
                    bpy.data.images.remove(scratch)
                then, self.then = self.then, None
                then(image)
        except (capture.CaptureError, ProjectionError, ProjectTextureError, ConnectRefused, RuntimeError) as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug: reported with its type, the run ends cleanly
            self._fail(f"{type(exc).__name__}: {exc}")
        self.ticks += 1
        elapsed = time.perf_counter() - start
        if elapsed > self.longest_tick_s:
            self.longest_tick_s, self.longest_tick_stage = elapsed, phase


    def _task_done(self, task: Task) -> None:
        kind = task.label.split(" ")[-1] if task.label.startswith("view ") else task.label
        self.worker_s[kind] = self.worker_s.get(kind, 0.0) + task.seconds
        try:
            value = task.result()
        except TaskCancelled:
            value = None
        except Exception as exc:  # the worker's error, said whole (a bug shows its type)
            self._fail(f"{task.label}: {exc or type(exc).__name__}")
            return
        handler = getattr(self, f"_after_{self.phase}")
        handler(value)

    # ------------------------------------------------------------------ stages

    def _after_islands(self, _value: Any) -> None:
        if self.cancel_requested:
            self._end("cancelled", "Projection cancelled before any view")
            return
        self._next_view()

    def _next_view(self) -> None:
        if self.cancel_requested or self.view >= self.count:
            self._begin_finish()
            return
        p = self.plan
        self.phase = "inputs"
        self._status(f"View {self.view + 1}/{self.count}: preparing")
        if p.grid:
            self.task = worker.submit(texture_views.grid_inputs, self.surfaces, p.view_size, p.specs, label="grid inputs")
        else:
            self.task = worker.submit(texture_views.view_inputs, self.bakes, self.surfaces[self.view], p.view_size, p.specs,
                                      consistent=p.consistent, grow_px=p.seam_blend, label=f"view {self.view + 1} inputs")

    def _after_inputs(self, inputs: texture_views.ViewInputs | None) -> None:
        if inputs is None or self.cancel_requested:
            self._begin_finish()
            return
        self._show(inputs)
        if inputs.mode == "skip":  # everything this view sees is painted already
            self.views_done += 1
            self.view += 1
            self._next_view()
            return
        request = view_request(self.plan.requests[self.view], inputs.mode, self.plan)
        self._generate("view", request, inputs.images, self._project)

    def _project(self, image: Any) -> None:
        self.phase = "project"
        self._status(f"View {self.view + 1}/{self.count}: projecting")
        if self.plan.grid:
            self.task = worker.submit(_project_grid_steps, self.bakes, image, self.surfaces, self.cameras, label="projection")
        else:
            self.task = worker.submit(texture_views.project_view_steps, self.bakes, image, self.surfaces[self.view],
                                      self.cameras[self.view], label=f"view {self.view + 1} projection")

    def _after_project(self, live: list[Any] | None) -> None:
        for name, (flat, width, height) in zip(self.objects, live or []):
            apply.write_pixels(_preview_name(name), flat, width, height, float_buffer=True, colorspace="sRGB")
        self.views_done = len(self.cameras) if self.plan.grid else self.views_done + 1
        self.view += 1
        self._next_view()

    def _begin_finish(self) -> None:
        if self.views_done == 0:
            self._end("failed" if self.error else "cancelled", self.error or "Projection cancelled before any view was done")
            return
        self.phase = "finish"
        self._status(f"Finishing the texture from {self.views_done} view(s)")
        self.task = worker.submit(texture_views.finish_all_steps, self.bakes, margin_px=self.plan.margin, label="bake")

    def _after_finish(self, results: list[Any]) -> None:
        self.results = list(results)
        if self.plan.fill == "INPAINT" and not self.cancel_requested:
            self.fill_queue = [k for k, r in enumerate(self.results) if r.unseen.any()]
        self._next_fill()

    def _next_fill(self) -> None:
        if not self.fill_queue or self.cancel_requested:
            self.phase = "encode"
            self.task = worker.submit(_encode_all, self.results, label="encoding")
            return
        k = self.fill_queue[0]
        self.phase = "fill_inputs"
        self._status(f"Filling what no view saw on “{self.objects[k]}”")
        self.task = worker.submit(texture_views.fill_inputs, self.results[k], _fill_size(self.plan), label="fill inputs")

    def _after_fill_inputs(self, images: dict[str, tuple[bytes, str]] | None) -> None:
        if images is None or self.cancel_requested:
            self.fill_queue.clear()
            self._next_fill()
            return
        k = self.fill_queue[0]
        request = json.loads(json.dumps(self.plan.fill_request))
        request["seed"] = int(request["seed"]) + k
        self._generate("fill", request, images, self._merge_fill)

    def _merge_fill(self, image: Any) -> None:
        self.phase = "fill_merge"
        k = self.fill_queue[0]
        self.task = worker.submit(texture_views.merge_fill_steps, self.results[k], image, margin_px=self.plan.margin, label="fill")

    def _after_fill_merge(self, result: Any) -> None:
        k = self.fill_queue.pop(0)
        self.results[k] = result
        self._next_fill()

    def _after_encode(self, pngs: list[bytes]) -> None:
        self._store(pngs)

    # ------------------------------------------------------------------ jobs

    def _generate(self, what: str, request: dict[str, Any], images: dict[str, tuple[bytes, str]], then: Callable[[Any], None]) -> None:
        scene = bpy.data.scenes.get(self.scene)
        if scene is None:
            raise ProjectTextureError("The scene was removed")
        self.result_png, self.then, self.generating = None, then, what
        self.phase = "generating"
        self.job = controller.submit(bpy.context, request, images, pack_inputs=False, on_result=self._on_result,
                                     on_end=self._on_end, scene=scene)

    def _on_result(self, job: JobContext, index: int, data: bytes) -> None:
        job.results[index] = "projection view"
        self.result_png = data

    def _on_end(self, job: JobContext) -> None:
        if self.state != "running" or job is not self.job:
            return
        self.job = None
        if job.state == "done" and self.result_png is not None:
            self.phase = "decode"
            return
        if job.state != "cancelled":
            self.error = job.error or f"the job ended {job.state}"
            self.cancel_requested = True  # keep what is done
        self.then = None
        try:
            if self.generating == "view":
                self._begin_finish()
            else:  # the UV-space inpaint: the neighbour fill stays
                self.fill_queue.clear()
                self._next_fill()
        except Exception as exc:  # called from the drain step: never raise there
            self._end("failed", f"Projection failed: {type(exc).__name__}: {exc}", level="ERROR")

    # ------------------------------------------------------------------ the end

    def _store(self, pngs: list[bytes]) -> None:
        scene = bpy.data.scenes.get(self.scene)
        recipe = json.dumps(self.plan.recipe(self.views_done), sort_keys=True)
        first = self.plan.requests[0]
        size = self.plan.texture_size
        for name, data in zip(self.objects, pngs):
            obj = bpy.data.objects.get(name)
            image = apply.pack_png(data, f"LB projection {name}", size, size)
            apply.store_request(image, first, int(first.get("seed", 0)), None)
            image["latentbridge_mode"] = "projection"
            image[PROJECTION_PROP] = recipe
            image["latentbridge_texture"] = True
            image["latentbridge_targets"] = name
            image["latentbridge_views"] = self.views_done
            self.images.append(image.name)
            if obj is not None:
                apply.assign_texture([obj], image)
            preview = bpy.data.images.get(_preview_name(name))
            if preview is not None and preview.users == 0:
                bpy.data.images.remove(preview)
        if scene is not None and self.images:
            settings = scene.latentbridge
            settings.last_result = self.images[0]
            settings.last_seed = min(int(first.get("seed", 0)), 2**31 - 1)
            apply.show_in_image_editors(bpy.data.images[self.images[0]])
        seconds = time.monotonic() - self.started_at
        what = f"{len(self.images)} texture(s) of {size}² from {self.views_done} view(s) in {seconds:.1f} s"
        if self.error:
            self._end("failed", f"Projection stopped ({self.error}): {what}", level="ERROR")
        elif self.cancel_requested:
            self._end("cancelled", f"Projection cancelled: {what}")
        else:
            self._end("done", f"Projected {what}")
        _undo_push("Latent Bridge: Project Texture")

    def _fail(self, text: str) -> None:
        """A stage failed (nothing is in flight then): finish from the views done, or, in the
        UV-space inpaint, keep the neighbour fill; failing later ends the run."""
        self.error, self.cancel_requested = text, True
        if self.scratch is not None:
            bpy.data.images.remove(self.scratch)
            self.scratch = None
        try:
            if self.phase in ("islands", "inputs", "generating", "decode", "read", "project") and self.generating != "fill":
                self._begin_finish()
                return
            if self.phase in ("fill_inputs", "fill_merge", "generating", "decode", "read"):
                self.fill_queue.clear()
                self._next_fill()
                return
        except Exception as exc:
            text = f"{text}; then {type(exc).__name__}: {exc}"
        self._end("failed", f"Projection failed: {text}", level="ERROR")

    def _end(self, state: str, text: str, level: str = "INFO") -> None:
        self.state, self.phase = state, "ended"
        if self.scratch is not None:
            bpy.data.images.remove(self.scratch)
            self.scratch = None
        scene = bpy.data.scenes.get(self.scene)
        if scene is not None and self.epoch == controller.epoch:
            settings = scene.latentbridge
            settings.running = bool(controller.active_jobs(self.scene))
            settings.status = text
            settings.progress = 1.0 if state == "done" else settings.progress
            if level == "ERROR":
                settings.error = text
        controller.report(level, text)

    def _status(self, text: str) -> None:
        scene = bpy.data.scenes.get(self.scene)
        if scene is not None and self.epoch == controller.epoch:
            scene.latentbridge.status = text
            scene.latentbridge.progress = self.views_done / max(1, self.count)

    def _show(self, inputs: texture_views.ViewInputs) -> None:
        if inputs.shown is not None:
            from .control_images import show_pixels

            show_pixels(inputs.shown, *inputs.shown_size, kind=f"projection view {self.view + 1}")

    def cancel(self) -> None:
        """Stop between views: the view being generated is dropped, the texture is finished
        from the views done (a UV-space inpaint in progress is dropped: the neighbour fill stays)."""
        if self.cancel_requested or self.state != "running":
            return
        self.cancel_requested = True
        self._status("Cancelling: finishing the texture from the views done")
        if self.phase in ("islands", "inputs", "fill_inputs") and self.task is not None:
            self.task.cancel()
        if self.job is not None and not self.job.finished:
            controller.cancel(self.job)


def _project_grid_steps(bakes: list[TextureBake], image: Any, surfaces: list[Any], cameras: list[ViewCamera]):
    views = split_views(image[..., :3], len(surfaces))
    live: list[Any] = []
    for i, (view, surface, camera) in enumerate(zip(views, surfaces, cameras)):
        live = yield from texture_views.project_view_steps(bakes, view, surface, camera, live=i == len(views) - 1)
    return live


def _encode_all(results: list[Any]) -> list[bytes]:
    return [texture_views.encode_texture(r.texture) for r in results]


def _fill_size(plan: Plan) -> tuple[int, int]:
    """The UV-space inpaint's size, fixed when the plan was made (so a recipe repeats it)."""
    return int(plan.fill_request["width"]), int(plan.fill_request["height"])


def _preview_name(object_name: str) -> str:
    return f"{PREVIEW_PREFIX} {object_name}"


def _undo_push(message: str) -> None:
    if bpy.app.background:
        return
    try:
        bpy.ops.ed.undo_push(message=message)
    except RuntimeError:
        pass


# ---------------------------------------------------------------------------------- the runs

_runs: dict[str, ProjectionRun] = {}  # scene name → its projection


def running(scene_name: str) -> ProjectionRun | None:
    run = _runs.get(scene_name)
    return run if run is not None and run.state == "running" and run.epoch == controller.epoch else None


def last_run(scene_name: str) -> ProjectionRun | None:
    return _runs.get(scene_name)


def view_text(scene_name: str) -> str:
    run = running(scene_name)
    if run is None:
        return ""
    return "Grid of all views" if run.plan.grid else f"View {min(run.view + 1, run.count)}/{run.count}"


def start(context: bpy.types.Context, plan: Plan) -> ProjectionRun:
    """Begin a run: the UV render of every view now (a render: it blocks as F12 does), the rest
    in the drain step's ticks."""
    scene = context.scene
    if running(scene.name) is not None:
        raise ProjectTextureError("A projection is already running in this scene")
    objects = []
    for name in plan.objects:
        obj = bpy.data.objects.get(name)
        if obj is None or obj.type != "MESH":
            raise ProjectTextureError(f"The mesh “{name}” of this projection is not in the file")
        objects.append(obj)
    run = ProjectionRun(scene, plan, objects)
    width, height = plan.view_size
    ss = plan.supersample
    camera_objects = uv_render.ensure_view_cameras(scene, plan.cameras if plan.grid else plan.cameras[: run.count])
    started = time.perf_counter()
    for surface, camera in uv_render.render_uv_steps(scene, objects, camera_objects, width * ss, height * ss):
        run.surfaces.append(surface)
        run.cameras.append(camera)
    run.render_s = time.perf_counter() - started
    triangles = [uv_render.uv_triangles(o) for o in objects]
    size = plan.texture_size
    run.bakes = [TextureBake(size, size, uv_triangles=t) for t in triangles]
    for obj in objects:
        preview = _live_image(obj.name, size)
        apply.assign_texture([obj], preview)
    _runs[scene.name] = run
    settings = scene.latentbridge
    settings.running, settings.error, settings.progress = True, "", 0.0
    run._status(f"Preparing {len(objects)} texture(s) of {size}²")
    run.task = worker.submit(_islands_steps, run.bakes, label="UV islands")
    return run


def _islands_steps(bakes: list[TextureBake]):
    for bake in bakes:
        yield from bake.prepare_steps()


def _live_image(object_name: str, size: int) -> bpy.types.Image:
    """The float image the partial texture is shown in, grey to begin with (Blender fills it)."""
    name = _preview_name(object_name)
    side = size // -(-size // texture_views.LIVE_MAX)  # as texture_views.live_pixels shrinks it
    image = bpy.data.images.get(name)
    if image is not None:
        bpy.data.images.remove(image)
    image = bpy.data.images.new(name, side, side, alpha=True, float_buffer=True)
    image.colorspace_settings.name = "sRGB"
    image.generated_color = (texture_views.BACKGROUND,) * 3 + (1.0,)
    return image


def cancel(scene_name: str) -> bool:
    run = running(scene_name)
    if run is None or run.cancel_requested:
        return False
    run.cancel()
    return True


def stop_all(reason: str) -> None:
    """Another file is opened: runs stop (their views are lost with the file's data)."""
    for run in [r for r in _runs.values() if r.state == "running"]:
        if run.task is not None:
            run.task.cancel()
        if run.job is not None and not run.job.finished:
            controller.cancel(run.job)
        run.state = "cancelled"
        controller.report("WARNING", f"Projection stopped ({reason})")


def tick() -> None:
    """After each drain: the next stage of each running projection (never raises)."""
    for run in list(_runs.values()):
        if run.state == "running" and run.epoch == controller.epoch:
            run.step()


def is_projection(image: bpy.types.Image | None) -> bool:
    return image is not None and bool(image.get(PROJECTION_PROP))


def regenerate(context: bpy.types.Context, image: bpy.types.Image) -> ProjectionRun:
    """Run a stored projection again: same cameras, options, requests and seeds."""
    try:
        recipe = json.loads(image[PROJECTION_PROP])
    except (KeyError, ValueError):
        raise ProjectTextureError(f"“{image.name}” has no readable projection recipe") from None
    return start(context, Plan.from_recipe(recipe))


controller.after_drain.append(tick)
