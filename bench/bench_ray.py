"""Scale-out on Ray Serve: throughput with 1 vs 2 engine replicas, and one job's overhead through Ray.

A local Ray instance on this machine (CPU replicas of the tiny model, 1 CPU each), the real
front-end (`create_cluster_app` + `serve()`, as `latentbridge serve --ray` runs it) and the real
single-machine server, both driven over the websocket by the Python SDK. Printed, from one run:

- throughput: `--jobs` tiny jobs submitted at once, with 1 and with 2 replicas (jobs/s, median
  of `--rounds` batches each, taken in turns; and the ratio);
- overhead: one job at a time (`--repeats` of them, in turns, median latency from submit to the
  last result), through Ray with one replica vs the single-machine server with the same torch
  thread count as a 1-CPU replica (ratio, and the difference in ms).

    PYTHONPATH=backend python bench/bench_ray.py [--jobs 50] [--steps 4] [--size 64] [--repeats 15] [--rounds 3]

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


async def batch(client: AsyncClient, args: argparse.Namespace) -> float:
    """Jobs per second for `args.jobs` jobs submitted at once."""
    began = time.perf_counter()
    jobs = [await client.submit(request(args, seed)) for seed in range(args.jobs)]
    await asyncio.wait_for(asyncio.gather(*(job.wait() for job in jobs)), 1800)
    return args.jobs / (time.perf_counter() - began)


async def one_job(client: AsyncClient, args: argparse.Namespace, seed: int) -> float:
    """Seconds from submit to the last result of one job."""
    began = time.perf_counter()
    await asyncio.wait_for(client.generate(request(args, seed)), 300)
    return time.perf_counter() - began


async def main_async(args: argparse.Namespace, data: Path) -> None:
    import torch
    from ray import serve

    from latentbridge.cluster import create_cluster_app
    from latentbridge.cluster.deploy import engine_app
    from latentbridge.server.app import create_app

    print(f"{args.jobs} jobs of {args.steps} steps at {args.size} px, tiny model, CPU replicas (1 CPU each), "
          f"{os.cpu_count()} cores; {args.rounds} alternating rounds", flush=True)
    # Everything up at once, measured in turns: load on the machine that drifts during the run
    # weighs on each side alike. Idle replicas and servers cost next to nothing.
    ray_settings = {n: settings_for(data / f"ray-{n}", n) for n in (1, 2)}
    handles = {n: serve.run(engine_app(s), name=s.ray_app, route_prefix=None) for n, s in ray_settings.items()}
    local_settings = settings_for(data / "local", ray=None)
    torch.set_num_threads(1)  # the single-machine engine gets what a 1-CPU Ray replica gets (OMP_NUM_THREADS=1)
    try:
        async with contextlib.AsyncExitStack() as stack:
            urls = {n: await stack.enter_async_context(server(s, create_cluster_app(s, handle=handles[n])))
                    for n, s in ray_settings.items()}
            urls["local"] = await stack.enter_async_context(server(local_settings, create_app(local_settings)))
            clients = {key: await stack.enter_async_context(AsyncClient(url)) for key, url in urls.items()}
            for client in clients.values():  # warm-up: every replica and the local engine ran a job
                await asyncio.gather(*(one_job(client, args, seed) for seed in range(2)))
            rates: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for n in (1, 2):
                    rates[n].append(await batch(clients[n], args))
            one, two = statistics.median(rates[1]), statistics.median(rates[2])
            print(f"throughput, 1 replica : {one:6.2f} jobs/s (median of {args.rounds} rounds)")
            print(f"throughput, 2 replicas: {two:6.2f} jobs/s (median of {args.rounds} rounds)")
            print(f"throughput ratio 2/1 replicas: {two / one:.2f}", flush=True)
            times: dict[Any, list[float]] = {1: [], "local": []}
            for seed in range(args.repeats):
                for key in (1, "local"):
                    times[key].append(await one_job(clients[key], args, seed))
            local, through_ray = statistics.median(times["local"]), statistics.median(times[1])
            print(f"one job, single-machine server: {local * 1000:7.1f} ms (median of {args.repeats})")
            print(f"one job, through Ray (1 replica): {through_ray * 1000:7.1f} ms (median of {args.repeats})")
            print(f"overhead ratio Ray/single-machine: {through_ray / local:.2f} "
                  f"({(through_ray - local) * 1000:+.1f} ms)")
    finally:
        for s in ray_settings.values():
            serve.delete(s.ray_app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="batches per replica count, taken in turns")
    args = parser.parse_args()
    import ray
    from ray import serve

    temp = tempfile.mkdtemp(prefix="lbray-")  # Ray's socket paths must stay short
    package = str(Path(latentbridge.__file__).resolve().parents[1])
    # Logical CPUs for the three 1-CPU replicas (the 1- and 2-replica deployments stand side by side).
    ray.init(num_cpus=3, num_gpus=0, include_dashboard=False, logging_level="WARNING", _temp_dir=temp,
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
