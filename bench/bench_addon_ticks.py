"""Main-thread cost of the add-on while a job streams 1024² previews at every step.

Real Blender (bpy), the installed add-on and a real `latentbridge serve --model tiny` (previews
at every step: `--preview-interval-s 0`). The drain step is called every 50 ms, as Blender's
timer does, and each tick is timed. Printed: median, p95 and max of the ticks that applied
something, for raw RGB previews (a server on this computer) and JPEG previews (a remote server).

    PYTHONPATH=backend python bench/bench_addon_ticks.py [--steps 12] [--size 1024]
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
for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
    os.environ[var] = os.path.join(_home, var.lower())
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [str(ROOT / "tests" / "e2e"), str(ROOT / "tests" / "blender")]

import bpy  # noqa: E402,F401  (before the helpers: they enable the add-on in this Blender)
import lb_blender  # noqa: E402
from lb_server import ServerProcess, point_prefs_at  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(addon, server: ServerProcess, steps: int, size: int, raw: bool) -> list[float]:
    ctl_mod = addon["controller"]
    controller = ctl_mod.controller
    controller.reset()
    scene = lb_blender.reset_scene()
    point_prefs_at(server.url, server.token)
    settings = scene.latentbridge
    settings.mode, settings.steps, settings.random_seed, settings.seed = "txt2img", steps, False, 3
    settings.size_mode, settings.width, settings.height, settings.preview_size = "CUSTOM", size, size, size
    chosen = ctl_mod.preview_format
    if not raw:  # as from a server on another computer: JPEG previews, decoded in Blender
        ctl_mod.preview_format = lambda url: "jpeg"
    try:
        bpy.ops.latentbridge.generate()
        job = list(controller.jobs.values())[-1]
        preview_ticks: list[float] = []  # ticks that ran a stage of a preview (decode, read, write)
        all_ticks: list[float] = []
        deadline = time.monotonic() + 600
        while not job.finished and time.monotonic() < deadline:
            before = controller.writer.busy
            ms = controller.drain()
            all_ticks.append(ms)
            if before or controller.writer.busy:
                preview_ticks.append(ms)
            time.sleep(0.05)  # Blender's timer interval while a job runs
        assert job.state == "done", (job.state, job.error)
        print(f"  {job.previews} previews applied for {steps} steps; every tick: max {max(all_ticks):.1f} ms over {len(all_ticks)}")
        return preview_ticks
    finally:
        ctl_mod.preview_format = chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    addon = lb_blender.install_addon()
    data = Path(tempfile.mkdtemp(prefix="latentbridge-bench-")) / "data"
    data.mkdir()
    server = ServerProcess(data)
    server.extra_args = ["--preview-interval-s", "0"]
    server.start()
    try:
        print(f"Blender {bpy.app.version_string}, {args.size}² txt2img, {args.steps} steps, a preview every step")
        for raw in (True, False):
            ticks = run(addon, server, args.steps, args.size, raw)
            label = "raw RGB (same computer)" if raw else "JPEG (remote server)"
            print(f"drain tick applying a {args.size}² preview, {label}: median {statistics.median(ticks):.1f} ms, "
                  f"p95 {percentile(ticks, 0.95):.1f} ms, max {max(ticks):.1f} ms over {len(ticks)} ticks")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
