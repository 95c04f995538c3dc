"""Operators → controller → drain, with a stand-in network thread feeding scripted events."""

from __future__ import annotations

import io
import json

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()
from PIL import Image as PIL  # noqa: E402





def _jpeg(color, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    PIL.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()




def _run_job(addon, fake, job_id="j1", seed=5, size=(64, 64), request=None):
    """Script a whole job for the last submission and drain it."""
    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    lb_blender.flush(ctl)
    _, sent_request, _, ref = fake.sent[-1]
    full = {**sent_request, **(request or {}), "seed": seed}
    events = [
        {"type": "accepted", "job_id": job_id, "client_ref": ref, "position": 0},
        {"type": "started", "job_id": job_id, "seed": seed},
        {"type": "progress", "job_id": job_id, "step": 1, "total": 2, "eta_s": 0.5},
    ]
    for event in events:
        fake.feed(Incoming("event", event))
    fake.feed(Incoming("preview", header={"kind": "preview", "format": "jpeg", "job_id": job_id, "step": 1, "total": 2}, data=_jpeg((0, 255, 0))))
    for _ in range(3):  # preview decoded, read, written: one stage per tick
        ctl.drain()
    fake.feed(Incoming("event", {"type": "result", "job_id": job_id, "index": 0, "seed": seed, "width": size[0], "height": size[1], "request": full}))
    fake.feed(Incoming("result", header={"kind": "result", "format": "png", "job_id": job_id, "index": 0}, data=lb_blender.png_bytes((200, 0, 0), size)))
    fake.feed(Incoming("event", {"type": "done", "job_id": job_id, "count": 1, "elapsed_s": 0.3}))
    ctl.drain()
    return ctl.by_job_id(job_id)


def test_txt2img_flow_updates_progress_preview_and_packs_the_result(addon, scene, fake):
    import bpy

    settings = scene.latentbridge
    settings.prompt, settings.steps, settings.random_seed, settings.seed = "bronze", 2, False, 5
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    _, request, images, _ = fake.sent[-1]
    assert request["prompt"] == "bronze" and request["seed"] == 5 and images == {}
    assert settings.running

    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    ref = fake.sent[-1][3]
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "j1", "client_ref": ref, "position": 0}))
    fake.feed(Incoming("event", {"type": "progress", "job_id": "j1", "step": 1, "total": 2, "eta_s": 0.5}))
    ctl.drain()
    assert (settings.step, settings.total, settings.eta) == (1, 2, 0.5) and settings.progress == 0.5
    fake.sent.append(("submit", request, images, ref))  # _run_job scripts the rest of this job
    job = _run_job(addon, fake, seed=5)

    assert job.state == "done" and job.previews == 1
    preview = bpy.data.images["Latent Bridge Preview"]
    assert preview.pixels[1] > 0.9 and preview.pixels[0] < 0.1  # the green preview was applied
    result = bpy.data.images[settings.last_result]
    assert result.packed_file is not None and result["latentbridge_seed"] == 5
    assert json.loads(result["latentbridge_request"])["prompt"] == "bronze"
    assert not settings.running and settings.progress == 1.0 and settings.last_seed == 5
    assert ("INFO", "Done: 1 image(s) in 0.3 s") in ctl.messages


def test_texture_flow_wires_preview_then_result(addon, scene, fake):
    import bpy

    cube = scene.objects["Cube"]
    assert cube.active_material is None
    settings = scene.latentbridge
    settings.seamless, settings.size_mode, settings.width, settings.height = "xy", "CUSTOM", 64, 64
    assert bpy.ops.latentbridge.generate_texture() == {"FINISHED"}
    request = fake.sent[-1][1]
    assert request["seamless"] == "xy" and request["mode"] == "txt2img"
    node = cube.active_material.node_tree.nodes["Latent Bridge Texture"]
    assert node.image.name == "Latent Bridge Preview"  # live preview on the object while generating
    _run_job(addon, fake, seed=9)
    assert node.image.name == settings.last_result and node.image["latentbridge_texture"]
    assert node.extension == "REPEAT"


def test_img2img_inpaint_send_their_images_and_regenerate_repeats_them(addon, scene, fake):
    import bpy

    png = addon["png"]
    settings = scene.latentbridge
    settings.mode, settings.source, settings.mask_source = "inpaint", "RENDER", "OBJECTS"
    settings.random_seed, settings.seed = False, 11
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    lb_blender.flush()  # the render's PNGs are made on the worker thread
    _, request, images, _ = fake.sent[-1]
    assert request["mode"] == "inpaint" and set(images) == {"init", "mask"}
    assert png.png_size(images["init"][0]) == png.png_size(images["mask"][0]) == (64, 64)
    _run_job(addon, fake, seed=11)
    result = bpy.data.images[settings.last_result]
    init_image = bpy.data.images[result["latentbridge_init"]]
    assert bytes(init_image.packed_file.data) == images["init"][0]

    assert bpy.ops.latentbridge.regenerate(image=result.name) == {"FINISHED"}
    _, again, again_images, _ = fake.sent[-1]
    assert again["seed"] == 11 and again["mode"] == "inpaint" and again_images == images


