"""Scale-out on Ray Serve: throughput with 1 vs 2 engine replicas, and one job's overhead through Ray.

A local Ray instance on this machine (CPU replicas of the tiny model, 1 CPU each), the real
front-end (`create_cluster_app` + `serve()`, as `latentbridge serve --ray` runs it) and the real
single-machine server, both driven over the websocket by the Python SDK. Printed, from one run:

- throughput: `--jobs` tiny jobs submitted at once, with 1 and with 2 replicas (jobs/s and ratio);
- overhead: one job at a time (`--repeats` of them, median latency from submit to the last
  result), through Ray with one replica vs the single-machine server with the same torch thread
  count as a 1-CPU replica (ratio, and the difference in ms).

    PYTHONPATH=backend python bench/bench_ray.py [--jobs 50] [--steps 4] [--size 64] [--repeats 15]

The ratios depend on the cores free: on a 2-core machine, 2 replicas can at best double a 1-CPU
replica's throughput, less whatever the front-end and Ray's own processes take.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Ray's token authentication with the token in the environment: nothing written to ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

import latentbridge  # noqa: E402
from latentbridge.client import AsyncClient  # noqa: E402
from latentbridge.protocol import GenerationRequest  # noqa: E402
from latentbridge.settings import Settings  # noqa: E402


def settings_for(data: Path, replicas: int = 1, ray: str | None = "bench") -> Settings:
    return Settings(model="tiny", data_dir=data, port=0, preview_interval_s=0.5, max_queue=256,
                    ray=ray, ray_min_replicas=replicas, ray_max_replicas=replicas, ray_gpus_per_replica=0,
                    ray_cpus_per_replica=1, ray_app=f"bench-{replicas}")


@contextlib.asynccontextmanager
async def server(settings: Settings, app: Any):
    """The real server on a free port; yields its URL once the engine is ready."""
    from latentbridge.server import serve
    from latentbridge.server.app import ENGINE_KEY

    started: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, app=app, started=started, own_loop=False))
    site = await asyncio.wait_for(started, 120)
    deadline = time.monotonic() + 300
    while app[ENGINE_KEY].status.state.value != "ready":
        if app[ENGINE_KEY].status.state.value == "failed" or time.monotonic() > deadline:
            raise SystemExit(f"the engine did not come up: {app[ENGINE_KEY].status}")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{site.addresses[0][1]}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def request(args: argparse.Namespace, seed: int) -> GenerationRequest:
    return GenerationRequest(prompt="weathered bronze", steps=args.steps, width=args.size, height=args.size,
                             seed=seed, guidance=1.0)


async def throughput(url: str, args: argparse.Namespace) -> float:
    """Jobs per second for `args.jobs` jobs submitted at once (after one warm-up job)."""
    async with AsyncClient(url) as client:
        await asyncio.wait_for(client.generate(request(args, 0)), 300)
        began = time.perf_counter()
        jobs = [await client.submit(request(args, seed)) for seed in range(args.jobs)]
        await asyncio.wait_for(asyncio.gather(*(job.wait() for job in jobs)), 1800)
        return args.jobs / (time.perf_counter() - began)


async def latency(url: str, args: argparse.Namespace) -> float:
    """Median seconds from submit to the last result, one job at a time (after two warm-ups)."""
    async with AsyncClient(url) as client:
        times = []
        for seed in range(args.repeats + 2):
            began = time.perf_counter()
            await asyncio.wait_for(client.generate(request(args, seed)), 300)
            times.append(time.perf_counter() - began)
        return statistics.median(times[2:])


async def on_ray(data: Path, replicas: int, args: argparse.Namespace, measure) -> float:
    from ray import serve

    from latentbridge.cluster import create_cluster_app
    from latentbridge.cluster.deploy import engine_app

    settings = settings_for(data / f"ray-{replicas}", replicas)
    handle = serve.run(engine_app(settings), name=settings.ray_app, route_prefix=None)
    try:
        async with server(settings, create_cluster_app(settings, handle=handle)) as url:
            return await measure(url, args)
    finally:
        serve.delete(settings.ray_app)


async def single_machine(data: Path, args: argparse.Namespace, measure) -> float:
    import torch

    from latentbridge.server.app import create_app

    settings = settings_for(data / "local", ray=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a 1-CPU Ray replica gets (Ray sets OMP_NUM_THREADS=1)
    try:
        async with server(settings, create_app(settings)) as url:
            return await measure(url, args)
    finally:
        torch.set_num_threads(threads)


async def main_async(args: argparse.Namespace, data: Path) -> None:
    print(f"{args.jobs} jobs of {args.steps} steps at {args.size} px, tiny model, CPU replicas (1 CPU each), "
          f"{os.cpu_count()} cores", flush=True)
    one = await on_ray(data, 1, args, throughput)
    two = await on_ray(data, 2, args, throughput)
    print(f"throughput, 1 replica : {one:6.2f} jobs/s")
    print(f"throughput, 2 replicas: {two:6.2f} jobs/s")
    print(f"throughput ratio 2/1 replicas: {two / one:.2f}", flush=True)
    through_ray = await on_ray(data, 1, args, latency)
    local = await single_machine(data, args, latency)
    print(f"one job, single-machine server: {local * 1000:7.1f} ms (median of {args.repeats})")
    print(f"one job, through Ray (1 replica): {through_ray * 1000:7.1f} ms (median of {args.repeats})")
    print(f"overhead ratio Ray/single-machine: {through_ray / local:.2f} (+{(through_ray - local) * 1000:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpus", type=int, default=max(2, os.cpu_count() or 2),
                        help="logical CPUs of the local Ray instance")
    args = parser.parse_args()
    import ray
    from ray import serve

    temp = tempfile.mkdtemp(prefix="lbray-")  # Ray's socket paths must stay short
    package = str(Path(latentbridge.__file__).resolve().parents[1])
    ray.init(num_cpus=args.cpus, num_gpus=0, include_dashboard=False, logging_level="WARNING", _temp_dir=temp,
             runtime_env={"env_vars": {"PYTHONPATH": package, "HF_HUB_OFFLINE": "1",
                                       "TRANSFORMERS_VERBOSITY": "error"}})
    serve.start(proxy_location="Disabled")
    data = Path(tempfile.mkdtemp(prefix="latentbridge-bench-ray-"))
    try:
        asyncio.run(main_async(args, data))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
