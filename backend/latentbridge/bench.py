"""`latentbridge bench`: what the server costs on top of the engine, measured in one run.

Starts the real server in-process on a free loopback port and, using that server's own Engine for
the direct calls (the weights are loaded once), prints:

- job time through the websocket / direct `Engine.generate` call (previews off in both);
- previews on / off, through the websocket;
- event-loop latency while generating: a task sleeps 5 ms in a loop and records how late it wakes
  (p50/p99/max), i.e. how long any client would wait for the server to notice it.

The default model is the engine's built-in `random-mid` preset (an SD1-style pipeline with random
weights and a UNet of (128, 256, 512) channels, built offline) at 256 px: heavy enough that per-step
costs show up as they would on a real model. `--model tiny` (or any model the engine can load) is
accepted too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .protocol import ErrorCode, LatentBridgeError


class LoopProbe:
    """Sleeps `interval_s` in a loop on the event loop and records how late each wake-up is."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.lateness_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.lateness_ms.append((loop.time() - start - self.interval_s) * 1000.0)

    async def stop(self) -> list[float]:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.lateness_ms


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """`A / B` for timings taken in interleaved rounds: the median of the per-round ratios A_i / B_i
    (every bench script reports its ratios this way, so a machine that drifts during the run
    affects both sides of each ratio alike)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


async def _timed(coro: Any) -> float:
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


async def _serve_and_measure(settings: Any, request: Any, runs: int) -> dict[str, Any]:
    """Start the server, then time direct / websocket / websocket-with-previews jobs in rounds
    (interleaved, so a machine that speeds up or slows down affects all three alike)."""
    from aiohttp import web

    from .client import AsyncClient
    from .server.app import ENGINE_KEY, create_app

    app = create_app(settings)
    engine = app[ENGINE_KEY]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    no_preview = request.model_copy(update={"preview": request.preview.model_copy(update={"decoder": "none"})})
    with_preview = request.model_copy(update={"preview": request.preview.model_copy(update={"decoder": "latent2rgb"})})
    previews = 0

    def count(_data: bytes, _header: Any) -> None:
        nonlocal previews
        previews += 1

    direct, ws, ws_preview, lateness = [], [], [], []
    try:
        async with AsyncClient(url, token=settings.token) as client:
            await _wait_ready(client)
            # The engine is idle between server jobs, so the direct calls may use it (from a thread,
            # as the server's worker does); one warm-up of each path first.
            await asyncio.to_thread(engine.generate, no_preview)
            await client.generate(with_preview)
            for _ in range(runs):
                direct.append(await _timed(asyncio.to_thread(engine.generate, no_preview)))
                probe = LoopProbe()
                probe.start()
                ws.append(await _timed(client.generate(no_preview)))
                ws_preview.append(await _timed(client.generate(with_preview, on_preview=count)))
                lateness += await probe.stop()
    finally:
        await runner.cleanup()
    return {
        "status": engine.status,
        "direct_s": statistics.median(direct),
        "ws_s": statistics.median(ws),
        "ws_preview_s": statistics.median(ws_preview),
        "ws_ratio": paired_ratio(ws, direct),
        "preview_ratio": paired_ratio(ws_preview, ws),
        "previews_per_job": previews / runs,
        "loop_samples": len(lateness),
        "loop_p50_ms": percentile(lateness, 50),
        "loop_p99_ms": percentile(lateness, 99),
        "loop_max_ms": max(lateness) if lateness else float("nan"),
    }


async def _wait_ready(client: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = await client.health()
        state = (health.get("model") or {}).get("state")
        if state == "ready":
            return
        if state == "failed":
            raise LatentBridgeError(f"the bench model failed to load: {(health.get('model') or {}).get('error')}",
                                    field="model", code=ErrorCode.model_load_failed)
        await asyncio.sleep(0.1)
    raise LatentBridgeError(f"the bench model was not ready within {timeout_s:.0f} s", code=ErrorCode.timeout)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from .cli import _Parser  # usage errors in the CLI's one-line format, exit status 2

    parser = _Parser(prog="latentbridge bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random-mid",
                        help="random-mid (default), tiny, or any model the engine can load")
    parser.add_argument("--size", type=_positive, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--steps", type=_positive, default=8, help="sampling steps per job (default 8)")
    parser.add_argument("--runs", type=_positive, default=3, help="timed rounds (each: direct, websocket, websocket with previews); medians reported")
    parser.add_argument("--device", default=None, help="cuda, cpu, ...; automatic when unset")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str]) -> int:
    """Exit status as the CLI's (docs/cli.md): 0, or an error raised as one line by `latentbridge`."""
    args = parse_args(argv)
    # The failure reaches the user once, as the CLI's one-line error, not also as a server log line.
    ours = logging.getLogger("latentbridge")
    level = ours.level
    ours.setLevel(logging.CRITICAL)
    try:
        return _measure(args)
    finally:
        ours.setLevel(level)


def _measure(args: argparse.Namespace) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from .protocol import GenerationRequest
    from .settings import load_settings

    with tempfile.TemporaryDirectory(prefix="latentbridge-bench-") as tmp:
        settings = load_settings(environ={}, model=args.model, data_dir=Path(tmp) / "data", host="127.0.0.1", port=0,
                                 device=args.device)
        request = GenerationRequest(prompt="bench", seed=1, steps=args.steps, width=args.size, height=args.size)
        f = asyncio.run(_serve_and_measure(settings, request, args.runs))

    status = f["status"]
    print(f"model {args.model} ({status.family}, {status.device}, {status.dtype}), {args.size}x{args.size} px, "
          f"{args.steps} steps; medians of {args.runs} interleaved rounds")
    print(f"direct Engine.generate        {f['direct_s'] * 1000:9.1f} ms")
    print(f"job via websocket             {f['ws_s'] * 1000:9.1f} ms   ratio websocket / direct  {f['ws_ratio']:.3f}")
    print(f"job via websocket, previews   {f['ws_preview_s'] * 1000:9.1f} ms   ratio previews / none     "
          f"{f['preview_ratio']:.3f}  ({f['previews_per_job']:.1f} previews per job)")
    print(f"event-loop lateness while generating ({f['loop_samples']} wake-ups of a 5 ms sleep): "
          f"p50 {f['loop_p50_ms']:.2f} ms, p99 {f['loop_p99_ms']:.2f} ms, max {f['loop_max_ms']:.2f} ms")
    return 0
