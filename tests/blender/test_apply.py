"""Pixels into Blender: preview decode + copy, drain-tick time with a 1024² preview, packed
results with their request surviving save/reopen, texture wiring."""

from __future__ import annotations

import io
import statistics

import numpy as np

import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()
from PIL import Image as PIL  # noqa: E402



def _jpeg(width: int, height: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A smooth preview-like JPEG (a latent upscaled) and its RGB values."""
    rng = np.random.default_rng(seed)
    small = PIL.fromarray((rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8))
    image = small.resize((width, height), PIL.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue(), np.asarray(image)


def test_preview_writer_decodes_and_copies(addon, scene):
    apply = addon["apply"]
    data, rgb = _jpeg(96, 64)
    target = apply.ensure_preview_image(64, 64)
    assert target.is_float
    writer = apply.PreviewWriter()
    writer.begin(data, "jpeg", target)
    assert writer.busy
    assert writer.finish() == target
    assert tuple(target.size) == (96, 64)  # resized to the preview
    pixels = np.empty(96 * 64 * 4, np.float32)
    target.pixels.foreach_get(pixels)
    top_first = pixels.reshape(64, 96, 4)[::-1, :, :3]
    assert np.abs(top_first * 255 - rgb).mean() < 4  # JPEG decode differences only
    assert "Latent Bridge Scratch" not in {i.name for i in addon["bpy"].data.images}


def _running_1024_job(addon, scene):
    """The controller on a fake connection, following one running 1024² job `j1`."""
    ctl_mod = addon["controller"]
    controller = ctl_mod.controller
    fake = lb_blender.FakeConnection(addon["connection"])
    controller.connection = fake
    job = ctl_mod.JobContext("lb-1", scene.name, {"mode": "txt2img", "steps": 8, "width": 1024, "height": 1024}, epoch=controller.epoch)
    job.job_id, job.state = "j1", "running"
    controller.jobs[job.client_ref] = job
    return controller, fake, job


def test_drain_tick_with_1024_previews(addon, scene, capsys):
    """The issue's budget: main-thread work per drain tick ≤ 10 ms with a 1024² preview.
    Each tick runs one stage of a preview (decode, read pixels, write pixels); measured and printed."""
    conn_mod = addon["connection"]
    controller, fake, job = _running_1024_job(addon, scene)
    frames = [_jpeg(1024, 1024, seed)[0] for seed in range(3)]
    stages = {"decode": [], "read": [], "write": []}
    for step in range(1, 9):
        fake.feed(conn_mod.Incoming("preview", header={"kind": "preview", "format": "jpeg", "job_id": "j1", "step": step, "width": 1024, "height": 1024}, data=frames[step % 3]))
        for name in stages:  # one stage per tick
            stages[name].append(controller.drain())
        assert job.previews == step
    preview = addon["bpy"].data.images[addon["apply"].PREVIEW_IMAGE]
    assert tuple(preview.size) == (1024, 1024) and preview.is_float
    idle = [controller.drain() for _ in range(5)]
    every = sorted(ms for values in stages.values() for ms in values)
    with capsys.disabled():
        print("\ndrain tick, 1024² JPEG preview: " + ", ".join(
            f"{name} median {statistics.median(values):.1f} ms (max {max(values):.1f})" for name, values in stages.items())
            + f"; all ticks p90 {every[int(0.9 * (len(every) - 1))]:.1f} ms; idle {max(idle):.2f} ms")
    # Behaviour, not the machine's speed: ticks are split and idle ticks cost nothing.
    assert max(idle) < 1.0
    assert all(statistics.median(values) < 60 for values in stages.values())


def test_drain_tick_with_1024_raw_previews(addon, scene, capsys):
    """Raw previews (a server on this machine) arrive as Blender pixels: the main thread only
    picks one up and writes it with `foreach_set`."""
    conn_mod, wire = addon["connection"], addon["wire"]
    controller, fake, job = _running_1024_job(addon, scene)
    rgb = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    ticks = []
    for step in range(1, 9):
        pixels = wire.raw_preview_pixels(rgb.tobytes(), 1024, 1024)  # the network thread's part
        header = {"kind": "preview", "format": "rgb", "job_id": "j1", "step": step, "width": 1024, "height": 1024}
        fake.feed(conn_mod.Incoming("preview", header=header, pixels=pixels))
        ticks += [controller.drain(), controller.drain()]  # picked up, written
        assert job.previews == step
    written = np.empty(1024 * 1024 * 4, np.float32)
    addon["bpy"].data.images[addon["apply"].PREVIEW_IMAGE].pixels.foreach_get(written)
    top_left = written.reshape(1024, 1024, 4)[-1, 0, :3]  # Blender stores the bottom row first
    assert np.allclose(top_left * 255, rgb[0, 0], atol=0.5)
    with capsys.disabled():
        print(f"\ndrain tick, 1024² raw preview: median {statistics.median(ticks):.1f} ms, max {max(ticks):.1f} ms")
    assert statistics.median(ticks) < 60


def test_latest_preview_wins_in_one_tick(addon, scene):
    ctl_mod, conn_mod = addon["controller"], addon["connection"]
    controller = ctl_mod.controller
    fake = lb_blender.FakeConnection(conn_mod)
    controller.connection = fake
    job = ctl_mod.JobContext("lb-1", scene.name, {"mode": "txt2img"}, epoch=controller.epoch)
    job.job_id = "j1"
    controller.jobs[job.client_ref] = job
    old, _ = _jpeg(64, 64, 1)
    new, rgb = _jpeg(64, 64, 2)
    for data in (old, old, new):
        fake.feed(conn_mod.Incoming("preview", header={"kind": "preview", "format": "jpeg", "job_id": "j1"}, data=data))
    for _ in range(3):
        controller.drain()
    assert job.previews == 1
    preview = addon["bpy"].data.images[addon["apply"].PREVIEW_IMAGE]
    pixels = np.empty(64 * 64 * 4, np.float32)
    preview.pixels.foreach_get(pixels)
    assert np.abs(pixels.reshape(64, 64, 4)[::-1, :, :3] * 255 - rgb).mean() < 4


def _png_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    PIL.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.smoke
def test_packed_result_and_request_survive_save_and_reopen(addon, scene, tmp_path):
    import bpy

    apply = addon["apply"]
    request = {"mode": "txt2img", "prompt": "weathered bronze", "steps": 4, "width": 64, "height": 48}
    image = apply.pack_png(_png_bytes(), "LB txt2img 77", 64, 48)
    apply.store_request(image, request, seed=77, job_id="j9")
    path = str(tmp_path / "result.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert "LB txt2img 77" not in bpy.data.images
    bpy.ops.wm.open_mainfile(filepath=path)
    image = bpy.data.images["LB txt2img 77"]
    assert image.packed_file is not None and tuple(image.size) == (64, 48)
    assert apply.stored_request(image) == {**request, "seed": 77}
    assert image["latentbridge_seed"] == 77 and image["latentbridge_prompt"] == "weathered bronze"
    assert abs(image.pixels[0] - 200 / 255) < 1e-3


def test_texture_wiring_creates_or_reuses_a_material(addon, scene):
    import bpy

    apply = addon["apply"]
    cube = scene.objects["Cube"]
    image = apply.pack_png(_png_bytes(), "tex", 64, 48)
    materials = apply.assign_texture([cube, scene.objects["Camera"]], image)  # the camera is skipped
    assert len(materials) == 1 and cube.active_material is materials[0]
    tree = materials[0].node_tree
    node = tree.nodes[apply.TEXTURE_NODE]
    assert node.image == image and node.extension == "REPEAT"
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert any(l.from_node == node and l.to_socket == bsdf.inputs["Base Color"] for l in tree.links)

    # An existing material is kept: the same node is re-pointed, no duplicate nodes.
    second = apply.pack_png(_png_bytes((0, 0, 255)), "tex2", 64, 48)
    apply.assign_texture([cube], second)
    assert cube.active_material is materials[0]
    assert [n.name for n in tree.nodes].count(apply.TEXTURE_NODE) == 1 and node.image == second
    assert len(bpy.data.materials) == 1
