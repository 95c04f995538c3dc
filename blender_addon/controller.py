"""Main-thread side of the add-on: jobs in flight and the drain step that applies what the
network thread received (progress, previews, results, errors) to Blender data.

`drain()` is called by a `bpy.app.timers` timer in the UI (and directly by tests, since timers
never fire in bpy-as-a-module). One tick does cheap event handling plus at most one of the two
halves of a preview (decode, or copy into the preview image), to stay within a few milliseconds.

A job belongs to the file it started in (`JobContext.epoch`): after File › New or Open its
results never touch the new file's data (see `results.py` and `session.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import bpy

from . import apply, properties, results, wire
from .backend_process import LocalBackend, backend_command, should_start
from .connection import CLOSED, CONNECTED, INCOMPATIBLE, LOST, RETRYING, UNAUTHORIZED, Connection, Incoming

ADDON_ID = __package__ or "latentbridge"
TIMER_INTERVAL_S = 0.05
LOST_TEXT = "lost: the backend restarted"


@dataclass
class JobContext:
    """What the add-on remembers about one submitted job."""

    client_ref: str
    scene: str
    request: dict[str, Any]
    texture: bool = False
    targets: list[str] = field(default_factory=list)
    job_id: str | None = None
    state: str = "submitted"  # preparing, submitted, queued, running, done, cancelled, failed
    seed: int | None = None
    inputs: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # role → uploaded bytes
    input_images: dict[str, str] = field(default_factory=dict)  # role → packed image name
    results: dict[int, str] = field(default_factory=dict)  # index → image name (or file, orphans)
    result_events: dict[int, dict[str, Any]] = field(default_factory=dict)
    previews: int = 0
    error: str = ""
    epoch: int = 0  # the file it belongs to (Controller.epoch when it was submitted)
    blend_file: str = ""  # that file's path ("" while unsaved)
    cancel_requested: bool = False
    # A job run by someone else (an animation): called with (job, index, png) instead of packing,
    # and with (job) when it ends.
    on_result: Callable[["JobContext", int, bytes], None] | None = None
    on_end: Callable[["JobContext"], None] | None = None
    # Uploads still being made on the worker thread (state "preparing"): a worker.Task whose
    # result is a conditioning.Uploads; the job is sent when it finishes, after `on_prepared`.
    pending: Any = None
    on_prepared: Callable[["JobContext", Any], None] | None = None
    pack_inputs: bool = True
    submitted_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")

    @property
    def batch_size(self) -> int:
        return int(self.request.get("batch_size", 1) or 1)

    def record(self) -> dict[str, Any]:
        """What a saved file keeps of a job that was still running (see session.py)."""
        return {"client_ref": self.client_ref, "job_id": self.job_id, "texture": self.texture,
                "targets": self.targets, "request": self.request, "input_images": self.input_images,
                "results": {str(k): v for k, v in self.results.items()}}


class Controller:
    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.jobs: dict[str, JobContext] = {}  # client_ref → job
        self.epoch = 0  # bumped when another file is loaded
        self.writer = apply.PreviewWriter()
        self._writer_job: str | None = None
        self._pending_previews: dict[str, Incoming] = {}  # client_ref → newest undecoded preview
        self.messages: list[tuple[str, str]] = []  # (level, text) reported, newest last
        self.models: list[str] = []
        self.controlnets: list[dict[str, str]] = []  # GET /api/v1/models → controlnets (name, kind[, type])
        self.loras: list[dict[str, str]] = []
        self.loras_note = ""
        self.backend = LocalBackend()
        self.tick_ms: list[float] = []  # recent drain durations, for the UI and tests
        self.conn_state = "IDLE"
        self.conn_status = "Not connected"
        self._outage_reported = False
        self.after_drain: list[Callable[[], None]] = []  # e.g. the animation's next frame
        self.handlers: dict[str, Callable[[Incoming], None]] = {}  # Incoming kind → handler (live mode's)

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
        """Connect to the preferences' server. Raises ConnectRefused when Blender's *Allow Online
        Access* is off and the server is beyond this computer."""
        prefs = preferences(context)
        url = prefs.server_url if prefs is not None else f"http://127.0.0.1:{wire.DEFAULT_PORT}"
        refusal = online_refusal(url)
        if refusal:
            raise ConnectRefused(refusal)
        if prefs is None:
            return self.connect(url, force=force)
        if prefs.start_local and should_start(prefs.server_url, self.backend.running):
            self.backend.start(backend_command(prefs.backend_command, prefs.python_path, prefs.server_url))
        return self.connect(prefs.server_url, prefs.token, force=force)

    def disconnect(self) -> None:
        if self.connection is not None:
            self.connection.stop()
            self.connection = None
        self.conn_state, self.conn_status = "IDLE", "Not connected"
        self._outage_reported = False

    def reset(self) -> None:
        """Forget every job and message (a test starting afresh)."""
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
        input_images: dict[str, str] | None = None,
        pack_inputs: bool = True,
        on_result: Callable[[JobContext, int, bytes], None] | None = None,
        on_end: Callable[[JobContext], None] | None = None,
        scene: bpy.types.Scene | None = None,
        pending: Any = None,
        on_prepared: Callable[[JobContext, Any], None] | None = None,
    ) -> JobContext:
        """Send a job (never waits on the network). Its inputs are packed now, so a file saved
        while it runs still has them when it is reopened (`input_images` reuses packed ones).

        `pending`: a worker.Task still making more uploads (control maps, PNGs of a render); the
        job waits as "preparing" and is sent by the drain step once the task is done (after
        `on_prepared(job, uploads)`), so the main thread never encodes."""
        scene = scene or context.scene
        conn = self.connect_from_prefs(context)
        # A server on this machine sends raw previews: no decoding on Blender's main thread.
        request["preview"] = {**request.get("preview", {}), "format": preview_format(conn.url)}
        job = JobContext(conn.new_ref(), scene.name, request, texture, list(targets or []), inputs=dict(images),
                         epoch=self.epoch, blend_file=bpy.data.filepath)
        job.input_images = dict(input_images or {})
        job.on_result, job.on_end = on_result, on_end
        job.pending, job.on_prepared, job.pack_inputs = pending, on_prepared, pack_inputs
        self.jobs[job.client_ref] = job
        settings = scene.latentbridge
        settings.running = True
        settings.error = ""
        settings.progress, settings.step, settings.total, settings.eta = 0.0, 0, request.get("steps", 0), -1.0
        if pending is not None:
            job.state = "preparing"
            settings.status = "Preparing the images…"
        else:
            self._send(job, conn)
        self.persist(job.scene)
        return job

    def _send(self, job: JobContext, conn: Connection) -> None:
        if job.pack_inputs:
            results.pack_inputs(job)
        job.state = "submitted"
        conn.submit(job.request, job.inputs, client_ref=job.client_ref)
        self._set_status(job, "Submitted…")

    def _send_prepared(self) -> None:
        """Send the first job whose uploads the worker finished (one per tick: packing its
        inputs is the only main-thread work left)."""
        job = next((j for j in self.jobs.values() if j.state == "preparing" and j.pending is not None and j.pending.done), None)
        if job is None:
            return
        task, job.pending = job.pending, None
        try:
            uploads = task.result()
        except Exception as exc:  # a capture the artist can fix (e.g. nothing to repaint), or a bug: said whole
            job.error = str(exc) or type(exc).__name__
            self._finish(job, "failed", job.error, level="ERROR")
            return
        if job.epoch != self.epoch or self.connection is None:
            self._finish(job, "failed", "Not sent: the connection was closed while its images were prepared", level="ERROR")
            return
        job.inputs.update(uploads.images)
        if job.on_prepared is not None:
            job.on_prepared(job, uploads)
        self._send(job, self.connection)
        self.persist(job.scene)

    def track(self, job: JobContext) -> None:
        """Follow a job known only by its id (a reopened file): attach to it on the server."""
        self.jobs[job.client_ref] = job
        if self.connection is not None and job.job_id:
            self.connection.attach(job.job_id)

    def cancel(self, job: JobContext) -> bool:
        """Cancel a job. Without a live connection it ends here at once (the server is told
        when it is back), so the artist is never stuck with a job nobody can stop."""
        if job.finished:
            return False
        job.cancel_requested = True
        if job.state == "preparing":  # never sent: nothing to tell the server
            if job.pending is not None:
                job.pending.cancel()
            self._finish(job, "cancelled", "Cancelled")
            return True
        connected = self.connection is not None and self.connection.state == CONNECTED
        if job.job_id is not None and self.connection is not None:
            self.connection.cancel(job.job_id)  # queued until the connection is back
        if not connected:
            self._finish(job, "cancelled", "Cancelled (the server is not reachable; it will be told when it is back)")
        return True

    def active_jobs(self, scene: str | None = None) -> list[JobContext]:
        return [j for j in self.jobs.values() if not j.finished and (scene is None or j.scene == scene) and j.epoch == self.epoch]

    def by_job_id(self, job_id: str | None) -> JobContext | None:
        if not job_id:
            return None
        found = [j for j in self.jobs.values() if j.job_id == job_id]
        return next((j for j in found if not j.finished), found[-1] if found else None)

    def persist(self, scene_name: str) -> None:
        """Keep the scene's record of running jobs current, so a file saved now reopens right."""
        scene = bpy.data.scenes.get(scene_name)
        if scene is not None:
            jobs = [j for j in self.active_jobs(scene_name) if j.on_result is None]  # not animation frames
            scene.latentbridge.store_jobs([j.record() for j in jobs])

    # ------------------------------------------------------------------ drain

    def drain(self) -> float:
        """Apply what arrived; returns the tick's duration in ms (also kept in `tick_ms`)."""
        start = time.perf_counter()
        heavy = False
        self._send_prepared()
        if self.writer.busy:
            job = self.jobs.get(self._writer_job or "")
            if job is not None and not job.results and not job.finished and job.epoch == self.epoch:
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
            if job is not None and not job.finished and not job.results and job.epoch == self.epoch:
                target = apply.ensure_preview_image(item.header.get("width") or 64, item.header.get("height") or 64)
                if item.pixels is not None:
                    self.writer.begin_pixels(item.pixels, item.header["width"], item.header["height"], target)
                else:
                    self.writer.begin(item.data, item.header.get("format", "jpeg"), target)
                self._writer_job = ref
        elapsed = (time.perf_counter() - start) * 1000.0
        self.tick_ms = (self.tick_ms + [elapsed])[-200:]
        for hook in self.after_drain:  # outside the measured tick: a frame render may follow
            hook()
        return elapsed

    def _handle(self, item: Incoming) -> None:
        handler = self.handlers.get(item.kind)
        if handler is not None:
            handler(item)
            return
        if item.kind == "state":
            self._on_state(item.event["state"], item.event["status"])
        elif item.kind == "models":
            self.models = list(item.event.get("models", []))
            self.controlnets = list(item.event.get("controlnets", []))
            properties.set_model_names(self.models)
        elif item.kind == "loras":
            self.loras = list(item.event.get("loras", []))
            self.loras_note = item.event.get("error", "")
            properties.set_lora_names([entry["name"] for entry in self.loras])
        elif item.kind == LOST:
            job = self.by_job_id(item.event.get("job_id"))
            if job is not None and not job.finished:
                job.error = LOST_TEXT
                self._finish(job, "failed", LOST_TEXT, level="ERROR")
        elif item.kind == "preview":
            job = self.by_job_id(item.header.get("job_id"))
            if job is not None and job.epoch == self.epoch and job.on_result is None:
                self._pending_previews[job.client_ref] = item
        elif item.kind == "result":
            job = self.by_job_id(item.header.get("job_id"))
            if job is not None and job.state not in ("cancelled", "failed"):
                index = item.header.get("index", 0)
                if job.on_result is not None:
                    if index not in job.results:
                        job.on_result(job, index, item.data)
                else:
                    results.apply_result(self, job, item.header, item.data)
        elif item.kind == "event":
            self._on_event(item.event)

    def _on_state(self, state: str, status: str) -> None:
        """Connection changes are shown live in the panels; they are reported once per outage."""
        previous = self.conn_state
        self.conn_state, self.conn_status = state, status
        if state == RETRYING and not self._outage_reported:
            self._outage_reported = True
            self.report("WARNING", status)
        elif state == CONNECTED and self._outage_reported:
            self._outage_reported = False
            self.report("INFO", "Reconnected to the server")
        elif state in (UNAUTHORIZED, INCOMPATIBLE) and previous != state:
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
            if job is None or job.job_id is not None:
                return
            job.job_id = event["job_id"]
            if job.cancel_requested and self.connection is not None:
                self.connection.cancel(job.job_id)
            if job.finished:
                return  # cancelled here while it was on its way
            job.state = "queued"
            self._set_status(job, "Queued" + (f" (position {event['position']})" if event.get("position") else ""))
            self.persist(job.scene)
            return
        if kind == "error" and not event.get("job_id"):
            self._on_unowned_error(event)
            return
        job = self.by_job_id(event.get("job_id"))
        if job is None or job.finished:
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
            if job.state in ("submitted", "queued"):
                self._set_status(job, f"Waiting for the {wire.model_summary(model)}")
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
        elif state == "done":
            if len(job.results) >= max(1, event.get("result_count", 1)):
                self._finish(job, "done", "Done")
        else:  # failed, or a state this add-on does not know (e.g. interrupted): the job is over
            err = event.get("error") or {}
            job.error = err.get("message") or f"{state} on the server"
            self._finish(job, "failed", job.error, level="ERROR")

    def _on_unowned_error(self, event: dict[str, Any]) -> None:
        """An error naming no job: a submit the server refused (the oldest not yet accepted)."""
        job = next((j for j in self.jobs.values() if j.job_id is None and not j.finished and j.state != "preparing"), None)
        text = f"{event['message']} [{event['code']}]" + (f" (field {event['field']})" if event.get("field") else "")
        if job is None:
            self.report("ERROR", text)
            return
        job.error = text
        self._finish(job, "failed", text, level="ERROR")

    def _finish(self, job: JobContext, state: str, text: str, level: str = "INFO") -> None:
        job.state, job.finished_at = state, time.monotonic()
        if self._writer_job == job.client_ref:
            self.writer.discard()
        self._pending_previews.pop(job.client_ref, None)
        if state != "done" and not job.results:
            results.drop_inputs(job)
        if job.on_end is not None:
            job.on_end(job)
            return
        if job.epoch != self.epoch:
            results.report_orphan_end(self, job, state, text)
            return
        settings = self._settings(job)
        if settings is not None:
            settings.status = text
            if level == "ERROR":
                settings.error = text
            settings.running = bool(self.active_jobs(job.scene))
            if state == "done":
                settings.progress = 1.0
            self.persist(job.scene)
        self.report(level, text)

    def _settings(self, job: JobContext) -> Any:
        if job.epoch != self.epoch:
            return None  # another file's scene of the same name is not this job's
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


def preview_format(ws_url: str) -> str:
    """Raw RGB previews from a server on this computer (nothing to decode), JPEG from others."""
    return "rgb" if wire.is_loopback(ws_url) else "jpeg"


class ConnectRefused(Exception):
    """Connecting is not allowed (Blender's online access is off for a remote server)."""


def online_refusal(server_url: str, online_access: bool | None = None) -> str:
    """Why connecting to `server_url` is not allowed, or "": a server beyond this computer needs
    Blender's *Allow Online Access* (Preferences › System › Network); loopback needs nothing."""
    if wire.is_loopback(server_url):
        return ""
    allowed = getattr(bpy.app, "online_access", True) if online_access is None else online_access
    if allowed:
        return ""
    return (f"{wire.http_url(server_url)} is beyond this computer and Blender's online access is off: "
            "enable Preferences › System › Network › Allow Online Access, or use a server on this computer")


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
    if controller.conn_state == RETRYING:
        apply.redraw_all()  # the reconnect countdown
    return 0.25 if controller.connection is not None else 1.0