def test_outpaint_result_has_the_extended_size(addon, scene, fake):
    import bpy

    settings = scene.latentbridge
    settings.mode, settings.source = "outpaint", "RENDER"
    settings.outpaint_right = 32
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    lb_blender.flush()
    assert fake.sent[-1][1]["outpaint"] == {"left": 0, "top": 0, "right": 32, "bottom": 0}
    _run_job(addon, fake, size=(96, 64))
    assert tuple(bpy.data.images[settings.last_result].size) == (96, 64)


def test_refused_submit_and_job_error_are_reported(addon, scene, fake):
    import bpy

    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    settings = scene.latentbridge
    bpy.ops.latentbridge.generate()
    fake.feed(Incoming("event", {"type": "error", "job_id": None, "code": "invalid_request", "message": "request.steps: too many", "field": "request.steps"}))
    ctl.drain()
    assert not settings.running and "request.steps" in settings.error
    assert ctl.messages[-1][0] == "ERROR"

    bpy.ops.latentbridge.generate()
    ref = fake.sent[-1][3]
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "j2", "client_ref": ref, "position": 0}))
    fake.feed(Incoming("event", {"type": "error", "job_id": "j2", "code": "out_of_memory", "message": "out of memory", "field": None}))
    ctl.drain()
    assert "out of memory" in settings.error and not settings.running


def test_cancel_before_and_after_accept(addon, scene, fake):
    import bpy

    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    settings = scene.latentbridge
    bpy.ops.latentbridge.generate()
    ref = fake.sent[-1][3]
    assert bpy.ops.latentbridge.cancel() == {"FINISHED"}  # not accepted yet: cancelled on accept
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "j3", "client_ref": ref, "position": 0}))
    ctl.drain()
    assert fake.sent[-1] == ("cancel", "j3")
    fake.feed(Incoming("event", {"type": "cancelled", "job_id": "j3"}))
    ctl.drain()
    assert settings.status == "Cancelled" and not settings.running
    assert not bpy.ops.latentbridge.cancel.poll()  # nothing left: F3 search does not offer Cancel


def test_connection_loss_keeps_the_last_preview(addon, scene, fake):
    import bpy

    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    bpy.ops.latentbridge.generate()
    ref = fake.sent[-1][3]
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "j4", "client_ref": ref, "position": 0}))
    fake.feed(Incoming("preview", header={"kind": "preview", "format": "jpeg", "job_id": "j4"}, data=_jpeg((0, 0, 255))))
    for _ in range(3):
        ctl.drain()
    fake.feed(Incoming("state", {"state": "RETRYING", "status": "Connection to the server dropped; 1 job(s) will be re-attached"}))
    fake.state = "RETRYING"
    ctl.drain()
    assert "dropped" in addon["feedback"].progress_text(scene.latentbridge) and scene.latentbridge.running
    fake.state = "CONNECTED"
    assert bpy.data.images["Latent Bridge Preview"].pixels[2] > 0.9
    # Re-attached: the server says it finished meanwhile and re-sends the result.
    fake.feed(Incoming("event", {"type": "status", "job_id": "j4", "state": "done", "result_count": 1}))
    fake.sent.append(("submit", {"mode": "txt2img"}, {}, ref))
    job = _run_job(addon, fake, job_id="j4")
    assert job.state == "done" and len(job.results) == 1


def test_model_events_show_download_progress_and_failure(addon, scene, fake):
    import bpy

    ctl = addon["controller"].controller
    Incoming = addon["connection"].Incoming
    scene.latentbridge.prompt = "bronze"
    bpy.ops.latentbridge.generate()
    ref = fake.sent[-1][3]
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "j9", "client_ref": ref, "position": 0}))
    fake.feed(Incoming("event", {"type": "model", "model": {"name": "acme/xl", "state": "downloading", "progress": 0.42}}))
    ctl.drain()
    assert ctl.conn_status == "Connected: latentbridge/test, model acme/xl (downloading 42%)"
    assert scene.latentbridge.status == "Waiting for the model acme/xl (downloading 42%)"
    fake.feed(Incoming("event", {"type": "model", "model": {"name": "acme/xl", "state": "failed", "error": "disk full"}}))
    ctl.drain()
    assert "failed: disk full" in ctl.conn_status
    assert ("ERROR", "Latent Bridge: model acme/xl (failed: disk full)") in ctl.messages
