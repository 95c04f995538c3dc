"""Finished images into Blender: packed with their recipe, batches, and results of jobs whose file
is no longer open (written to disk next to that file instead, never into the open one)."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import bpy

from . import apply, control_images, png

if TYPE_CHECKING:
    from .controller import Controller, JobContext

# Every upload role a result may keep (init, mask, control.<i>); see input_prop.
INPUT_ROLES = ("init", "mask") + tuple(f"control.{i}" for i in range(4))
ORPHAN_FOLDER = "latentbridge_results"


def input_prop(role: str) -> str:
    """The custom property of a result naming the packed image it had as `role`:
    latentbridge_init, latentbridge_mask, latentbridge_control_0, …"""
    return "latentbridge_" + role.replace(".", "_")


def stored_inputs(image: bpy.types.Image) -> dict[str, str]:
    """role → name of the packed input image a result was made from (as recorded on it)."""
    return {role: str(image[input_prop(role)]) for role in INPUT_ROLES if image.get(input_prop(role))}


def pack_inputs(job: "JobContext") -> dict[str, str]:
    """The job's uploaded images, packed once, so Regenerate can send exactly the same bytes.
    Control maps are packed as data (Non-Color), tagged with their control type."""
    controls = job.request.get("controls") or []
    for role, (data, fmt) in job.inputs.items():
        if role not in job.input_images and fmt == "png":
            width, height = png.png_size(data)
            name = f"LB {role} {job.client_ref}"
            if role.startswith("control."):
                index = int(role.split(".", 1)[1])
                kind = controls[index].get("type", "") if index < len(controls) else ""
                packed = control_images.pack_control_map(data, name, width, height, kind)
            else:
                packed = apply.pack_png(data, name, width, height)
            job.input_images[role] = packed.name
    return job.input_images


def drop_inputs(job: "JobContext") -> None:
    """Inputs packed for a job that produced nothing, and that nothing else uses."""
    from .controller import controller

    if job.epoch != controller.epoch:
        return
    for name in list(job.input_images.values()):
        image = bpy.data.images.get(name)
        shared = any(j is not job and name in j.input_images.values() for j in controller.jobs.values())
        if image is not None and not shared and image.users <= 1:  # the fake user only
            bpy.data.images.remove(image)
    job.input_images.clear()


def _result_meta(job: "JobContext", header: dict[str, Any], index: int) -> tuple[dict[str, Any], int, int, int]:
    event = job.result_events.get(index, {})
    seed = int(event.get("seed", job.seed if job.seed is not None else job.request.get("seed", 0)))
    request = event.get("request") or {**job.request, "seed": seed, "batch_size": 1}
    width = int(event.get("width") or header.get("width") or request.get("width", 64))
    height = int(event.get("height") or header.get("height") or request.get("height", 64))
    return request, seed, width, height


def apply_result(ctl: "Controller", job: "JobContext", header: dict[str, Any], data: bytes) -> None:
    index = header.get("index", 0)
    if index in job.results:
        return  # re-sent after a re-attach
    if job.epoch != ctl.epoch:
        _write_orphan(ctl, job, index, data)
        return
    request, seed, width, height = _result_meta(job, header, index)
    name = f"LB {'texture' if job.texture else request.get('mode', 'image')} {seed}"
    image = apply.pack_png(data, name, width, height)
    apply.store_request(image, request, seed, job.job_id)
    for role, image_name in job.input_images.items():
        image[input_prop(role)] = image_name
    if job.texture:
        image["latentbridge_texture"] = True
        image["latentbridge_targets"] = ",".join(job.targets)
    job.results[index] = image.name
    if ctl.writer.busy and ctl._writer_job == job.client_ref:
        ctl.writer.discard()
    ctl._pending_previews.pop(job.client_ref, None)
    settings = ctl._settings(job)
    first = len(job.results) == 1
    if settings is not None:
        if job.batch_size > 1:
            if first:
                settings.batch.clear()
            item = settings.batch.add()
            item.image = image.name
        if first:  # the first image is the result; a batch's others can be picked instead
            settings.last_result = image.name
            settings.last_seed = min(seed, 2**31 - 1)
        settings.status = f"Image {len(job.results)}/{job.batch_size}" if job.batch_size > 1 else settings.status
    if first and job.texture:
        apply.assign_texture([o for o in (bpy.data.objects.get(n) for n in job.targets) if o is not None], image)
    apply.show_in_image_editors(image, replace=tuple(job.results.values()))  # each image shown as it arrives
    ctl.persist(job.scene)
    _undo_push(f"Latent Bridge: {image.name}")


def use_result(image: bpy.types.Image, scene: bpy.types.Scene) -> None:
    """Make a result (e.g. one image of a batch) the result: last result, seed, and for a
    texture the material of the objects it was made for."""
    settings = scene.latentbridge
    settings.last_result = image.name
    settings.last_seed = min(int(image.get("latentbridge_seed", 0)), 2**31 - 1)
    if image.get("latentbridge_texture"):
        names = [n for n in str(image.get("latentbridge_targets", "")).split(",") if n]
        apply.assign_texture([o for o in (bpy.data.objects.get(n) for n in names) if o is not None], image)
    apply.show_in_image_editors(image, replace=tuple(item.image for item in settings.batch))


def orphan_folder(job: "JobContext") -> str:
    """Where results of a job whose file was closed go: next to that file, or the temp folder."""
    base = os.path.dirname(job.blend_file) if job.blend_file else tempfile.gettempdir()
    return os.path.join(base, ORPHAN_FOLDER)


def _write_orphan(ctl: "Controller", job: "JobContext", index: int, data: bytes) -> None:
    folder = orphan_folder(job)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{job.job_id or job.client_ref}_{index}.png")
    with open(path, "wb") as f:
        f.write(data)  # the PNG embeds its request: `latentbridge` text chunk
    job.results[index] = path
    source = os.path.basename(job.blend_file) if job.blend_file else "an unsaved file"
    ctl.report("INFO", f"A job from {source} finished after that file was closed: its image is in {path}")


def report_orphan_end(ctl: "Controller", job: "JobContext", state: str, text: str) -> None:
    if state != "done" or not job.results:
        source = os.path.basename(job.blend_file) if job.blend_file else "an unsaved file"
        ctl.report("WARNING" if state != "done" else "INFO", f"A job from {source} ended: {text}")


def _undo_push(message: str) -> None:
    """An undo step for data created outside an operator (results arrive in a timer)."""
    if bpy.app.background:
        return
    try:
        bpy.ops.ed.undo_push(message=message)
    except RuntimeError:
        pass
