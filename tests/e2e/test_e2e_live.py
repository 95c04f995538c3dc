"""Live mode end to end: the installed add-on in real Blender against a real server (tiny model).

bpy as a module has no window and no GPU context, so these runs capture with the Workbench
fallback (checked); timers never fire here, so the tests drive `live.tick()` as the timer would."""

from __future__ import annotations

import time

import numpy as np
import pytest

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()


def _live(addon):
    import importlib

    return importlib.import_module(lb_blender.ADDON_MODULE + ".live")


def _tick_until(live, until, timeout=60.0, what="condition"):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        live.tick()
        if until():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}; live status {live.state.note!r}")


def _pixels(image):
    flat = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(image.size[1], image.size[0], 4)


@pytest.fixture
def live_on(addon, connected, scene):
    import bpy

    live = _live(addon)
    settings = scene.latentbridge
    settings.prompt, settings.seed, settings.random_seed = "weathered bronze", 77, False
    scene.latentbridge_live.size = 64
    scene.latentbridge_live.max_fps = 120
    assert bpy.ops.latentbridge.live_toggle() == {"FINISHED"}
    yield live
    if live.running():
        live.stop()


@pytest.mark.smoke
def test_live_shows_the_newest_result_and_follows_the_scene(live_on, scene, connected):
    import bpy

    live = live_on
    _tick_until(live, lambda: live.state.applied >= 1, what="the first live result")
    image = bpy.data.images[live.LIVE_IMAGE]
    assert tuple(image.size) == (64, 64)
    assert live.state.note == live.LIVE_FALLBACK_NOTE  # no GPU context in bpy as a module
    first = _pixels(image).copy()
    assert scene.latentbridge_live.status.startswith("Live (")

    # A still scene sends nothing more.
    sent = connected.connection.live.sent
    for _ in range(30):
        live.tick()
        time.sleep(0.005)
    assert connected.connection.live.sent == sent

    # Moving the cube is a depsgraph change: a new frame, a new picture.
    cube = bpy.data.objects["Cube"]
    cube.location.x += 1.5
    bpy.context.view_layer.update()
    _tick_until(live, lambda: live.state.applied >= 2, what="the result of the moved cube")
    assert not np.array_equal(_pixels(image), first)

    # A frame change captures too.
    applied = live.state.applied
    scene.frame_set(scene.frame_current + 1)
    _tick_until(live, lambda: live.state.applied > applied, what="the result after a frame change")

    record = live.state.latencies[-1]
    assert record["total"] > 0 and record["capture"] > 0 and set(record) >= {"server", "network", "apply"}


def test_changing_the_prompt_mid_session_needs_no_restart(live_on, scene, connected):
    live = live_on
    _tick_until(live, lambda: live.state.applied >= 1, what="the first live result")
    job_id = live.state.job_id
    scene.latentbridge.prompt = "polished marble"
    _tick_until(live, lambda: bool(live.state.latencies) and live.state.latencies[-1]["revision"] == 1,
                what="the result rendered with the new prompt")
    assert live.state.job_id == job_id  # the same session
    scene.latentbridge_live.strength = 0.8
    _tick_until(live, lambda: live.state.latencies[-1]["revision"] == 2, what="the result with the new strength")


def test_the_scene_controls_steer_live_frames(live_on, scene, connected):
    """Ticking depth and normal in the Controls panel mid-session: the session takes them without
    a restart, each frame then carries the exact maps (made on the worker thread), and Controls
    Only drops the colour; unticking the Live panel's Scene Controls goes back to plain frames."""
    live = live_on
    _tick_until(live, lambda: live.state.applied >= 1, what="the first live result")
    job_id = live.state.job_id
    scene.latentbridge_control.depth.enabled = True
    scene.latentbridge_control.normal.enabled = True
    scene.latentbridge_control.normal.weight = 0.6
    _tick_until(live, lambda: live.state.latencies[-1]["revision"] >= 1 and live.state.note == live.live_capture.CONTROLS_NOTE,
                timeout=120, what="a controlled live result")
    record = live.state.latencies[-1]
    assert record["build"] > 0  # the maps were made on the worker thread
    assert live.state.job_id == job_id
    assert [c["type"] for c in live.live_request(scene)[0]["controls"]] == ["depth", "normal"]
    applied = live.state.applied
    scene.latentbridge_live.controls_only = True
    _tick_until(live, lambda: live.state.applied > applied and live.state.latencies[-1]["revision"] >= 2,
                timeout=120, what="a controls-only live result")
    assert live.live_request(scene)[0]["mode"] == "txt2img"
    applied = live.state.applied
    scene.latentbridge_live.use_controls = False
    _tick_until(live, lambda: live.state.applied > applied and live.state.note == live.LIVE_FALLBACK_NOTE,
                timeout=120, what="a plain live result again")
    assert "controls" not in live.live_request(scene)[0]


