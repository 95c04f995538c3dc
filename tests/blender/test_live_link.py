"""The add-on's live outbox (blender_addon/live_link.py, no bpy): one frame in flight, one pending,
a new capture replaces the pending one; restarts after a dropped connection."""

from __future__ import annotations

import json

import lb_blender

live_link = lb_blender.source_module("live_link")
wire = lb_blender.source_module("wire")

REQUEST = {"mode": "img2img", "prompt": "bronze", "width": 64, "height": 64}


def _started(box, job_id="live-1"):
    assert box.on_event({"type": "live_started", "job_id": job_id, "revision": 0, "request": REQUEST, "live": {},
                         "decoder": "taesd"})


def _running(live=None):
    """An outbox whose session the server has started (its live_start sent and answered)."""
    box = live_link.LiveOutbox()
    box.start(REQUEST, live or {}, client_ref="live")
    box.outgoing()
    _started(box)
    return box


def _frames(texts):
    return [wire.decode_binary(t)[0] for t in texts if isinstance(t, bytes)]


def test_start_goes_out_once_and_frames_wait_for_the_session():
    box = live_link.LiveOutbox()
    box.start(REQUEST, {"preset": "turbo"}, client_ref="live")
    box.offer(1, {"init": b"png1"}, "png")
    out = box.outgoing()
    assert [json.loads(t)["type"] for t in out] == ["live_start"]  # no session yet: the frame waits
    assert box.outgoing() == []
    _started(box)
    (header,) = _frames(box.outgoing())
    assert (header["kind"], header["job_id"], header["frame"]) == ("live_frame", "live-1", 1)


def test_one_frame_in_flight_and_a_new_capture_replaces_the_pending_one():
    box = _running()
    box.offer(1, {"init": b"a"}, "png")
    assert [h["frame"] for h in _frames(box.outgoing())] == [1]
    for frame in range(2, 52):  # a burst of captures while frame 1 renders
        box.offer(frame, {"init": b"b"}, "png")
        assert _frames(box.outgoing()) == []  # nothing goes out while one is in flight
    assert not box.idle()
    assert box.on_result({"kind": "live_result", "job_id": "live-1", "frame": 1})
    assert [h["frame"] for h in _frames(box.outgoing())] == [51]  # the newest only
    assert (box.captured, box.sent, box.dropped) == (51, 2, 49)
    assert box.on_result({"job_id": "live-1", "frame": 51}) and box.idle()


def test_a_failed_frame_frees_the_slot_and_late_results_of_old_sessions_are_ignored():
    box = _running()
    box.offer(1, {"init": b"a"}, "png")
    box.outgoing()
    box.offer(2, {"init": b"a"}, "png")
    assert box.on_event({"type": "error", "job_id": "live-1", "code": "bad_image", "message": "x"})
    assert [h["frame"] for h in _frames(box.outgoing())] == [2]
    assert not box.on_result({"job_id": "live-0", "frame": 9})  # another session's: dropped
    assert not box.on_event({"type": "done", "job_id": "job-9", "count": 1, "elapsed_s": 1.0})  # not live's


def test_updates_reach_the_session_and_a_dropped_connection_starts_it_again():
    box = _running({"preset": "turbo"})
    box.update({**REQUEST, "prompt": "marble"}, {"preset": "lcm"}, client_ref="live")
    (update,) = [json.loads(t) for t in box.outgoing()]
    assert update == {"type": "live_update", "job_id": "live-1", "request": {**REQUEST, "prompt": "marble"},
                      "live": {"preset": "lcm"}}
    box.offer(3, {"init": b"a"}, "png")
    box.outgoing()  # frame 3 in flight when the connection drops
    box.on_disconnected()
    box.offer(4, {"init": b"b"}, "png")
    (restart,) = box.outgoing()  # the server ended the session: start again, with the newest settings
    assert json.loads(restart) == {"type": "live_start", "client_ref": "live", "request": {**REQUEST, "prompt": "marble"},
                                   "live": {"preset": "lcm"}}
    _started(box, "live-2")
    assert [(h["job_id"], h["frame"]) for h in _frames(box.outgoing())] == [("live-2", 4)]


def test_stop_sends_live_stop_and_drops_what_waits():
    box = _running()
    box.offer(1, {"init": b"a"}, "png")
    box.stop()
    box.offer(2, {"init": b"a"}, "png")  # captured after stop: ignored
    assert [json.loads(t) for t in box.outgoing()] == [{"type": "live_stop", "job_id": "live-1"}]
    assert not box.active and box.idle()
    box.on_event({"type": "live_started", "job_id": "live-late", "revision": 0, "request": REQUEST, "live": {},
                  "decoder": "vae"})  # a session started just before the stop: stopped too
    assert [json.loads(t) for t in box.outgoing()] == [{"type": "live_stop", "job_id": "live-late"}]


def test_a_refused_start_turns_live_off():
    box = live_link.LiveOutbox()
    box.start(REQUEST, {}, client_ref="live")
    box.outgoing()
    assert box.on_event({"type": "error", "job_id": None, "code": "unsupported", "message": "no",
                         "field": "request.mode"})
    assert not box.active


def test_a_reshaping_update_drops_the_old_shape_and_frees_the_slot_once_the_server_has_it():
    box = _running()
    box.offer(1, {"init": b"a"}, "png")
    box.outgoing()  # frame 1 in flight
    box.offer(2, {"init": b"a"}, "png")  # pending, captured without the depth map
    box.update({**REQUEST, "prompt": "marble"}, {}, client_ref="live")  # not reshaping: frame 2 stays
    box.update({**REQUEST, "controls": [{"type": "depth"}]}, {}, client_ref="live", reshape=True)
    assert [json.loads(t)["type"] for t in box.outgoing()] == ["live_update", "live_update"]
    assert box.dropped == 1 and not box.idle()  # frame 2 dropped, frame 1 still in flight
    box.offer(3, {"init": b"a", "control.0": b"d"}, "png")
    updated = {"type": "live_updated", "job_id": "live-1", "revision": 1, "request": REQUEST, "live": {},
               "decoder": "taesd"}
    assert box.on_event(updated) and _frames(box.outgoing()) == []  # the prompt change: frame 1 may still come
    assert box.on_event({**updated, "revision": 2})  # the reshape: the server may have dropped frame 1
    (header,) = _frames(box.outgoing())
    assert header["frame"] == 3 and [p["role"] for p in header["parts"]] == ["init", "control.0"]


def test_a_new_connection_forgets_what_was_meant_for_the_old_session():
    box = _running()
    box.update({**REQUEST, "prompt": "marble"}, {}, client_ref="live")  # queued, never sent: the link dropped
    box.on_disconnected()
    (restart,) = box.outgoing()
    assert json.loads(restart)["type"] == "live_start" and json.loads(restart)["request"]["prompt"] == "marble"


def test_a_failed_session_is_not_started_again():
    box = _running()
    assert box.on_event({"type": "live_stopped", "job_id": "live-1", "reason": "failed", "message": "no model",
                         "frames": {}})
    assert not box.active and box.outgoing() == []  # no live_start loop against settings that cannot render
