"""Live mode: while it is on, every change that alters the picture is captured and sent, and the
newest result is shown in the "Latent Bridge Live" image (and, on request, over the 3D view).

Main thread only (bpy). What changes the picture: depsgraph updates of real data (objects moved
or reshaped, materials, lights, world; not our own images), frame changes, and the 3D view
(polled: Blender has no handler for a view change). A change marks the scene dirty; the live
tick (a `bpy.app.timers` timer; tests call `tick()` directly, timers never fire in bpy as a module)
captures at most `max_fps` times a second and hands the frame to the network thread's
latest-wins outbox (live_link.py): one frame in flight, one pending, a new capture replaces the
pending one. Results are applied with one `foreach_set` (raw RGB from a server on this computer
arrives as Blender pixels already, converted on the network thread).

Capture (live_capture.py): an offscreen draw of the 3D view where Blender has a GPU context,
otherwise a reduced-size Workbench render of the camera; with depth/normal control, one Cycles
render gives the colour and the exact passes (passes.py, control_maps.py).

Settings changes (prompt, strength, preset, seed, units...) go to the server as `live_update`
without a restart; the server renders the last frame again with them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty

from . import apply, capture, conditioning, control_ui, live_capture, panels, wire
from .controller import controller, preview_format
from .worker import Task, TaskCancelled

LIVE_IMAGE = "Latent Bridge Live"
LIVE_FALLBACK_NOTE = live_capture.FALLBACK_NOTE
TICK_S = 0.01  # live tick interval (the capture itself is throttled by max_fps)
SETTINGS_CHECK_S = 0.1  # how often the tick compares the request with the session's
PRESETS = [
    ("turbo", "Turbo", "SD-Turbo / SDXL-Turbo models: 1 step, no guidance"),
    ("lcm", "LCM", "LCM models or an LCM-LoRA (add it under LoRAs): 4 steps"),
    ("lightning", "Lightning", "SDXL-Lightning (add its LoRA): 4 steps"),
    ("hyper", "Hyper-SD", "Hyper-SD N-step LoRAs (add the LoRA): 4 steps"),
    ("tcd", "TCD", "TCD LoRAs (add the LoRA): 4 steps"),
    ("custom", "Custom", "The Sampling panel's sampler, steps and guidance"),
]
DECODERS = [
    ("taesd", "Tiny (fast)", "The tiny autoencoder (TAESD) the server has for this model; its VAE otherwise"),
    ("vae", "Full VAE", "The model's own VAE: sharper, slower"),
]


def _changed(self: Any, context: Any) -> None:
    state.settings_dirty = True


class LATENTBRIDGE_PG_live(bpy.types.PropertyGroup):
    preset: EnumProperty(name="Preset", items=PRESETS, default="turbo", update=_changed,
                         description="Few-step settings the model (or its LoRA) was made for")
    steps: IntProperty(name="Steps", default=0, min=0, max=50, update=_changed,
                       description="Denoising steps per frame (0: the preset's)")
    strength: FloatProperty(name="Strength", default=0.5, min=0.05, max=1.0, update=_changed,
                            description="How much each frame changes (0 = kept, 1 = replaced)")
    size: IntProperty(name="Size", default=512, min=64, max=2048, step=64, update=_changed,
                      description="Longest side of the live frames in pixels")
    max_fps: IntProperty(name="Max FPS", default=30, min=1, max=120,
                         description="Captures per second at most (each costs the main thread a draw or render)")
    decoder: EnumProperty(name="Decoder", items=DECODERS, default="taesd", update=_changed,
                          description="Which autoencoder turns the frames into pixels and back")
    use_controls: BoolProperty(name="Scene Controls", default=True, update=_changed,
                               description="Steer live frames with the scene controls ticked in the Controls panel "
                               "(depth, normal, line art, segmentation); each frame is then a Cycles render of the camera")
    controls_only: BoolProperty(name="Controls Only", default=False, update=_changed,
                                description="Generate from the control maps alone, ignoring the scene's colours")
    show_overlay: BoolProperty(name="Show in Viewport", default=False,
                               description="Draw the newest result over the 3D view")
    running: BoolProperty(default=False, description="Live mode is on")
    status: bpy.props.StringProperty(default="", description="What live mode is doing")


@dataclass
class LiveState:
    """Main-thread state of live mode (one session for the whole add-on)."""

    scene: str = ""
    dirty: bool = True
    settings_dirty: bool = False
    last_capture: float = 0.0
    frame: int = 0
    request_key: str = ""
    frame_shape: tuple = ()  # size, mode and control kinds of the frames the session takes
    view_key: tuple = ()
    captured_at: dict[int, float] = field(default_factory=dict)  # frame → capture start (monotonic)
    capture_ms: dict[int, float] = field(default_factory=dict)  # frame → main-thread capture time
    build_ms: dict[int, float] = field(default_factory=dict)  # frame → worker time (maps, PNGs)
    building: tuple[int, Any] | None = None  # (frame, worker Task) of a frame being finished
    latencies: list[dict[str, float]] = field(default_factory=list)  # per applied result, newest last
    tick_ms: list[float] = field(default_factory=list)
    applied: int = 0
    note: str = ""  # why the capture used a fallback
    job_id: str | None = None
    overlay: Any = None
    settings_checked: float = 0.0  # when the request was last built and compared (monotonic)
    capturing: bool = False
    scene_frame: int | None = None  # the scene frame of the last capture


state = LiveState()


def running() -> bool:
    return state.scene != ""


# ------------------------------------------------------------------ start / stop


def live_request(scene: bpy.types.Scene, check: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request, live options) for the scene: the main settings' prompt, seed, model and LoRAs,
    the scene controls' units, live mode's strength and size. `check`: refuse (CaptureError)
    controls the connected server said it cannot run."""
    settings, live = scene.latentbridge, scene.latentbridge_live
    request = settings.build_request(scene, int(settings.seed))  # one seed for the session: a still scene stays still
    width, height = live_capture.frame_size(scene, live.size)
    specs = live_capture.control_specs(scene)
    request.update(width=width, height=height, batch_size=1, seamless="none", strength=round(live.strength, 4),
                   preview={"decoder": "none"}, mode="txt2img" if specs and live.controls_only else "img2img")
    for key in ("mask", "outpaint", "controls"):
        request.pop(key, None)
    conditioning.add_units(request, specs)
    if check:
        control_ui.check_server(specs, request["mode"])
    options = {"preset": live.preset, "decoder": live.decoder, "format": preview_format(_connection_url())}
    if live.steps:
        options["steps"] = live.steps
    return request, options


