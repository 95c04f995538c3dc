"""Time to capture the exact render passes at 512² and 1024², measured in one run (real bpy).

    python bench/bench_passes.py                 # 512 and 1024, 3 rounds each
    python bench/bench_passes.py --sizes 256 512 --rounds 5

For each size, on a small but ordinary scene (floor, cube, smooth sphere, Suzanne, a cone; sun
and world light; five materials, Workbench as the scene engine):

- main thread: `passes.render_passes` — the one Cycles render plus saving and reading the passes
  (and the colour) back as arrays; this part blocks Blender's UI, as any render does.
- off the main thread: `control_maps.build_maps` (depth, normal, segmentation, edges) plus PNG
  encoding of every map and of the colour, i.e. what goes on the wire.
- total = both.

Rows: data passes only (1 sample, no bounces), and with the colour at passes.COLOR_SAMPLES (8)
samples, denoiser off and on.
Figures are medians over --rounds after one warm-up render (the first Cycles render of a session
may cost more; it is printed separately). For reference: the scene's own Workbench render of the
colour as a PNG (`capture.render_png`), what a Workbench scene's colour costs beside its data
render. bench_capture.py measures a whole Generate's capture as the add-on runs it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_home = tempfile.mkdtemp(prefix="latentbridge-bench-home-")
for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data")):
    os.environ[var] = os.path.join(_home, sub)  # `import bpy` writes here; keep the user's untouched

sys.path.insert(0, str(ROOT / "tests" / "blender"))
import lb_blender  # noqa: E402

import bpy  # noqa: E402  (bmesh exists only once bpy is imported)
import bmesh  # noqa: E402

passes = lb_blender.source_module("passes")
control_maps = lb_blender.source_module("control_maps")
capture = lb_blender.source_module("capture")
png = lb_blender.source_module("png")

DATA = {"depth", "normal", "object_index", "material_index"}


def build_scene() -> bpy.types.Scene:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.cycles.device = "CPU"
    world = bpy.data.worlds.new("World")
    world.color = (0.2, 0.25, 0.3)
    scene.world = world

    def add(name, make, location, colour):
        mesh = bpy.data.meshes.new(name)
        bm = bmesh.new()
        make(bm)
        bm.to_mesh(mesh)
        bm.free()
        for polygon in mesh.polygons:
            polygon.use_smooth = name in ("Sphere", "Suzanne")
        material = bpy.data.materials.new(name + " Material")
        material.diffuse_color = colour
        mesh.materials.append(material)
        obj = bpy.data.objects.new(name, mesh)
        obj.location = location
        scene.collection.objects.link(obj)
        return obj

    add("Floor", lambda bm: bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=8.0), (0, 0, -1), (0.6, 0.6, 0.6, 1))
    add("Cube", lambda bm: bmesh.ops.create_cube(bm, size=1.6), (-2.2, 0.5, -0.2), (0.8, 0.2, 0.2, 1))
    add("Sphere", lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=64, v_segments=32, radius=1.0), (0.0, 0.0, 0.0), (0.2, 0.6, 0.9, 1))
    add("Suzanne", lambda bm: bmesh.ops.create_monkey(bm), (2.2, -0.3, 0.0), (0.9, 0.7, 0.2, 1))
    add("Cone", lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=48, radius1=0.8, radius2=0.0, depth=2.0), (0.5, 2.5, 0.0), (0.3, 0.8, 0.3, 1))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (0.6, 0.2, 0.8)
    scene.collection.objects.link(sun)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location = (0.0, -9.0, 4.0)
    camera.rotation_euler = (1.15, 0.0, 0.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    for obj in scene.objects:
        obj.select_set(obj.name in ("Sphere", "Suzanne"))
    return scene


def off_main_thread(result, kinds) -> float:
    start = time.perf_counter()
    maps = control_maps.build_maps(result, kinds)
    for image in maps.values():
        png.encode_png(image)
    if "color" in result.arrays:
        png.encode_png(control_maps.color_rgb8(result.arrays["color"]))
    if "object_index" in result.arrays:
        png.encode_png(png.float_to_uint8(result.object_mask(["Sphere", "Suzanne"]).astype("float32")))
    return time.perf_counter() - start


def measure(scene, size: int, wanted: set[str], denoise: bool, rounds: int) -> dict[str, float]:
    scene.cycles.use_denoising = denoise
    rows: dict[str, list[float]] = {}
    for _ in range(rounds):
        stages: dict[str, float] = {}
        start = time.perf_counter()
        result = passes.render_passes(scene, wanted, size=(size, size), timings=stages)
        main = time.perf_counter() - start
        off = off_main_thread(result, control_maps.MAP_KINDS)
        for key, value in {**stages, "main": main, "off": off, "total": main + off}.items():
            rows.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in rows.items()}


def reference(scene, size: int, rounds: int) -> float:
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    capture.render_png(scene)  # warm-up: the first Workbench render also starts its GL context
    colour = []
    for _ in range(rounds):
        start = time.perf_counter()
        capture.render_png(scene)
        colour.append(time.perf_counter() - start)
    return statistics.median(colour)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scene = build_scene()
    print(f"Blender {bpy.app.version_string}, Cycles on CPU ({os.cpu_count()} cores visible, load average "
          f"{os.getloadavg()[0]:.1f}), scene engine Workbench")
    start = time.perf_counter()
    passes.render_passes(scene, DATA, size=(64, 64))
    print(f"first Cycles render of the session (64², data passes): {time.perf_counter() - start:.2f} s")
    rows = [
        ("data passes only (1 spp)", DATA, False),
        ("colour 8 spp + data, denoiser off", DATA | {"color"}, False),
        ("colour 8 spp + data, denoiser on", DATA | {"color"}, True),
    ]
    for size in args.sizes:
        print(f"\n{size}×{size}  (median of {args.rounds}; seconds)")
        print(f"  {'':38s} {'render':>7s} {'passes':>7s} {'colour':>7s} {'MAIN':>7s} {'maps+png':>9s} {'TOTAL':>7s}")
        for label, wanted, denoise in rows:
            m = measure(scene, size, wanted, denoise, args.rounds)
            print(f"  {label:38s} {m['render']:7.3f} {m['passes']:7.3f} {m.get('color', 0.0):7.3f} "
                  f"{m['main']:7.3f} {m['off']:9.3f} {m['total']:7.3f}")
        print(f"  reference: the scene's own Workbench render → PNG {reference(scene, size, args.rounds):.3f} s")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
