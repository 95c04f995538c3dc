"""Main-thread side of the add-on: jobs in flight and the drain step that applies what the
network thread received (progress, previews, results, errors) to Blender data.

`drain()` is called by a `bpy.app.timers` timer in the UI (and directly by tests, since timers
never fire in bpy-as-a-module). One tick does cheap event handling plus at most one of the two
halves of a preview (decode, or copy into the preview image), to stay within a few milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import bpy

from . import apply, png, properties, wire
from .backend_process import LocalBackend, backend_command, should_start
from .connection import CLOSED, CONNECTED, INCOMPATIBLE, UNAUTHORIZED, Connection, Incoming

ADDON_ID = __package__ or "latentbridge"
TIMER_INTERVAL_S = 0.05
INPUT_PROPS = {"init": "latentbridge_init", "mask": "latentbridge_mask"}  # result → its packed inputs


@dataclass
class JobContext:
    """What the add-on remembers about one submitted job."""

    client_ref: str
    scene: str
    request: dict[str, Any]
    texture: bool = False
    targets: list[str] = field(default_factory=list)
    job_id: str | None = None
    state: str = "submitted"  # submitted, queued, running, done, cancelled, failed
    seed: int | None = None
    inputs: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # role → uploaded bytes
    input_images: dict[str, str] = field(default_factory=dict)  # role → packed image name
    results: dict[int, str] = field(default_factory=dict)  # index → image name
    result_events: dict[int, dict[str, Any]] = field(default_factory=dict)
    previews: int = 0
    error: str = ""
    submitted_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")


class Controller:
    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.jobs: dict[str, JobContext] = {}  # client_ref → job
        self.writer = apply.PreviewWriter()
        self._writer_job: str | None = None
        self._pending_previews: dict[str, Incoming] = {}  # client_ref → newest undecoded preview
        self.messages: list[tuple[str, str]] = []  # (level, text) reported, newest last
        self.models: list[str] = []
        self.backend = LocalBackend()
        self.tick_ms: list[float] = []  # recent drain durations, for the UI and tests
        self.conn_state = "IDLE"
        self.conn_status = "Not connected"

    # ------------------------------------------------------------------ connection

    def connect(self, server_url: str, token: str = "", force: bool = False) -> Connection:
        """Reuse the live connection unless forced, or its address or token changed, or it gave
        up (wrong token, incompatible server)."""
        conn = self.connection
        usable = conn is not None and conn.alive and conn.state not in (UNAUTHORIZED, INCOMPATIBLE, CLOSED)
        if not force and usable and conn.url == wire.ws_url(server_url) and conn.token == token:
            return conn
        self.disconnect()
        self.connection = Connection(server_url, token, client_name=f"blender {bpy.app.version_string}")
        self.connection.start()
        return self.connection

    def connect_from_prefs(self, context: bpy.types.Context, force: bool = False) -> Connection:
        prefs = preferences(context)
        if prefs is None:
            return self.connect(f"http://127.0.0.1:{wire.DEFAULT_PORT}", force=force)
        if prefs.start_local and should_start(prefs.server_url, self.backend.running):
            self.backend.start(backend_command(prefs.backend_command, prefs.python_path, prefs.server_url))
        return self.connect(prefs.server_url, prefs.token, force=force)

    def disconnect(self) -> None:
        if self.connection is not None:
            self.connection.stop()
            self.connection = None
        self.conn_state, self.conn_status = "IDLE", "Not connected"

    def reset(self) -> None:
        """Forget every job and message (a new file, or a test starting afresh)."""
        self.disconnect()
        self.writer.discard()
        self.jobs.clear()
        self._pending_previews.clear()
        self.messages.clear()
        self.tick_ms.clear()

    def shutdown(self) -> None:
        self.disconnect()
        self.writer.discard()
        self.backend.stop()

    # ------------------------------------------------------------------ jobs

    def submit(
        self,
        context: bpy.types.Context,
        request: dict[str, Any],
        images: dict[str, tuple[bytes, str]],
        texture: bool = False,
        targets: list[str] | None = None,
    ) -> JobContext:
        conn = self.connect_from_prefs(context)
        # A server on this machine sends raw previews: no decoding on Blender's main thread.
        request["preview"] = {**request.get("preview", {}), "format": "rgb" if wire.is_loopback(conn.url) else "jpeg"}
        job = JobContext(conn.new_ref(), context.scene.name, request, texture, list(targets or []), inputs=dict(images))
        self.jobs[job.client_ref] = job
        conn.submit(request, images, client_ref=job.client_ref)
        settings = context.scene.latentbridge
        settings.running = True
        settings.error = ""
        settings.progress, settings.step, settings.total, settings.eta = 0.0, 0, request.get("steps", 0), -1.0
        settings.status = "Submitted…" if conn.state == CONNECTED else f"Waiting for the server: {conn.status}"
        return job

    def cancel(self, job: JobContext) -> bool:
        if job.finished or self.connection is None:
            return False
        if job.job_id is None:
            # Not accepted yet: it will be cancelled as soon as the server names it.
            job.state = "cancel-pending"
            return True
        self.connection.cancel(job.job_id)
        return True

    def active_jobs(self) -> list[JobContext]:
        return [j for j in self.jobs.values() if not j.finished]

    def by_job_id(self, job_id: str | None) -> JobContext | None:
        if not job_id:
            return None
        return next((j for j in self.jobs.values() if j.job_id == job_id), None)

    # ------------------------------------------------------------------ drain

    def drain(self) -> float:
        """Apply what arrived; returns the tick's duration in ms (also kept in `tick_ms`)."""
        start = time.perf_counter()
        heavy = False
        if self.writer.busy:
            job = self.jobs.get(self._writer_job or "")
            if job is not None and not job.results and not job.finished:
                if self.writer.step() is not None:
                    job.previews += 1
            else:
                self.writer.discard()
            heavy = True
        if self.connection is not None:
            for item in self.connection.poll():
                self._handle(item)
        if not heavy and self._pending_previews:
            ref, item = self._pending_previews.popitem()
            job = self.jobs.get(ref)
            if job is not None and not job.finished and not job.results:
                target = apply.ensure_preview_image(item.header.get("width") or 64, item.header.get("height") or 64)
                if item.pixels is not None:
                    self.writer.begin_pixels(item.pixels, item.header["width"], item.header["height"], target)
                else:
                    self.writer.begin(item.data, item.header.get("format", "jpeg"), target)
                self._writer_job = ref
        elapsed = (time.perf_counter() - start) * 1000.0
        self.tick_ms = (self.tick_ms + [elapsed])[-200:]
        return elapsed

    def _handle(self, item: Incoming) -> None:
        if item.kind == "state":
            self._on_state(item.event["state"], item.event["status"])
        elif item.kind == "models":
            self.models = list(item.event.get("models", []))
            properties.set_model_names(self.models)
        elif item.kind == "preview":
            job = self.by_job_id(item.header.get("job_id"))
            if job is not None:
                self._pending_previews[job.client_ref] = item
        elif item.kind == "result":
            job = self.by_job_id(item.header.get("job_id"))
            if job is not None:
                self._on_result_bytes(job, item.header, item.data)
        elif item.kind == "event":
            self._on_event(item.event)

    def _on_state(self, state: str, status: str) -> None:
        self.conn_state, self.conn_status = state, status
        running = self.active_jobs()
        for job in running:
            settings = self._settings(job)
            if settings is not None and state != CONNECTED:
                settings.status = status
        if state == UNAUTHORIZED or (state == "RETRYING" and running):
            self.report("ERROR", status)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "hello":
            return
        if kind == "model":  # the server's model changed state (e.g. a first-run download)
            self._on_model(event["model"])
            return
        if kind == "accepted":
            job = self.jobs.get(event.get("client_ref") or "")
            if job is None:
                return
            pending_cancel = job.state == "cancel-pending"
            job.job_id, job.state = event["job_id"], "queued"
            if pending_cancel and self.connection is not None:
                self.connection.cancel(job.job_id)
            self._set_status(job, "Queued" + (f" (position {event['position']})" if event.get("position") else ""))
            return
        if kind == "error" and not event.get("job_id"):
            self._on_unowned_error(event)
            return
        job = self.by_job_id(event.get("job_id"))
        if job is None:
            return
        settings = self._settings(job)
        if kind == "started":
            job.state, job.seed = "running", event["seed"]
            self._set_status(job, f"Generating (seed {job.seed})…")
        elif kind == "progress":
            job.state = "running"
            if settings is not None:
                settings.step, settings.total = event["step"], event["total"]
                settings.progress = event["step"] / max(1, event["total"])
                settings.eta = -1.0 if event.get("eta_s") is None else float(event["eta_s"])
                settings.status = f"Step {event['step']}/{event['total']}"
        elif kind == "result":
            job.result_events[event["index"]] = event
        elif kind == "done":
            self._finish(job, "done", f"Done: {event['count']} image(s) in {event['elapsed_s']:.1f} s")
        elif kind == "cancelled":
            self._finish(job, "cancelled", "Cancelled")
        elif kind == "error":
            job.error = f"{event['message']} [{event['code']}]"
            self._finish(job, "failed", job.error, level="ERROR")
        elif kind == "status":
            self._on_status(job, event)

    def _on_model(self, model: dict[str, Any]) -> None:
        server = (self.connection.server_hello or {}).get("server", "server") if self.connection else "server"
        self.conn_status = f"Connected: {server}, {wire.model_summary(model)}"
        for job in self.active_jobs():  # a job waiting for the model says what it waits for
            settings = self._settings(job)
            if settings is not None and job.state in ("submitted", "queued"):
                settings.status = f"Waiting for the {wire.model_summary(model)}"
        if model.get("state") == "failed":
            self.report("ERROR", f"Latent Bridge: {wire.model_summary(model)}")

    def _on_status(self, job: JobContext, event: dict[str, Any]) -> None:
        """Reply to a re-attach: the job's state on the server."""
        state = event["state"]
        if state in ("queued", "running"):
            job.state = state
            self._set_status(job, f"Re-attached: {state}")
        elif state == "cancelled":
            self._finish(job, "cancelled", "Cancelled")
        elif state == "failed":
            err = event.get("error") or {}
            job.error = err.get("message", "failed on the server")
            self._finish(job, "failed", job.error, level="ERROR")
        elif state == "done" and len(job.results) >= max(1, event.get("result_count", 1)):
            self._finish(job, "done", "Done")

    def _on_unowned_error(self, event: dict[str, Any]) -> None:
        """An error naming no job: a submit the server refused (the oldest not yet accepted)."""
        job = next((j for j in self.jobs.values() if j.job_id is None and not j.finished), None)
        text = f"{event['message']} [{event['code']}]" + (f" (field {event['field']})" if event.get("field") else "")
        if job is None:
            self.report("ERROR", text)
            return
        job.error = text
        self._finish(job, "failed", text, level="ERROR")

    def _on_result_bytes(self, job: JobContext, header: dict[str, Any], data: bytes) -> None:
        index = header.get("index", 0)
        if index in job.results and job.results[index] in bpy.data.images:
            return  # re-sent after a re-attach
        event = job.result_events.get(index, {})
        seed = int(event.get("seed", job.seed if job.seed is not None else job.request.get("seed", 0)))
        request = event.get("request") or {**job.request, "seed": seed}
        width = int(event.get("width") or header.get("width") or request.get("width", 64))
        height = int(event.get("height") or header.get("height") or request.get("height", 64))
        name = f"LB {'texture' if job.texture else request.get('mode', 'image')} {seed}"
        image = apply.pack_png(data, name, width, height)
        apply.store_request(image, request, seed, job.job_id)
        for role, image_name in self._pack_inputs(job).items():
            image[INPUT_PROPS[role]] = image_name
        if job.texture:
            image["latentbridge_texture"] = True
        job.results[index] = image.name
        if self.writer.busy and self._writer_job == job.client_ref:
            self.writer.discard()
        self._pending_previews.pop(job.client_ref, None)
        if job.texture:
            apply.assign_texture([o for o in (bpy.data.objects.get(n) for n in job.targets) if o is not None], image)
        apply.show_in_image_editors(image, replace=tuple(job.results.values()))
        settings = self._settings(job)
        if settings is not None:
            settings.last_result = image.name
            settings.last_seed = min(seed, 2**31 - 1)
        _undo_push(f"Latent Bridge: {image.name}")

    def _pack_inputs(self, job: JobContext) -> dict[str, str]:
        """The job's uploaded images, packed once, so Regenerate can send exactly the same bytes."""
        for role, (data, fmt) in job.inputs.items():
            if role not in job.input_images and fmt == "png":
                width, height = png.png_size(data)
                packed = apply.pack_png(data, f"LB {role} {job.client_ref}", width, height)
                job.input_images[role] = packed.name
        return job.input_images

    def _finish(self, job: JobContext, state: str, text: str, level: str = "INFO") -> None:
        job.state, job.finished_at = state, time.monotonic()
        if self._writer_job == job.client_ref:
            self.writer.discard()
        self._pending_previews.pop(job.client_ref, None)
        settings = self._settings(job)
        if settings is not None:
            settings.status = text
            if level == "ERROR":
                settings.error = text
            settings.running = any(not j.finished and j.scene == job.scene for j in self.jobs.values())
            if state == "done":
                settings.progress = 1.0
        self.report(level, text)

    def _settings(self, job: JobContext) -> Any:
        scene = bpy.data.scenes.get(job.scene)
        return None if scene is None else scene.latentbridge

    def _set_status(self, job: JobContext, text: str) -> None:
        settings = self._settings(job)
        if settings is not None:
            settings.status = text

    def report(self, level: str, text: str) -> None:
        """To the Info log (through an operator's report, where there is a window) and the UI."""
        self.messages = (self.messages + [(level, text)])[-100:]
        try:
            bpy.ops.latentbridge.report_message(level=level, message=text)
        except (RuntimeError, AttributeError):
            print(f"Latent Bridge {level.lower()}: {text}")


def _undo_push(message: str) -> None:
    """An undo step for data created outside an operator (results arrive in a timer)."""
    if bpy.app.background:
        return
    try:
        bpy.ops.ed.undo_push(message=message)
    except RuntimeError:
        pass


def preferences(context: bpy.types.Context | None = None) -> Any:
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return None if addon is None else addon.preferences


controller = Controller()


def timer() -> float:
    """The UI's drain step; returns the delay until the next call."""
    controller.drain()
    if controller.active_jobs() or controller.writer.busy or controller._pending_previews:
        apply.redraw_all()
        return TIMER_INTERVAL_S
    return 0.25 if controller.connection is not None else 1.0
