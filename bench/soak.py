"""Soak: many jobs from several clients that disconnect, cancel and re-attach at random.

    python bench/soak.py                       # 500 jobs, 8 clients, the tiny model
    python bench/soak.py --jobs 1500 --clients 16

Starts the real `latentbridge serve` as a subprocess (tiny model, a temporary data folder) and
runs CLIENTS concurrent clients through the Python SDK. Each job, at random: is followed to the
end on its connection; is cancelled after it was accepted; or its connection is dropped right
after `accepted` or mid-steps, and the job is re-attached from a new connection (or fetched over
HTTP). At the end every accepted job is checked over HTTP. Prints:

    jobs accepted, done, cancelled; lost results (a done job whose PNGs are missing or differ in
    count); stuck jobs (not finished 60 s after the last submit); the server's RSS after warm-up
    and at the end (drift %); wall time and jobs/s.

Exit status 1 when anything was lost or stuck.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from latentbridge.client import AsyncClient
from latentbridge.protocol import ErrorCode, GenerationRequest, LatentBridgeError


ACTION_TIMEOUT_S = 120.0  # a job that no event ends in this long counts as a client left waiting


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Soak:
    def __init__(self, url: str, jobs: int, clients: int, seed: int):
        self.url = url
        self.target = jobs
        self.clients = clients
        self.rng = random.Random(seed)
        self.submitted = 0
        self.accepted: dict[str, str] = {}  # job id → what the client did
        self.errors: list[str] = []
        self.hung: list[str] = []
        self.warm = asyncio.Event()
        self.warm_up = min(50, max(1, jobs // 5))  # jobs before the first RSS reading

    def request(self) -> GenerationRequest:
        return GenerationRequest(prompt="soak", width=64, height=64, steps=self.rng.choice([2, 4, 8]),
                                 seed=self.rng.randrange(2**32), guidance=1.0, sampler="euler")

    async def submit(self, client: AsyncClient):
        while True:
            try:
                return await client.submit(self.request())
            except LatentBridgeError as exc:
                if exc.code is not ErrorCode.queue_full:
                    raise
                await asyncio.sleep(0.2)

    async def run_client(self, index: int) -> None:
        client = AsyncClient(self.url, client_name=f"soak-{index}")
        await client.connect()
        try:
            while self.submitted < self.target:
                self.submitted += 1
                if self.submitted >= self.warm_up:
                    self.warm.set()
                action = self.rng.choice(["follow", "follow", "cancel", "drop-accepted", "drop-running", "http"])
                job = await self.submit(client)
                self.accepted[job.job_id] = action
                try:
                    client = await asyncio.wait_for(self.act(client, index, job, action), ACTION_TIMEOUT_S)
                except asyncio.TimeoutError:
                    self.hung.append(f"{job.job_id} ({action}): the client heard no end of the job in {ACTION_TIMEOUT_S:.0f} s")
                    await client.close()
                    client = AsyncClient(self.url, client_name=f"soak-{index}")
                    await client.connect()
        except Exception as exc:  # noqa: BLE001 - counted and reported, the soak goes on
            self.errors.append(f"client {index}: {type(exc).__name__}: {exc}")
        finally:
            await client.close()

    async def act(self, client: AsyncClient, index: int, job, action: str) -> AsyncClient:
        """Follow, cancel, or drop and re-attach one job; returns the client to go on with."""
        if action == "follow":
            await job.wait()
        elif action == "cancel":
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            await client.cancel(job.job_id)
            async for _item in job:
                pass
        elif action in ("drop-accepted", "drop-running"):
            if action == "drop-running":
                await asyncio.sleep(self.rng.uniform(0, 0.1))
            await client.close()  # the connection goes; the job must not
            client = AsyncClient(self.url, client_name=f"soak-{index}")
            await client.connect()
            attached = await client.attach(job.job_id)
            await attached.wait()
        else:  # over HTTP only
            await client.close()
            client = AsyncClient(self.url, client_name=f"soak-{index}")
            await client.connect()
        return client

    async def check(self, deadline_s: float) -> tuple[int, int, list[str], list[str]]:
        lost, stuck = [], []
        done = cancelled = 0
        async with AsyncClient(self.url) as client:
            for job_id, action in self.accepted.items():
                end = time.monotonic() + deadline_s
                while True:
                    status = await client.status(job_id)
                    if status.state.finished or time.monotonic() > end:
                        break
                    await asyncio.sleep(0.05)
                if not status.state.finished:
                    stuck.append(f"{job_id} ({action}): {status.state.value}")
                elif status.state.value == "done":
                    done += 1
                    try:
                        for index in range(status.result_count):
                            Image.open(io.BytesIO(await client.result(job_id, index))).load()
                        if status.result_count != 1:
                            lost.append(f"{job_id} ({action}): {status.result_count} results")
                    except Exception as exc:  # noqa: BLE001
                        lost.append(f"{job_id} ({action}): {exc}")
                elif status.state.value == "cancelled":
                    cancelled += 1
                    if action != "cancel":
                        lost.append(f"{job_id} ({action}): cancelled without a cancel")
                else:
                    lost.append(f"{job_id} ({action}): {status.state.value} {status.error}")
        return done, cancelled, lost, stuck


async def soak(args: argparse.Namespace, url: str, pid: int) -> int:
    runner = Soak(url, args.jobs, args.clients, args.seed)
    started = time.monotonic()
    clients = [asyncio.create_task(runner.run_client(i)) for i in range(args.clients)]
    await runner.warm.wait()
    warm_rss = rss_mb(pid)
    await asyncio.gather(*clients)
    wall = time.monotonic() - started
    done, cancelled, lost, stuck = await runner.check(60.0)
    end_rss = rss_mb(pid)
    print(f"{len(runner.accepted)} jobs accepted from {args.clients} clients in {wall:.1f} s "
          f"({len(runner.accepted) / wall:.1f} jobs/s): {done} done, {cancelled} cancelled")
    actions = {a: sum(1 for v in runner.accepted.values() if v == a) for a in sorted(set(runner.accepted.values()))}
    print("what the clients did: " + ", ".join(f"{a} {n}" for a, n in actions.items()))
    print(f"lost results: {len(lost)}   stuck jobs: {len(stuck)}   client errors: {len(runner.errors)}   "
          f"clients left waiting: {len(runner.hung)}")
    print(f"server RSS: {warm_rss:.0f} MB after {runner.warm_up} jobs, {end_rss:.0f} MB at the end "
          f"(drift {100 * (end_rss - warm_rss) / warm_rss:+.1f} %)")
    for line in (lost + stuck + runner.errors + runner.hung)[:20]:
        print("  " + line)
    return 1 if lost or stuck or runner.errors or runner.hung else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="latentbridge-soak-") as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "latentbridge", "serve", "--model", "tiny", "--port", str(port),
             "--data-dir", str(Path(tmp) / "data"), "--max-queue", "64", "--retention-jobs", str(args.jobs + 100)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(_wait_ready(url))
            return asyncio.run(soak(args, url, server.pid))
        finally:
            stopping = time.monotonic()
            server.terminate()
            try:
                server.wait(60)
                print(f"server stopped {time.monotonic() - stopping:.1f} s after SIGTERM")
            except subprocess.TimeoutExpired:
                print("server did not stop within 60 s of SIGTERM: killed")
                server.kill()
                server.wait(10)


async def _wait_ready(url: str) -> None:
    for _ in range(1200):
        try:
            async with AsyncClient(url) as client:
                if (await client.health())["model"]["state"] == "ready":
                    return
        except (LatentBridgeError, OSError):
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not start")


if __name__ == "__main__":
    sys.exit(main())
