"""Multi-view projection on the CPU: 6 views (4 on an orbit + top + bottom) of 1024² each,
projected into a 2048² texture of a cube whose faces are UV islands, blended, filled and
dilated. Prints the time of each stage, the total, and the longest single slice when the same
work runs in slices; then the same work as Project Texture runs it — on the add-on's worker
thread (each view projected, the live partial texture blended after each, the bake, the PNG) —
while the main thread ticks every 50 ms as Blender's timer does: the worst tick and the worst
lateness of a tick are what the artist would feel.

    PYTHONPATH=backend python bench/bench_projection.py [--views 1024] [--texture 2048] [--supersample 1]

The UV "renders" are built analytically (ray–box intersection) and not timed: in Blender each
is one Cycles render.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "projection"))
import synthetic as syn  # noqa: E402  (the analytic cube and the known image)

lb = syn.lb_blender
views = lb.source_module("views")
multiview = lb.source_module("multiview")
slices = lb.source_module("slices")
texture_views = lb.source_module("texture_views")
worker_mod = lb.source_module("worker")
conditioning = lb.source_module("conditioning")
bake_mod = lb.source_module("bake")


def scene(view_size: int, supersample: int):
    cameras = views.orbit_views((0, 0, 0), 3 ** 0.5, 4, elevation_deg=20, top=True, bottom=True, width=view_size, height=view_size)
    out = []
    for i, camera in enumerate(cameras):
        rc = camera.with_resolution(view_size * supersample, view_size * supersample)
        image = np.roll(syn.pattern_image(view_size, view_size), i * 37, axis=1)  # each view its own picture
        out.append((image, syn.cube_surface(rc), rc))
    return out


def timed(label: str, steps, budget_s: float | None = None):
    """Run a generator of slices; returns (result, seconds, longest slice seconds)."""
    runner = slices.Sliced(steps)
    start = time.perf_counter()
    while not runner.tick(0.0 if budget_s is None else budget_s):
        pass
    elapsed = time.perf_counter() - start
    print(f"  {label:<34} {elapsed * 1000:8.0f} ms   longest slice {runner.longest_slice_s * 1000:6.1f} ms   ({runner.slices} slices)")
    return runner.result, elapsed, runner.longest_slice_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=1024, help="generated view size (px)")
    parser.add_argument("--texture", type=int, default=2048, help="texture size (texels)")
    parser.add_argument("--supersample", type=int, default=1, help="UV render pixels per view pixel")
    parser.add_argument("--rows", type=int, default=None, help="UV render rows per projection slice (default ~64 k pixels)")
    args = parser.parse_args()
    start = time.perf_counter()
    data = scene(args.views, args.supersample)
    print(f"6 views {args.views}² (UV renders {args.views * args.supersample}²), texture {args.texture}², "
          f"margin 16 px  [synthetic renders built in {time.perf_counter() - start:.1f} s, not counted]")
    size = args.texture
    tris = syn.cube_triangles()
    bake = multiview.TextureBake(size, size, uv_triangles=tris)
    _, t_island, s_island = timed("UV islands (rasterise)", bake.prepare_steps())
    t_views, s_views = 0.0, 0.0
    for i, (image, surface, camera) in enumerate(data):
        _, t, s = timed(f"project view {i + 1}", bake.add_view_steps(image, surface, camera, rows_per_step=args.rows))
        t_views += t
        s_views = max(s_views, s)
    result, t_finish, s_finish = timed("blend + fill + dilate + background", bake.finish_steps(margin_px=16))
    total = t_island + t_views + t_finish
    longest = max(s_island, s_views, s_finish)
    island = result.island
    print(f"  island texels {island.mean() * 100:.1f} %, unseen island texels {result.unseen.sum() / max(1, island.sum()) * 100:.2f} % (filled)")
    print(f"TOTAL projection + blend + fill: {total:.2f} s  (views {t_views:.2f} s, {t_views / len(data) * 1000:.0f} ms/view)")
    print(f"LONGEST SINGLE SLICE: {longest * 1000:.1f} ms")
    # The same work in one go, no slicing overhead, for comparison.
    start = time.perf_counter()
    slices.run(multiview.bake_steps(size, size, data, uv_triangles=tris, margin_px=16, rows_per_step=1 << 30))
    print(f"one pass without slicing: {time.perf_counter() - start:.2f} s")
    as_the_addon_runs_it(data, size, tris)


def as_the_addon_runs_it(data, size: int, tris) -> None:
    """The projection's worker tasks in order (as texture_project.py submits them) while the main
    thread runs 50 ms timer ticks; each tick does what an idle drain does (a little Python)."""
    bakes = [multiview.TextureBake(size, size, uv_triangles=tris)]
    worker = worker_mod.Worker("bench-work")

    def islands():
        for bake in bakes:
            yield from bake.prepare_steps()

    specs = [conditioning.ControlSpec(kind="depth")]
    tasks = [(islands, ())]
    for image, surface, camera in data:  # each view: its inputs (depth map, init + mask), then its projection
        view_size = (image.shape[1], image.shape[0])
        tasks.append((texture_views.view_inputs, (bakes, surface, view_size, specs)))
        tasks.append((texture_views.project_view_steps, (bakes, image, surface, camera)))
    tasks += [(texture_views.finish_all_steps, (bakes,)), (None, ())]
    ticks, late = [], []
    start = time.perf_counter()
    for fn, args in tasks:
        if fn is None:  # the PNG of the finished texture
            task = worker.submit(lambda: [texture_views.encode_texture(r.texture) for r in results], label="encode")
        elif fn is texture_views.finish_all_steps:
            task = worker.submit(fn, *args, margin_px=16, label="bake")
        elif fn is texture_views.view_inputs:
            task = worker.submit(fn, *args, consistent=True, grow_px=8, label="inputs")
        else:
            task = worker.submit(fn, *args, label=getattr(fn, "__name__", "task"))
        while not task.done:
            due = time.perf_counter() + 0.05
            time.sleep(0.05)
            t0 = time.perf_counter()
            late.append(t0 - due)
            sum(len(str(i)) for i in range(200))  # an idle drain's worth of Python
            ticks.append(time.perf_counter() - t0)
        value = task.result()
        if fn is texture_views.finish_all_steps:
            results = value
    total = time.perf_counter() - start
    worker.stop()
    print(f"AS THE ADD-ON RUNS IT (worker thread: per view its depth map + init/mask, its projection + the live "
          f"texture; the bake; the PNG): {total:.2f} s; "
          f"main thread: {len(ticks)} ticks of 50 ms, WORST TICK {max(ticks) * 1000:.2f} ms, "
          f"worst lateness {max(late) * 1000:.1f} ms (median {sorted(late)[len(late) // 2] * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
