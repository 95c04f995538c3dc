"""What a Generate with scene controls costs Blender's main thread, at 512² and 1024² (real bpy).

    python bench/bench_capture.py                        # 512 and 1024, 2 rounds each
    python bench/bench_capture.py --sizes 512 --rounds 3 --cycles-samples 8

The scene of bench_passes.py (floor, cube, sphere, Suzanne, cone; five materials); img2img from
the render with all four controls ticked (depth, normal, line art, segmentation) and the inpaint
mask of two selected objects — the largest capture the add-on makes. Three parts, as the add-on
runs them:

- main thread, capture: `capture.render` — the render(s) and reading them back as arrays. A
  Cycles scene: ONE render (colour with the scene's samples + every pass). A Workbench scene: the
  scene's own render for the colour (its look) + one data-only Cycles render (1 sample).
- worker thread: `conditioning.build_uploads` — four maps, the mask, five PNGs, the pixels of the
  "Latent Bridge Control" image.
- main thread, send tick: the drain step that finds the uploads ready: the "Latent Bridge
  Control" image written (`foreach_set`) and the six uploads packed into the .blend.

Medians over --rounds after one warm-up capture per row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_passes  # noqa: E402  (sets the Blender user folders, imports bpy and the add-on's modules)

lb_blender = bench_passes.lb_blender
bpy = bench_passes.bpy
capture = bench_passes.capture
conditioning = lb_blender.source_module("conditioning")
control_images = lb_blender.source_module("control_images")
apply = lb_blender.source_module("apply")
png = bench_passes.png

KINDS = ("depth", "normal", "edges", "segmentation")


def one(scene, specs) -> dict[str, float]:
    wanted = conditioning.passes_needed(specs) | {"object_index"}
    start = time.perf_counter()
    rendered = capture.render(scene, passes=wanted)
    main = time.perf_counter() - start
    job = conditioning.Capture(color=rendered.color, passes=rendered.passes, mask_objects=("Sphere", "Suzanne"),
                               mask_size=rendered.size)
    start = time.perf_counter()
    uploads = conditioning.build_uploads(job, specs)
    worker = time.perf_counter() - start
    start = time.perf_counter()
    control_images.show_pixels(uploads.shown, *uploads.shown_size, kind="bench")
    packed = []
    for role, (data, _fmt) in uploads.images.items():
        w, h = png.png_size(data)
        packed.append(control_images.pack_control_map(data, f"bench {role}", w, h, role) if role.startswith("control.")
                      else apply.pack_png(data, f"bench {role}", w, h))
    send = time.perf_counter() - start
    for image in packed:
        bpy.data.images.remove(image)
    return {"main": main, "worker": worker, "send": send, "renders": rendered.renders}


def row(scene, specs, rounds: int) -> dict[str, float]:
    one(scene, specs)  # warm-up (first render of a kind, first PNG of a size)
    runs = [one(scene, specs) for _ in range(rounds)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cycles-samples", type=int, default=8, help="samples of the Cycles scene's own render")
    args = parser.parse_args()
    scene = bench_passes.build_scene()
    specs = [conditioning.ControlSpec(kind=k) for k in KINDS]
    print(f"Blender {bpy.app.version_string}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}; "
          f"img2img + mask + {len(specs)} controls")
    for size in args.sizes:
        scene.render.resolution_x = scene.render.resolution_y = size
        scene.render.resolution_percentage = 100
        print(f"\n{size}×{size}  (median of {args.rounds}; seconds)")
        print(f"  {'scene engine':34s} {'renders':>7s} {'MAIN capture':>13s} {'worker':>8s} {'MAIN send':>10s}")
        for engine, label in (("BLENDER_WORKBENCH", "Workbench (own look + data render)"),
                              ("CYCLES", f"Cycles {args.cycles_samples} spp (one render)")):
            scene.render.engine = engine
            scene.cycles.samples, scene.cycles.use_denoising = args.cycles_samples, False
            m = row(scene, specs, args.rounds)
            print(f"  {label:34s} {m['renders']:7.0f} {m['main']:13.3f} {m['worker']:8.3f} {m['send']:10.3f}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
