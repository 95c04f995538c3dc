"""Real add-on, real servers: the backend restarts mid-job (the job is lost: the add-on says so
and is usable at once), and a file saved mid-job is reopened after a restart of a server that
kept its data folder (the finished job is re-attached and its result fetched)."""

from __future__ import annotations

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()

from lb_server import ServerProcess, point_prefs_at, pump  # noqa: E402


def _settings(scene, steps):
    settings = scene.latentbridge
    settings.mode, settings.steps, settings.random_seed, settings.seed = "txt2img", steps, False, 99
    settings.size_mode, settings.width, settings.height, settings.preview_size = "CUSTOM", 64, 64, 64
    settings.prompt = "weathered bronze"
    return settings


def test_backend_restart_without_the_job_ends_it_as_lost(addon, scene, tmp_path):
    """Before: the job stayed "running" for good, Cancel failed, Generate stayed greyed out."""
    import bpy

    controller = addon["controller"].controller
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServerProcess(tmp_path / "a").start()
    second = ServerProcess(tmp_path / "b", port=first.port)  # same address, another data folder
    try:
        point_prefs_at(first.url, first.token)
        settings = _settings(scene, 150)
        settings.width = settings.height = 128
        bpy.ops.latentbridge.generate()
        job = list(controller.jobs.values())[-1]
        pump(controller, lambda: settings.step >= 1 or job.finished, 120, "the first step")
        assert not job.finished
        first.kill()
        pump(controller, lambda: controller.conn_state != "CONNECTED", 15, "the drop to be noticed")
        second.start()
        pump(controller, lambda: job.finished, 60, "the job to be reported lost")
        assert job.state == "failed" and job.error == "lost: the backend restarted"
        assert not settings.running and "lost: the backend restarted" in settings.error
        assert bpy.ops.latentbridge.generate.poll() and not bpy.ops.latentbridge.cancel.poll()
        _settings(scene, 2)
        assert bpy.ops.latentbridge.generate() == {"FINISHED"}  # and it works again at once
        again = list(controller.jobs.values())[-1]
        pump(controller, lambda: again.finished, 90, "a job on the restarted server")
        assert again.state == "done", again.error
    finally:
        first.kill()
        second.stop()
        controller.reset()


def test_file_saved_mid_job_reopened_after_a_restart_fetches_the_result(addon, scene, tmp_path):
    import bpy

    controller = addon["controller"].controller
    (tmp_path / "data").mkdir()
    server = ServerProcess(tmp_path / "data").start()
    try:
        point_prefs_at(server.url, server.token)
        settings = _settings(scene, 2)
        bpy.ops.latentbridge.generate()
        job = list(controller.jobs.values())[-1]
        pump(controller, lambda: job.job_id is not None, 30, "the job to be accepted")
        assert job.job_id in settings.jobs_json  # what a file saved now records, to follow when reopened
        path = str(tmp_path / "mid-job.blend")
        bpy.ops.wm.save_as_mainfile(filepath=path)
        pump(controller, lambda: job.finished, 90, "the job to finish on the server")
        controller.reset()  # Blender quits
        server.stop()
        server.start()  # the server restarts with the same data folder: it knows finished jobs
        bpy.ops.wm.open_mainfile(filepath=path)
        settings = bpy.context.scene.latentbridge
        assert settings.running and "re-attaching" in settings.status
        reopened = controller.by_job_id(job.job_id)
        pump(controller, lambda: reopened.finished, 60, "the re-attached job's result")
        assert reopened.state == "done" and len(reopened.results) == 1, reopened.error
        image = bpy.data.images[reopened.results[0]]
        assert image.packed_file is not None and image["latentbridge_seed"] == 99
        assert not settings.running and settings.last_result == image.name
    finally:
        server.stop()
        controller.reset()