def _connection_url() -> str:
    conn = controller.connection
    return conn.url if conn is not None else "ws://127.0.0.1"


def start(context: bpy.types.Context) -> None:
    scene = context.scene
    conn = controller.connect_from_prefs(context)
    request, options = live_request(scene, check=True)  # bad settings: refused before anything starts
    state.__init__()
    state.scene = scene.name
    state.request_key = json.dumps(sort_keys=True, obj={"request": request, "live": options})
    state.frame_shape = _frame_shape(request)
    conn.live.start(request, options, client_ref="live")
    image = ensure_live_image(request["width"], request["height"])
    apply.show_in_image_editors(image, replace=(LIVE_IMAGE,))
    live = scene.latentbridge_live
    live.running, live.status = True, "Starting…"
    live_capture.overlay(state, live.show_overlay, LIVE_IMAGE)
    if not bpy.app.timers.is_registered(timer):
        bpy.app.timers.register(timer, first_interval=TICK_S)


def stop(reason: str = "Stopped") -> None:
    scene = bpy.data.scenes.get(state.scene) if state.scene else None
    if controller.connection is not None:
        controller.connection.live.stop()
    live_capture.overlay(state, False, LIVE_IMAGE)
    if state.building is not None:
        state.building[1].cancel()
        state.building = None
    state.scene = ""
    if scene is not None:
        scene.latentbridge_live.running = False
        scene.latentbridge_live.status = reason
    if bpy.app.timers.is_registered(timer):
        bpy.app.timers.unregister(timer)


def ensure_live_image(width: int, height: int) -> bpy.types.Image:
    return apply.ensure_preview_image(width, height, name=LIVE_IMAGE)


# ------------------------------------------------------------------ the tick


