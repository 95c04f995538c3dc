"""Jobs and files: a job belongs to the file it started in.

- File › New / Open (`load_pre`): the open file's running jobs keep running on the server, but
  from now on their results are written next to the file they came from (never into the new
  one), and the artist is told where. A running animation stops (its frames stay on disk).
- After a load (`load_post`): the jobs the loaded file recorded as running (a file saved
  mid-job) are followed again: re-attached when the server still knows them (results that came
  meanwhile are re-sent), else ended as "lost: the backend restarted". The panel is usable at
  once either way: nothing stays "running" that is not.
"""

from __future__ import annotations

import bpy
from bpy.app.handlers import persistent

from . import animation, results, texture_project
from .controller import ConnectRefused, JobContext, controller


def leave_file() -> None:
    """Before another file replaces this one."""
    animation.stop_all("another file was opened")
    texture_project.stop_all("another file was opened")
    running = controller.active_jobs()
    controller.epoch += 1
    controller.writer.discard()
    controller._pending_previews.clear()
    for job in running:
        if job.on_result is not None:
            continue  # an animation frame: stopped above
        controller.report("WARNING", f"A job is still running for {job.blend_file or 'the unsaved file'}: "
                          f"its result will be saved in {results.orphan_folder(job)}")


def adopt_file() -> None:
    """After a file was loaded: follow the jobs it recorded as running, nothing else."""
    for scene in bpy.data.scenes:
        settings = scene.latentbridge
        records = settings.stored_jobs()
        settings.running = False
        settings.progress, settings.step, settings.total, settings.eta = 0.0, 0, 0, -1.0
        if not records:
            if settings.status and not settings.error:
                settings.status = ""
            continue
        try:
            followed = [r for r in records if _follow(scene, r)]
        except ConnectRefused as exc:
            followed = []
            settings.error = f"The job saved in this file cannot be followed: {exc}"
        if followed:
            settings.running = True
            settings.status = "Reopened: re-attaching to the running job…"
        else:
            settings.status = settings.error or "The job saved in this file had not reached the server; it is gone"
        controller.persist(scene.name)


def _follow(scene: bpy.types.Scene, record: dict) -> bool:
    job_id = record.get("job_id")
    if not job_id:
        return False
    known = controller.by_job_id(job_id)
    if known is not None and not known.finished:
        # Still followed since it started (the same file reopened): it belongs here again.
        known.epoch, known.scene = controller.epoch, scene.name
        known.results = {k: v for k, v in known.results.items() if v in bpy.data.images}
        if controller.connection is not None:
            controller.connection.attach(job_id)  # re-sends results this file does not have
        return True
    job = JobContext(record.get("client_ref") or f"reopened-{job_id}", scene.name, dict(record.get("request") or {}),
                     texture=bool(record.get("texture")), targets=list(record.get("targets") or []),
                     job_id=job_id, state="queued", epoch=controller.epoch, blend_file=bpy.data.filepath)
    job.input_images = {k: v for k, v in (record.get("input_images") or {}).items() if v in bpy.data.images}
    job.results = {int(k): v for k, v in (record.get("results") or {}).items() if v in bpy.data.images}
    controller.connect_from_prefs(bpy.context)  # ConnectRefused: the caller says why
    controller.track(job)
    return True


@persistent
def _load_pre(*_args) -> None:
    leave_file()


@persistent
def _load_post(*_args) -> None:
    adopt_file()


def register() -> None:
    if _load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_load_pre)
    if _load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_load_post)


def unregister() -> None:
    for handlers, fn in ((bpy.app.handlers.load_pre, _load_pre), (bpy.app.handlers.load_post, _load_post)):
        if fn in handlers:
            handlers.remove(fn)
