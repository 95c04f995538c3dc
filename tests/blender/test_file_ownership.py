"""Jobs belong to the file they started in: File › New / Open mid-job, a file saved mid-job and
reopened (in this Blender or a fresh one), and a job the server no longer knows."""

from __future__ import annotations

import os

import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()






def _accept(addon, fake, job_id):
    Incoming = addon["connection"].Incoming
    ref = [s for s in fake.sent if s[0] == "submit"][-1][3]
    fake.feed(Incoming("event", {"type": "accepted", "job_id": job_id, "client_ref": ref, "position": 0}))
    fake.feed(Incoming("event", {"type": "started", "job_id": job_id, "seed": 5}))
    addon["controller"].controller.drain()


def _finish(addon, fake, job_id, color=(200, 0, 0)):
    Incoming = addon["connection"].Incoming
    request = {"mode": "txt2img", "prompt": "bronze", "seed": 5, "width": 64, "height": 64}
    fake.feed(Incoming("event", {"type": "result", "job_id": job_id, "index": 0, "seed": 5, "width": 64, "height": 64, "request": request}))
    fake.feed(Incoming("result", header={"kind": "result", "format": "png", "job_id": job_id, "index": 0}, data=lb_blender.png_bytes(color)))
    fake.feed(Incoming("event", {"type": "done", "job_id": job_id, "count": 1, "elapsed_s": 0.2}))
    addon["controller"].controller.drain()


def _texture_scene(name="Material"):
    import bpy

    scene = lb_blender.reset_scene()
    cube = scene.objects["Cube"]
    cube.data.materials.append(bpy.data.materials.new(name))
    return scene, cube


def test_result_after_file_new_is_saved_next_to_its_file_not_put_into_the_new_one(addon, scene, fake, tmp_path):
    """Before: the result was packed into the newly opened file and rewired its material of the
    same name."""
    import bpy

    scene, cube = _texture_scene()
    scene.latentbridge.prompt = "bronze"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "first.blend"))
    assert bpy.ops.latentbridge.generate_texture() == {"FINISHED"}
    _accept(addon, fake, "j1")

    scene, cube = _texture_scene()  # File › New, with a material of the same name
    _finish(addon, fake, "j1")

    assert not [i.name for i in bpy.data.images if i.name.startswith("LB ")]
    tree = cube.active_material.node_tree  # None on 4.x: a new material has no nodes there
    assert tree is None or "Latent Bridge Texture" not in tree.nodes
    assert not scene.latentbridge.running and scene.latentbridge.last_result == ""
    saved = tmp_path / "latentbridge_results" / "j1_0.png"
    assert saved.is_file() and saved.read_bytes()[:4] == b"\x89PNG"
    messages = [text for _, text in addon["controller"].controller.messages]
    assert any(str(saved) in text for text in messages)  # the artist is told where it is


@pytest.mark.smoke
def test_file_saved_mid_job_reopens_reattached_then_gets_its_result(addon, scene, fake, tmp_path):
    """Before: the reopened file showed a job running for good (Generate greyed out, progress
    frozen) and nothing followed it."""
    import bpy

    ctl = addon["controller"].controller
    scene.latentbridge.prompt = "bronze"
    bpy.ops.latentbridge.generate()
    _accept(addon, fake, "j7")
    path = str(tmp_path / "mid-job.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)

    ctl.reset()  # a fresh Blender: nothing is known about the job but what the file says
    fake = lb_blender.FakeConnection(addon["connection"])
    ctl.connection = fake
    bpy.ops.wm.open_mainfile(filepath=path)
    settings = bpy.context.scene.latentbridge
    assert ("attach", "j7") in fake.sent
    assert settings.running and "re-attaching" in settings.status

    Incoming = addon["connection"].Incoming
    fake.feed(Incoming("event", {"type": "status", "job_id": "j7", "state": "done", "result_count": 1}))
    _finish(addon, fake, "j7")
    assert not settings.running and settings.last_result in bpy.data.images
    assert bpy.data.images[settings.last_result]["latentbridge_job"] == "j7"
    assert settings.jobs_json == ""  # nothing left to re-attach


def test_file_saved_mid_job_reopens_idle_when_the_server_lost_the_job(addon, scene, fake, tmp_path):
    import bpy

    ctl = addon["controller"].controller
    bpy.ops.latentbridge.generate()
    _accept(addon, fake, "j8")
    path = str(tmp_path / "lost.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    ctl.reset()
    fake = lb_blender.FakeConnection(addon["connection"])
    ctl.connection = fake
    bpy.ops.wm.open_mainfile(filepath=path)
    # What the network thread says when the server answers unknown_job for the attach:
    fake.feed(addon["connection"].Incoming(addon["connection"].LOST, {"job_id": "j8"}))
    ctl.drain()
    settings = bpy.context.scene.latentbridge
    assert not settings.running and "lost: the backend restarted" in settings.error
    assert bpy.ops.latentbridge.generate.poll()  # usable at once


def test_same_file_reopened_in_this_blender_takes_its_job_back(addon, scene, fake, tmp_path):
    import bpy

    bpy.ops.latentbridge.generate()
    _accept(addon, fake, "j9")
    path = str(tmp_path / "again.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)  # File › Revert
    assert ("attach", "j9") in fake.sent
    _finish(addon, fake, "j9")
    settings = bpy.context.scene.latentbridge
    assert not settings.running and settings.last_result in bpy.data.images
    assert not (tmp_path / "latentbridge_results").exists()


def test_a_job_without_a_server_answer_can_be_cancelled_at_once(addon, scene, fake):
    """Before: Cancel did nothing while the server was gone and the job stayed running."""
    import bpy

    bpy.ops.latentbridge.generate()
    _accept(addon, fake, "j10")
    fake.state = "RETRYING"
    assert bpy.ops.latentbridge.cancel() == {"FINISHED"}
    assert not scene.latentbridge.running and bpy.ops.latentbridge.generate.poll()
    assert ("cancel", "j10") in fake.sent  # told to the server when it is back


def test_connection_trouble_is_reported_once_and_shown_with_its_fix(addon, scene, fake):
    """Before: every retry put another long error into the Info log."""
    import bpy

    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    feedback = addon["feedback"]
    bpy.ops.latentbridge.generate()
    _accept(addon, fake, "j11")
    fake.state = "RETRYING"
    for _ in range(5):
        fake.feed(Incoming("state", {"state": "CONNECTING", "status": "Connecting…"}))
        fake.feed(Incoming("state", {"state": "RETRYING", "status": "No Latent Bridge server at http://127.0.0.1:7423 (connection refused)"}))
        ctl.drain()
    assert [level for level, _ in ctl.messages if level in ("WARNING", "ERROR")] == ["WARNING"]
    text, icon, action = feedback.connection_line()
    assert "reconnecting in 2 s" in text and action in ("latentbridge.start_backend", "latentbridge.connect")
    assert "reconnecting" in feedback.progress_text(scene.latentbridge)  # no frozen step/ETA
    fake.state = "CONNECTED"
    fake.feed(Incoming("state", {"state": "CONNECTED", "status": "Connected: test"}))
    ctl.drain()
    assert ctl.messages[-1] == ("INFO", "Reconnected to the server")


def test_orphan_folder_for_an_unsaved_file_is_the_temp_folder(addon, scene):
    import tempfile

    job = addon["controller"].JobContext("r", "Scene", {}, blend_file="")
    assert addon["results"].orphan_folder(job) == os.path.join(tempfile.gettempdir(), "latentbridge_results")
