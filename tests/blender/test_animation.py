"""Animation: every frame of a range from its render, one seed, an image sequence next to the
.blend, feed-previous, packing, Cancel between frames and Resume from the first missing one."""

from __future__ import annotations


import numpy as np
import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()




@pytest.fixture
def saved(scene, tmp_path):
    import bpy

    scene.frame_start, scene.frame_end = 1, 3
    settings = scene.latentbridge
    settings.random_seed, settings.seed, settings.prompt, settings.steps = False, 21, "ink", 2
    path = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return bpy.context.scene, tmp_path / "latentbridge_frames"




def _complete_frame(addon, fake, n, value=200):
    """The server's answer to the last submitted frame."""
    Incoming = addon["connection"].Incoming
    ctl = addon["controller"].controller
    _, request, _, ref = _submits(fake)[-1]
    job_id = f"f{n}"
    fake.feed(Incoming("event", {"type": "accepted", "job_id": job_id, "client_ref": ref, "position": 0}))
    fake.feed(Incoming("event", {"type": "progress", "job_id": job_id, "step": 1, "total": 2}))
    ctl.drain()
    fake.feed(Incoming("event", {"type": "result", "job_id": job_id, "index": 0, "seed": request["seed"], "width": 64, "height": 64, "request": request}))
    fake.feed(Incoming("result", header={"kind": "result", "format": "png", "job_id": job_id, "index": 0}, data=lb_blender.png_bytes((value, value, value))))
    fake.feed(Incoming("event", {"type": "done", "job_id": job_id, "count": 1, "elapsed_s": 0.1}))
    ctl.drain()  # the next frame is rendered and sent right after this drain


def _submits(fake):
    lb_blender.flush()  # a frame's uploads are made on the worker thread, then sent
    return [s for s in fake.sent if s[0] == "submit"]


def test_every_frame_from_its_render_with_one_seed(addon, fake, saved):
    import bpy

    scene, folder = saved
    anim = addon["animation"]
    assert bpy.ops.latentbridge.animate() == {"FINISHED"}
    assert scene.latentbridge.running and anim.frame_text(scene.name) == "Frame 1/3"
    for n in (1, 2, 3):
        assert scene.frame_current == n
        _complete_frame(addon, fake, n)
    requests = [s[1] for s in _submits(fake)]
    assert len(requests) == 3 and {r["seed"] for r in requests} == {21}
    assert all(r["mode"] == "img2img" and r["batch_size"] == 1 for r in requests)
    assert all(set(s[2]) == {"init"} for s in _submits(fake))
    assert sorted(p.name for p in folder.iterdir()) == ["Scene_0001.png", "Scene_0002.png", "Scene_0003.png"]
    assert not scene.latentbridge.running and "Animation done: 3 frame(s)" in scene.latentbridge.status
    assert not [i for i in bpy.data.images if i.name.startswith("LB frame")]  # packing is on request
    assert bpy.ops.latentbridge.generate.poll()


def test_feed_previous_frame_and_pack(addon, fake, saved):
    import bpy

    scene, folder = saved
    settings = scene.latentbridge
    settings.anim_feed_previous, settings.anim_feed_weight, settings.anim_pack = True, 1.0, True
    bpy.ops.latentbridge.animate()
    first_init = _submits(fake)[-1][2]["init"][0]
    _complete_frame(addon, fake, 1, value=10)
    second_init = _submits(fake)[-1][2]["init"][0]
    pixels = addon["animation"].png_pixels(second_init)
    assert np.allclose(pixels[:, :, :3], 10 / 255, atol=1 / 255)  # weight 1: the previous result itself
    assert second_init != first_init
    _complete_frame(addon, fake, 2)
    _complete_frame(addon, fake, 3)
    packed = sorted(i.name for i in bpy.data.images if i.name.startswith("LB frame"))
    assert packed == ["LB frame Scene 0001", "LB frame Scene 0002", "LB frame Scene 0003"]
    assert bpy.data.images["LB frame Scene 0002"].packed_file is not None


def test_cancel_keeps_finished_frames_and_resume_does_the_missing_ones(addon, fake, saved):
    import bpy

    scene, folder = saved
    bpy.ops.latentbridge.animate()
    _complete_frame(addon, fake, 1)
    assert scene.frame_current == 2 and addon["animation"].frame_text(scene.name) == "Frame 2/3"
    ref = _submits(fake)[-1][3]
    fake.feed(addon["connection"].Incoming("event", {"type": "accepted", "job_id": "f2", "client_ref": ref, "position": 0}))
    addon["controller"].controller.drain()
    assert bpy.ops.latentbridge.cancel() == {"FINISHED"}
    assert ("cancel", "f2") in fake.sent
    assert not scene.latentbridge.running and "1 frame(s) done" in scene.latentbridge.status
    assert [p.name for p in folder.iterdir()] == ["Scene_0001.png"]
    assert addon["animation"].missing_frames(scene) == [2, 3]

    sent = len(_submits(fake))
    assert bpy.ops.latentbridge.animate(resume=True) == {"FINISHED"}
    assert scene.frame_current == 2 and len(_submits(fake)) == sent + 1
    _complete_frame(addon, fake, 12)
    _complete_frame(addon, fake, 13)
    assert sorted(p.name for p in folder.iterdir()) == ["Scene_0001.png", "Scene_0002.png", "Scene_0003.png"]
    with pytest.raises(RuntimeError, match="already in"):
        bpy.ops.latentbridge.animate(resume=True)


def test_a_failed_frame_stops_with_the_reason(addon, fake, saved):
    import bpy

    scene, folder = saved
    bpy.ops.latentbridge.animate()
    ref = _submits(fake)[-1][3]
    Incoming = addon["connection"].Incoming
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "f1", "client_ref": ref, "position": 0}))
    fake.feed(Incoming(addon["connection"].LOST, {"job_id": "f1"}))
    addon["controller"].controller.drain()
    settings = scene.latentbridge
    assert not settings.running and "stopped at frame 1" in settings.error and "lost" in settings.error
    assert len(_submits(fake)) == 1


def test_an_unsaved_file_is_refused_before_any_render(addon, scene, fake):
    import bpy

    with pytest.raises(RuntimeError, match="Save the .blend first"):
        bpy.ops.latentbridge.animate()
    assert fake.sent == []