def tick() -> float:
    """One live step: apply what arrived, send changed settings, capture when something changed.
    Returns the tick's main-thread time in ms."""
    clock = time.perf_counter()
    scene = bpy.data.scenes.get(state.scene)
    conn = controller.connection
    if scene is None or conn is None:
        stop("Stopped: the scene or the connection went away")
        return 0.0
    controller.drain()  # results reach `on_result` through the controller's handlers
    if not running():
        return 0.0
    live = scene.latentbridge_live
    now = time.monotonic()
    # Any setting that feeds the request (the main panel's, the scene controls', live's own) may
    # change without telling us: the request is built again and compared, a few times a second.
    if state.settings_dirty or now - state.settings_checked >= SETTINGS_CHECK_S:
        state.settings_dirty, state.settings_checked = False, now
        try:
            request, options = live_request(scene, check=True)
        except capture.CaptureError as exc:  # e.g. a scene control the server's model cannot take
            _failed(str(exc))
            return 0.0
        key = json.dumps(sort_keys=True, obj={"request": request, "live": options})
        if key != state.request_key:
            state.request_key = key
            shape = _frame_shape(request)
            reshape = shape != state.frame_shape
            state.frame_shape = shape
            conn.live.update(request, options, client_ref="live", reshape=reshape)
            state.dirty |= reshape  # frames captured the old way cannot render: capture anew
        live_capture.overlay(state, live.show_overlay, LIVE_IMAGE)
    if _view_changed():
        state.dirty = True
    ready = _collect_built(conn)
    if not running():
        return 0.0
    if ready and state.dirty and conn.live.job_id is not None and now - state.last_capture >= 1.0 / max(1, live.max_fps) \
            and _worth_capturing(conn.live.pending_age()):
        state.dirty = False
        state.last_capture = now
        _capture(scene, conn)
    elapsed = (time.perf_counter() - clock) * 1000.0
    state.tick_ms = (state.tick_ms + [elapsed])[-1000:]
    return elapsed