def test_stopping_ends_the_session_on_the_server(live_on, scene, connected):
    import bpy

    live = live_on
    _tick_until(live, lambda: live.state.applied >= 1, what="the first live result")
    assert bpy.ops.latentbridge.live_toggle() == {"FINISHED"}
    assert not live.running() and not connected.connection.live.active
    assert not scene.latentbridge_live.running
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the live_stop goes out and is answered
        connected.drain()
        if connected.connection.live.job_id is None and connected.connection.live.idle():
            break
        time.sleep(0.01)
    assert connected.connection.live.job_id is None


def test_disconnecting_stops_live_mode(live_on, connected):
    live = live_on
    _tick_until(live, lambda: live.state.applied >= 1, what="the first live result")
    connected.disconnect()
    live.tick()
    assert not live.running()


def test_a_server_restart_mid_session_starts_a_new_session_and_live_carries_on(addon, scene, tmp_path):
    """The connection drops while a frame is in flight: the server ended that session with the
    connection; after the reconnect the add-on starts a new one with the same settings, and the
    next change is generated there, with no frame left waiting for an answer that cannot come."""
    import bpy
    from lb_server import ServerProcess, point_prefs_at, pump

    controller = addon["controller"].controller
    live = _live(addon)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServerProcess(tmp_path / "a").start()
    second = ServerProcess(tmp_path / "b", port=first.port)
    try:
        point_prefs_at(first.url, first.token)
        bpy.ops.latentbridge.connect()
        pump(controller, lambda: controller.conn_state == "CONNECTED", 30, "the hello handshake")
        scene.latentbridge.seed, scene.latentbridge.random_seed = 5, False
        scene.latentbridge_live.size = 64
        assert bpy.ops.latentbridge.live_toggle() == {"FINISHED"}
        _tick_until(live, lambda: live.state.applied >= 1, what="the first live result")
        old_session = live.state.job_id
        first.kill()
        _tick_until(live, lambda: controller.conn_state != "CONNECTED", 15, what="the drop to be noticed")
        bpy.data.objects["Cube"].location.z += 1.0  # changed while the server is away
        bpy.context.view_layer.update()
        second.start()
        applied = live.state.applied
        _tick_until(live, lambda: live.state.applied > applied, 90, what="a result from the restarted server")
        assert live.running() and live.state.job_id not in (None, old_session)
        assert controller.connection.live.job_id == live.state.job_id
    finally:
        if live.running():
            live.stop()
        first.kill()
        second.stop()
        controller.reset()


def test_scene_controls_that_cannot_make_a_request_refuse_the_start(addon, connected, scene):
    import bpy

    live = _live(addon)
    depth = scene.latentbridge_control.depth
    depth.enabled, depth.start, depth.end = True, 0.9, 0.5
    with pytest.raises(RuntimeError, match="Live mode could not start: depth control: it must start before it ends"):
        bpy.ops.latentbridge.live_toggle()  # the operator's error report (raised as such in bpy as a module)
    assert not live.running() and not connected.connection.live.active
    scene.latentbridge_live.use_controls = False  # live without the scene controls: starts
    assert bpy.ops.latentbridge.live_toggle() == {"FINISHED"}
    try:
        _tick_until(live, lambda: live.state.applied >= 1, what="a plain live result")
    finally:
        live.stop()
