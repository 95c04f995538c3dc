"""Live mode's loop on this computer: real Blender (bpy), the installed add-on and a real
`latentbridge serve --model tiny`, through the websocket.

An "artist" moves the cube every `--change-ms` (a depsgraph change, as a drag in the viewport
makes) for `--seconds`; the live tick runs every 10 ms, as its Blender timer does (timers never
fire in bpy as a module, so this loop calls it). bpy as a module has no GPU context, so captures
are the Workbench fallback (a render of the camera at the live size): a window with a 3D view
draws offscreen instead, which is faster. Printed:

- frames/s: live results applied per second;
- capture → result-applied latency p50 / p95, and each stage's share of the mean: capture (the
  main thread's render), outbox (waiting in the add-on for the in-flight frame), server wait,
  the server's stages (decode, setup, denoise, vae, encode), network + thread hand-offs, apply;
- frames dropped as stale (add-on: replaced while one was in flight; server: replaced in its
  pending slot) and stale frames rendered (server's own count, and results older than one already
  shown; both must be 0);
- the main thread's worst tick (and p99, median) while live runs.

    PYTHONPATH=backend python bench/bench_live.py [--seconds 20] [--size 128] [--change-ms 30]
"""

from __future__ import annotations

import argparse
import importlib
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

import bpy  # noqa: E402  (before the helpers: they enable the add-on in this Blender)
import lb_blender  # noqa: E402
from lb_server import ServerProcess, point_prefs_at, pump  # noqa: E402

STAGES = ("capture", "build", "outbox", "server_wait", "server_decode", "server_setup", "server_denoise", "server_vae",
          "server_encode", "network", "apply")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(addon, server: ServerProcess, seconds: float, size: int, change_ms: float) -> dict:
    controller = addon["controller"].controller
    live = importlib.import_module(lb_blender.ADDON_MODULE + ".live")
    controller.reset()
    scene = lb_blender.reset_scene()
    point_prefs_at(server.url, server.token)
    bpy.ops.latentbridge.connect()
    pump(controller, lambda: controller.conn_state == "CONNECTED", 30, "the hello handshake")
    settings, options = scene.latentbridge, scene.latentbridge_live
    settings.prompt, settings.random_seed, settings.seed = "weathered bronze statue", False, 7
    options.size, options.max_fps, options.preset = size, 120, "turbo"
    stopped: list[dict] = []
    on_event = controller.handlers["live"]

    def watch(item) -> None:
        if item.event.get("type") == "live_stopped":
            stopped.append(item.event)
        on_event(item)

    controller.handlers["live"] = watch
    try:
        assert bpy.ops.latentbridge.live_toggle() == {"FINISHED"}
        deadline = time.monotonic() + 120
        while live.state.applied < 1:  # warm-up: the session's first result
            live.tick()
            time.sleep(0.01)
            assert time.monotonic() < deadline, scene.latentbridge_live.status
        box = controller.connection.live
        status = scene.latentbridge_live.status
        base = {"applied": live.state.applied, "latencies": len(live.state.latencies), "captured": box.captured,
                "dropped": box.dropped, "sent": box.sent}
        cube = bpy.data.objects["Cube"]
        ticks: list[float] = []
        shown: list[int] = []
        start = last_change = time.monotonic()
        step = 0
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if (now - last_change) * 1000.0 >= change_ms:
                step += 1
                cube.location.x = 0.8 * ((step % 40) / 20.0 - 1.0)
                cube.rotation_euler.z = step * 0.05
                bpy.context.view_layer.update()  # Blender's event loop evaluates after a change: this runs the handlers
                last_change = now
            before = live.state.applied
            ticks.append(live.tick())
            if live.state.applied > before:
                shown.append(live.state.latencies[-1]["frame"])
            time.sleep(max(0.0, live.TICK_S - ticks[-1] / 1000.0))
        elapsed = time.monotonic() - start
        records = live.state.latencies[base["latencies"]:]
        counts = {k: getattr(box, k) - base[k] for k in ("captured", "dropped", "sent")}
        assert bpy.ops.latentbridge.live_toggle() == {"FINISHED"}
        pump(controller, lambda: bool(stopped), 30, "live_stopped")
    finally:
        controller.handlers["live"] = on_event
        if live.running():
            live.stop()
        controller.reset()
    return {"elapsed": elapsed, "applied": live.state.applied - base["applied"], "records": records, "ticks": ticks,
            "counts": counts, "server": stopped[-1]["frames"], "shown": shown, "changes": step,
            "note": live.state.note, "status": status}


def report(result: dict, size: int) -> None:
    records, ticks = result["records"], result["ticks"]
    totals = [r["total"] for r in records]
    print(f"frames/s: {result['applied'] / result['elapsed']:.1f} ({result['applied']} results applied in "
          f"{result['elapsed']:.1f} s; {result['changes']} scene changes)")
    print(f"capture -> result applied: p50 {statistics.median(totals):.0f} ms, p95 {percentile(totals, 0.95):.0f} ms")
    mean_total = statistics.fmean(totals)
    shares = ", ".join(f"{stage} {statistics.fmean(r.get(stage, 0.0) for r in records):.1f} ms "
                       f"({100.0 * statistics.fmean(r.get(stage, 0.0) for r in records) / mean_total:.0f}%)"
                       for stage in STAGES)
    print(f"  stages (mean {mean_total:.0f} ms): {shares}")
    counts, server = result["counts"], result["server"]
    older = sum(1 for a, b in zip(result["shown"], result["shown"][1:]) if b < a)
    print(f"add-on: {counts['captured']} captured, {counts['sent']} sent, {counts['dropped']} dropped as stale "
          f"(replaced while one was in flight)")
    print(f"server (whole session): {server['received']} received, {server['rendered']} rendered, "
          f"{server['dropped']} dropped as stale, {server['stale_rendered']} stale rendered, {server['failed']} failed; "
          f"results older than one already shown: {older}")
    print(f"main-thread tick while live runs: max {max(ticks):.1f} ms, p99 {percentile(ticks, 0.99):.1f} ms, "
          f"median {statistics.median(ticks):.2f} ms over {len(ticks)} ticks (capture ticks included)")
    print(f"session: {result['status']}; capture: {result['note']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=128, help="longest side of the live frames")
    parser.add_argument("--change-ms", type=float, default=30.0, help="how often the scene changes")
    args = parser.parse_args()
    addon = lb_blender.install_addon()
    data = Path(tempfile.mkdtemp(prefix="latentbridge-bench-")) / "data"
    data.mkdir()
    server = ServerProcess(data)
    server.extra_args = ["--taesd", "tiny-taesd"]  # the fast decoder, as a real setup has (docs/live.md)
    server.start()
    try:
        print(f"Blender {bpy.app.version_string}, live on `tiny` (Turbo preset, 1 step, TAESD), {args.size} px, "
              f"the cube moved every {args.change_ms:.0f} ms for {args.seconds:.0f} s")
        report(run(addon, server, args.seconds, args.size, args.change_ms), args.size)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