def _worth_capturing(pending_age: float | None) -> bool:
    """A capture costs the main thread a draw or render. With the pending slot free it goes out
    next; a pending frame is replaced only once it is older than half a round trip (a fresher
    picture is then worth the capture), so captures no one would see are not made."""
    if pending_age is None:
        return True
    recent = [r["total"] for r in state.latencies[-8:]]
    return bool(recent) and pending_age * 1000.0 >= 0.5 * sorted(recent)[len(recent) // 2]


def _capture(scene: bpy.types.Scene, conn: Any) -> None:
    state.frame += 1
    started = time.perf_counter()
    state.captured_at[state.frame] = time.monotonic()
    state.capturing = True  # a render's own temporary changes are not changes of the scene
    state.scene_frame = scene.frame_current
    try:
        frame = live_capture.grab(bpy.context, scene, scene.latentbridge_live, raw=wire.is_loopback(conn.url))
        for layer in scene.view_layers:  # evaluate them now, while they are ignored
            layer.update()
    except capture.CaptureError as exc:
        _failed(str(exc))
        return
    finally:
        state.capturing = False
    state.capture_ms[state.frame] = (time.perf_counter() - started) * 1000.0
    for old in [f for f in state.captured_at if f < state.frame - 64]:
        for table in (state.captured_at, state.capture_ms, state.build_ms):
            table.pop(old, None)
    if isinstance(frame, Task):  # its maps / PNGs are made on the worker thread: offered when done
        state.building = (state.frame, frame)
    else:
        _offer(conn, state.frame, frame)


def _offer(conn: Any, number: int, frame: live_capture.Frame) -> None:
    state.note = frame.note
    conn.live.offer(number, frame.parts, frame.format, frame.width, frame.height)


def _collect_built(conn: Any) -> bool:
    """A frame the worker was finishing: offered once done. False while it is still being made
    (no new capture starts meanwhile: one frame in the making at a time)."""
    if state.building is None:
        return True
    number, task = state.building
    if not task.done:
        return False
    state.building = None
    try:
        frame = task.result()
    except TaskCancelled:
        return True
    except (capture.CaptureError, conditioning.ConditioningError, ValueError) as exc:
        _failed(str(exc))
        return True
    state.build_ms[number] = task.seconds * 1000.0
    _offer(conn, number, frame)
    return True


def _failed(message: str) -> None:
    stop(f"Stopped: {message}")
    controller.report("ERROR", f"Live: {message}")


def _frame_shape(request: dict[str, Any]) -> tuple:
    """What a frame carries: its size, whether it has the picture, its control maps."""
    return (request["width"], request["height"], request["mode"], tuple(c["type"] for c in request.get("controls", ())))


def _view_changed() -> bool:
    key = live_capture.view_key(bpy.context)
    if key != state.view_key:
        state.view_key = key
        return bool(key)
    return False


def timer() -> float | None:
    if not running():
        return None
    tick()
    return TICK_S


# ------------------------------------------------------------------ results


def on_live_event(item: Any) -> None:
    """`live_started` / `live_updated` / `live_stopped` / an error about the session."""
    event = item.event
    scene = bpy.data.scenes.get(state.scene)
    live = scene.latentbridge_live if scene is not None else None
    kind = event["type"]
    if kind == "live_started":
        state.job_id = event["job_id"]
        state.dirty = True  # the first frame goes out now
        if live is not None:
            live.status = f"Live ({event['decoder']} decoder, {event['request']['steps']} step schedule)"
    elif kind == "live_stopped" and event.get("job_id") == state.job_id:
        if event.get("reason") == "failed" and running():  # every frame would fail: say why, stop
            _failed(event.get("message") or "the server ended the session")
        elif event.get("reason") != "stopped" and running():
            state.job_id = None  # the connection dropped: the network thread starts it again
            if live is not None:
                live.status = f"Restarting ({event['reason']})…"
    elif kind == "error":
        text = f"{event['message']} [{event['code']}]"
        if live is not None:
            live.status = text
        if not event.get("job_id"):  # live_start refused: live mode cannot run with these settings
            stop(f"Stopped: {text}")
        controller.report("ERROR", f"Live: {text}")


def on_live_result(item: Any) -> None:
    header = item.header
    if not running() or header.get("job_id") != state.job_id:
        return
    width, height = header["width"], header["height"]
    image = ensure_live_image(width, height)
    clock = time.perf_counter()
    if item.pixels is not None:
        image.pixels.foreach_set(item.pixels)
    else:  # JPEG/PNG from a remote server: Blender decodes it
        scratch = apply.image_from_bytes(item.data, header.get("format", "jpeg"))
        try:
            image.pixels.foreach_set(capture.image_pixels(scratch)[::-1].reshape(-1))
        finally:
            bpy.data.images.remove(scratch)
    image.update()
    apply_ms = (time.perf_counter() - clock) * 1000.0
    state.applied += 1
    _record_latency(header, apply_ms)
    apply.redraw_all()


def _record_latency(header: dict[str, Any], apply_ms: float) -> None:
    frame = header.get("frame")
    captured = state.captured_at.get(frame)
    conn = controller.connection
    if captured is None or conn is None:
        return
    total = (time.monotonic() - captured) * 1000.0
    sent = conn.live.sent_at.get(frame)
    timings = header.get("timings") or {}
    server = sum(v for k, v in timings.items() if k != "wait")
    capture_ms, build_ms = state.capture_ms.get(frame, 0.0), state.build_ms.get(frame, 0.0)
    record = {"frame": frame, "revision": header.get("revision", 0), "total": total, "capture": capture_ms,
              "build": build_ms,  # on the worker thread; the wait for it is in `outbox`
              "outbox": max(0.0, (sent - captured) * 1000.0 - capture_ms - build_ms) if sent else 0.0,
              "server_wait": timings.get("wait", 0.0), "server": server, "apply": apply_ms,
              **{f"server_{k}": v for k, v in timings.items() if k != "wait"}}
    record["network"] = max(0.0, total - capture_ms - build_ms - record["outbox"] - record["server_wait"] - server
                            - apply_ms)
    state.latencies = (state.latencies + [record])[-1000:]


# ------------------------------------------------------------------ handlers


@persistent
def on_depsgraph(_scene: Any, depsgraph: Any) -> None:
    if running() and not state.capturing and live_capture.changes_picture(depsgraph):
        state.dirty = True


@persistent
def on_frame_change(scene: Any, *_args: Any) -> None:
    # A render runs the frame-change handlers too: only a different frame is a change.
    if running() and not state.capturing and scene is not None and scene.frame_current != state.scene_frame:
        state.dirty = True


@persistent
def on_load(*_args: Any) -> None:
    if running():
        stop("Stopped: another file was opened")


# ------------------------------------------------------------------ UI


class LATENTBRIDGE_OT_live_toggle(bpy.types.Operator):
    """Start or stop live mode: the view is generated again whenever the scene, the view or the frame changes"""

    bl_idname = "latentbridge.live_toggle"
    bl_label = "Live"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if running():
            return True  # stopping always works
        scene = getattr(context, "scene", None)
        if scene is None or not hasattr(scene, "latentbridge_live"):
            return False
        if scene.camera is None and live_capture.needs_camera(context, scene):
            cls.poll_message_set("Live mode renders the scene camera here: add a camera")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        if running():
            stop()
            return {"FINISHED"}
        try:
            start(context)
        except Exception as exc:  # noqa: BLE001 - e.g. ConnectRefused: said in the UI, nothing started
            self.report({"ERROR"}, f"Live mode could not start: {exc}")
            return {"CANCELLED"}
        return {"FINISHED"}


def draw_live(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    live = context.scene.latentbridge_live
    row = layout.row(align=True)
    row.scale_y = 1.3
    row.operator("latentbridge.live_toggle", text="Stop Live" if running() else "Start Live",
                 icon="PAUSE" if running() else "PLAY", depress=running())
    col = layout.column()
    col.prop(live, "preset")
    row = col.row(align=True)
    row.prop(live, "steps")
    row.prop(live, "size")
    col.prop(live, "strength", slider=True)
    row = col.row(align=True)
    row.prop(live, "use_controls", toggle=True, icon="MODIFIER")
    sub = row.row(align=True)
    sub.active = live.use_controls
    sub.prop(live, "controls_only", toggle=True)
    if live.use_controls:
        kinds = [control_ui.LABELS[k] for k in conditioning.CONTROL_KINDS
                 if getattr(context.scene.latentbridge_control, k).enabled]
        col.label(text=f"Controls: {', '.join(kinds)}" if kinds else "No scene control ticked (Controls panel)",
                  icon="NODETREE")
    col.prop(live, "decoder")
    row = col.row(align=True)
    row.prop(live, "max_fps")
    row.prop(live, "show_overlay", toggle=True, icon="OVERLAY")
    if live.status:
        col.label(text=live.status, icon="INFO")
    if running() and state.latencies:
        recent = sorted(r["total"] for r in state.latencies[-30:])
        col.label(text=f"{len(state.latencies)} frames, latency {recent[len(recent) // 2]:.0f} ms")
    if state.note:
        col.label(text=state.note, icon="INFO")


SUBPANELS = tuple(panels._subpanel("Live", draw_live, space, parent, f"{parent}_live")
                  for parent, space in (("LATENTBRIDGE_PT_view3d", "VIEW_3D"), ("LATENTBRIDGE_PT_image", "IMAGE_EDITOR")))
classes = (LATENTBRIDGE_PG_live, LATENTBRIDGE_OT_live_toggle) + SUBPANELS

_HANDLERS = ((bpy.app.handlers.depsgraph_update_post, on_depsgraph), (bpy.app.handlers.frame_change_post, on_frame_change),
             (bpy.app.handlers.load_pre, on_load))


def register() -> None:
    bpy.types.Scene.latentbridge_live = PointerProperty(type=LATENTBRIDGE_PG_live, name="Latent Bridge Live",
                                                        description="Live mode settings of this scene")
    for handlers, fn in _HANDLERS:
        if fn not in handlers:
            handlers.append(fn)
    controller.handlers["live"] = on_live_event
    controller.handlers["live_result"] = on_live_result


def unregister() -> None:
    if running():
        stop()
    controller.handlers.pop("live", None)
    controller.handlers.pop("live_result", None)
    for handlers, fn in _HANDLERS:
        if fn in handlers:
            handlers.remove(fn)
    del bpy.types.Scene.latentbridge_live
