"""The server in front of two engine replicas on a real local Ray cluster (CPU, tiny model).

Jobs go through the real front-end (the same aiohttp app, journal and queue as the single-machine
server) over the real APIs (websocket and REST through the Python SDK, A1111, OpenAI-style), run
on Ray Serve replicas in other processes, and come back with previews and results. Replicas are
killed for real (SIGKILL of their process) to check a job survives, or fails with `worker_lost`.
The front-end also runs as `latentbridge serve --ray ADDRESS` (a process of its own) and as the
Serve deployment of the KubeRay manifest's serve config.

One local Ray instance and one engine deployment (conftest.py) serve the whole module, which
stays small: the longer runs are in bench/bench_ray.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import re
import signal
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from ray_helpers import cluster_settings, frontend, require_ray, wait_for_replicas
from server_helpers import Serve

from latentbridge import images
from latentbridge.client import AsyncClient, ImageFrame
from latentbridge.jobs.running import encode_output
from latentbridge.protocol import (
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    JobState,
    ProgressEvent,
    StartedEvent,
)
from latentbridge.server.app import ENGINE_KEY, JOBS_KEY

require_ray()

# Every wait below has its own timeout; this bounds anything else (Ray's own calls) per test.
pytestmark = pytest.mark.timeout(300)

TIMEOUT = 120.0
PLACED = re.compile(r"job (\w+) runs on engine replica (\w+) \(node \w+, pid (\d+)\)")


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "weathered bronze", "steps": 4, "width": 64, "height": 64, "seed": 11, "guidance": 1.0}
    values.update(overrides)
    return GenerationRequest(**values)


def long_request(**overrides) -> GenerationRequest:
    """Minutes of work if nobody stops it (150 steps, 4 images at 256 px with guidance)."""
    return request(steps=150, width=256, height=256, batch_size=4, guidance=7.0, **overrides)


def placements(caplog, job_id: str) -> list[tuple[str, int]]:
    """(replica, pid) of each attempt of a job, from the front-end's log."""
    return [(m.group(2), int(m.group(3))) for record in caplog.records
            if (m := PLACED.search(record.getMessage())) and m.group(1) == job_id]


async def until_placed(caplog, job_id: str, attempts: int = 1) -> list[tuple[str, int]]:
    deadline = time.monotonic() + TIMEOUT
    while len(found := placements(caplog, job_id)) < attempts:
        assert time.monotonic() < deadline, f"job {job_id} never reached a replica"
        await asyncio.sleep(0.02)
    return found


async def until_step(job, step: int = 1, seen: list | None = None) -> ProgressEvent:
    async for item in job:
        if seen is not None:
            seen.append(item)
        if isinstance(item, ProgressEvent) and item.step >= step:
            return item
        assert not isinstance(item, (DoneEvent, CancelledEvent, ErrorEvent)), item
    raise AssertionError("the job ended before its first step")


@pytest.fixture
def log_placements(caplog):
    caplog.set_level(logging.INFO, logger="latentbridge.cluster")
    return caplog


@pytest.fixture(scope="module")
def local_engine():
    """The single-machine engine, for what the same request makes without Ray."""
    from latentbridge.engine import Engine
    from latentbridge.settings import Settings

    engine = Engine(Settings(model="tiny"))
    engine.load()
    return engine


async def test_jobs_spread_over_both_replicas_with_the_single_machine_results(replicas, tmp_path, log_placements,
                                                                             local_engine):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        async with AsyncClient(url) as client:
            health = await client.health()
            assert health["status"] == "ok" and health["model"]["family"] == "sd1"
            jobs = [await client.submit(request(seed=seed, steps=8)) for seed in range(6)]
            pngs = [await asyncio.wait_for(job.wait(), TIMEOUT) for job in jobs]
            # REST too: the same queue.
            rest = await client.submit_http(request(seed=2, steps=8))
            events = [event async for event in client.events_http(rest)]
            assert isinstance(events[-1], DoneEvent), events[-1]
            assert await client.result(rest) == pngs[2][0]
        used = {placements(log_placements, job.job_id)[0][0] for job in jobs}
        assert len(used) == 2, f"all six jobs ran on {used}"
        # Byte for byte what the single-machine engine makes (the PNG embeds the full request), run
        # with the replica's thread count (Ray gives a 0.5-CPU actor one thread; sums in another
        # order round differently).
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            expected = encode_output(local_engine.generate(request(seed=3, steps=8))).pngs[0]
        finally:
            torch.set_num_threads(threads)
        assert pngs[3][0] == expected
        record = app[JOBS_KEY].store.record(jobs[3].job_id)
        assert record.state is JobState.done and record.seeds == [3]
        # The replicas run this checkout's package (not some other installed copy).
        import latentbridge

        assert app[ENGINE_KEY]._get("where", {})["package"] == os.path.dirname(latentbridge.__file__)


async def test_previews_and_cancel_reach_the_replicas(replicas, tmp_path, log_placements):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        async with AsyncClient(url) as client:
            long_jobs = [await client.submit(long_request(seed=seed)) for seed in (1, 2)]
            previews = []
            for job in long_jobs:
                async for item in job:
                    if isinstance(item, ImageFrame) and item.kind == "preview":
                        previews.append(item)
                        break
            assert {p.header.job_id for p in previews} == {job.job_id for job in long_jobs}
            assert Image.open(io.BytesIO(previews[0].data)).size == (256, 256)
            progress = [await until_step(job, 2) for job in long_jobs]
            remaining = min(p.eta_s for p in progress)
            cancelled_at = time.monotonic()
            for job in long_jobs:
                await client.cancel(job.job_id)
            finals = [await asyncio.wait_for(_final(job), TIMEOUT) for job in long_jobs]
            assert all(isinstance(f, CancelledEvent) for f in finals)
            # Both replicas stopped generating: two short jobs finish long before the cancelled
            # ones would have (a replica still busy would hold them back).
            short = [await client.submit(request(seed=seed)) for seed in (5, 6)]
            for job in short:
                await asyncio.wait_for(job.wait(), TIMEOUT)
            assert time.monotonic() - cancelled_at < remaining / 2
        for job in long_jobs:
            assert app[JOBS_KEY].store.record(job.job_id).state is JobState.cancelled


async def _final(job):
    async for item in job:
        if isinstance(item, (DoneEvent, CancelledEvent, ErrorEvent)):
            return item
    return job.final


async def test_priorities_and_fairness_decide_the_order_over_ray(replicas, tmp_path):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        manager = app[JOBS_KEY]
        blockers = [await manager.submit(long_request(seed=seed), owner="a") for seed in (1, 2)]
        while len(manager.running_jobs) < 2:
            await asyncio.sleep(0.01)
        a1 = await manager.submit(request(prompt="a1"), owner="a")
        a2 = await manager.submit(request(prompt="a2"), owner="a")
        b1 = await manager.submit(request(prompt="b1"), owner="b")
        interactive = await manager.submit(request(prompt="now"), owner="a", priority="interactive")
        assert [manager.position(j) for j in (interactive, b1, a1, a2)] == [0, 1, 2, 3]
        for blocker in blockers:
            await manager.cancel(blocker.id)
        subs = [manager.subscribe(j.id) for j in (interactive, b1, a1, a2)]
        for sub in subs:
            await asyncio.wait_for(_drain(sub), TIMEOUT)
        order = sorted((interactive, b1, a1, a2), key=lambda j: j.started_at)
        assert [j.request.prompt for j in order] == ["now", "b1", "a1", "a2"]


async def _drain(sub):
    return [item async for item in sub]


async def until_serve_knows(handle, holder: str, model: str, other: str) -> None:
    """Until Serve routes `model` to `holder` and `other` elsewhere. Replicas report the models
    they hold every 0.1 s and the controller passes that on to the routers: on a loaded machine
    that takes a moment, during which Serve routes by load alone. Probed with `describe` (loads
    nothing) several times in a row, as a probe lands on the right replica by chance half the time."""
    deadline, streak = time.monotonic() + 60, 0
    while streak < 5:
        assert time.monotonic() < deadline, f"Serve never learnt that replica {holder} holds {model}"
        here = (await routed_to(handle, model))["replica"]
        there = (await routed_to(handle, other))["replica"]
        streak = streak + 1 if (here == holder and there != holder) else 0
        await asyncio.sleep(0.05)


async def routed_to(handle, model: str) -> dict:
    return await asyncio.wait_for(handle.options(multiplexed_model_id=model).describe.remote(), TIMEOUT)


async def test_jobs_go_to_a_replica_that_has_their_model(replicas, tmp_path, log_placements):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        async with AsyncClient(url) as client:
            first = await client.submit(request(model="tiny-inpaint"))
            await asyncio.wait_for(first.wait(), TIMEOUT)
            holder = placements(log_placements, first.job_id)[0][0]
            await until_serve_knows(replicas, holder, "tiny-inpaint", other="tiny")
            for seed in (1, 2, 3):
                again = await client.submit(request(model="tiny-inpaint", seed=seed))
                await asyncio.wait_for(again.wait(), TIMEOUT)
                assert placements(log_placements, again.job_id)[0][0] == holder
                default = await client.submit(request(seed=seed))
                await asyncio.wait_for(default.wait(), TIMEOUT)
                assert placements(log_placements, default.job_id)[0][0] != holder
            result = images.read_png_request(await client.result(again.job_id))
            assert result.model == "tiny-inpaint"


async def test_the_other_public_apis_and_the_page_through_ray(replicas, tmp_path):
    from aiohttp import ClientSession

    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        async with ClientSession(url) as http:
            async with http.get("/") as page:
                assert page.status == 200 and "text/html" in page.headers["Content-Type"]
            body = {"prompt": "bronze", "steps": 3, "width": 64, "height": 64, "seed": 4, "cfg_scale": 1.0}
            async with http.post("/sdapi/v1/txt2img", json=body) as response:
                assert response.status == 200, await response.text()
                a1111 = await response.json()
            png = base64.b64decode(a1111["images"][0])
            assert Image.open(io.BytesIO(png)).size == (64, 64)
            async with http.post("/sdapi/v1/extra-single-image",
                                 json={"image": a1111["images"][0], "upscaler_1": "Lanczos", "upscaling_resize": 2}) as response:
                assert response.status == 200, await response.text()
                upscaled = base64.b64decode((await response.json())["image"])
            assert Image.open(io.BytesIO(upscaled)).size == (128, 128)
            # A preprocessor (the ControlNet extension's detect) runs on a replica too: the same
            # map OpenCV makes here.
            source = Image.open(io.BytesIO(png)).convert("RGB")
            async with http.post("/controlnet/detect", json={
                    "controlnet_module": "canny", "controlnet_input_images": [a1111["images"][0]],
                    "controlnet_processor_res": 64, "controlnet_threshold_a": 40, "controlnet_threshold_b": 120}) as response:
                assert response.status == 200, await response.text()
                detected = base64.b64decode((await response.json())["images"][0])
            edges = np.asarray(Image.open(io.BytesIO(detected)).convert("RGB"))[..., 0]
            assert np.array_equal(edges, cv2.Canny(np.asarray(source), 40, 120))
            async with http.post("/controlnet/detect", json={"controlnet_module": "canny"}) as response:
                assert response.status == 422 and (await response.json())["field"] == "controlnet_input_images"
            async with http.post("/v1/images/generations",
                                 json={"prompt": "bronze", "size": "256x256", "response_format": "b64_json"}) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["data"][0]["b64_json"]
            async with http.get("/sdapi/v1/samplers") as response:
                assert any(s["name"] == "Euler a" for s in await response.json())


async def test_a_killed_replica_job_runs_again_on_another(replicas, tmp_path, log_placements):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        async with AsyncClient(url) as client:
            job = await client.submit(request(steps=150, seed=21))
            seen: list = []
            await until_step(job, seen=seen)
            (replica, pid), = await until_placed(log_placements, job.job_id)
            os.kill(pid, signal.SIGKILL)
            pngs = await asyncio.wait_for(job.wait(seen.append), TIMEOUT)
            (_, _), (retry_replica, retry_pid) = placements(log_placements, job.job_id)
            assert retry_replica != replica and retry_pid != pid
            # One `started` for the client, then progress from step 1 again on the other replica.
            assert sum(isinstance(item, StartedEvent) for item in seen) == 1
            steps = [item.step for item in seen if isinstance(item, ProgressEvent)]
            assert steps[-1] == 150 and steps.count(1) == 2
            # The front-end served on meanwhile, and the retried job made what it would have made.
            assert (await client.health())["status"] == "ok"
            again = await client.submit(request(steps=150, seed=21))
            assert await asyncio.wait_for(again.wait(), TIMEOUT) == pngs
        assert app[JOBS_KEY].store.record(job.job_id).state is JobState.done


async def test_a_job_whose_retry_dies_too_fails_with_worker_lost(replicas, tmp_path, log_placements):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        async with AsyncClient(url) as client:
            job = await client.submit(request(steps=150, seed=31))
            await until_step(job)
            for attempt in (1, 2):
                found = await until_placed(log_placements, job.job_id, attempt)
                os.kill(found[-1][1], signal.SIGKILL)
            final = await asyncio.wait_for(_final(job), TIMEOUT)
            assert isinstance(final, ErrorEvent) and final.code is ErrorCode.worker_lost, final
            assert "submit it again" in final.message
            # Nothing accepted is lost: the journal has the job and its error; the server keeps
            # serving, and the next job runs once Serve has replaced the replicas.
            record = app[JOBS_KEY].store.record(job.job_id)
            assert record.state is JobState.failed and record.error.code is ErrorCode.worker_lost
            assert (await client.health())["status"] == "ok"
            after = await client.submit(request(seed=32))
            assert len(await asyncio.wait_for(after.wait(), 240)) == 1
    wait_for_replicas()


async def test_accepted_jobs_survive_a_front_end_restart(replicas, tmp_path):
    settings = cluster_settings(tmp_path)
    async with frontend(settings, replicas) as (url, app):
        manager = app[JOBS_KEY]
        blockers = [await manager.submit(long_request(seed=seed)) for seed in (1, 2)]
        queued = [await manager.submit(request(seed=seed)) for seed in (40, 41)]
        while len(manager.running_jobs) < 2:
            await asyncio.sleep(0.01)
    # The front-end stopped with two jobs running on replicas and two queued: all four stay
    # in the journal and run when a front-end starts again on the same data folder.
    async with frontend(settings, replicas) as (url, app):
        manager = app[JOBS_KEY]
        for blocker in blockers:
            await manager.cancel(blocker.id)
        for job in queued:
            events = await asyncio.wait_for(_drain(manager.subscribe(job.id)), TIMEOUT)
            assert isinstance(events[-1], DoneEvent), events[-1]
            assert manager.store.record(job.id).resumed == 1


# ---------------------------------------------------------------------------------------------
# The two ways to run the service on Ray, for real, against the same cluster:
# - `latentbridge serve --ray ADDRESS` as a process: it joins the cluster, deploys its own engine
#   replicas, serves the API, and removes them when it stops;
# - the serve config of packaging/ray/rayservice.yaml (what KubeRay deploys), with CPU-sized
#   settings: the front-end itself runs as a Serve deployment.

MANIFEST = Path(__file__).resolve().parents[2] / "packaging" / "ray" / "rayservice.yaml"


def applications() -> set[str]:
    from ray import serve

    return set(serve.status().applications)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def generate(url: str, seed: int) -> bytes:
    async with AsyncClient(url) as client:
        health = await client.health()
        assert health["status"] == "ok", health
        (png,) = await asyncio.wait_for(client.generate(request(seed=seed, steps=3)), 120)
        return png


def test_serve_with_ray_address_deploys_serves_and_cleans_up(ray_cluster, tmp_path):
    server = Serve(tmp_path, "--ray", ray_cluster, "--ray-app", "lb-cli", "--ray-gpus-per-replica", "0",
                   "--ray-cpus-per-replica", "0.5", "--preview-interval-s", "0")
    try:
        port = server.wait_listening()
        assert f"engine replicas on Ray at {ray_cluster}" in server.output
        server.wait_ready(timeout=180)
        assert "lb-cli" in applications()
        png = asyncio.run(generate(f"http://127.0.0.1:{port}", seed=8))
        assert png.startswith(b"\x89PNG")
        assert "engine replicas ready on Ray (model tiny on cpu; latentbridge" in server.output
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.output
    finally:
        server.stop()
    # It removed the replicas it deployed; the cluster and the other applications live on.
    deadline = time.monotonic() + 60
    while "lb-cli" in applications():
        assert time.monotonic() < deadline, "the front-end left its engine replicas behind"
        time.sleep(0.2)


def test_serve_with_an_unreachable_ray_address_says_so_and_keeps_serving(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    server = Serve(tmp_path, "--ray", closed, "--ray-gpus-per-replica", "0")
    try:
        port = server.wait_listening()

        async def health() -> dict:
            async with AsyncClient(f"http://127.0.0.1:{port}") as client:
                deadline = time.monotonic() + 120
                while (answer := await client.health())["status"] == "starting":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                return answer

        answer = asyncio.run(health())
        assert answer["status"] == "error" and answer["model"]["state"] == "failed"
        assert f"cannot connect to the Ray cluster at '{closed}'" in answer["model"]["error"]
        assert "Traceback" not in server.output
    finally:
        server.stop()


def test_the_rayservice_serve_config_runs_the_whole_service_on_ray(ray_cluster, tmp_path):
    from ray import serve

    from latentbridge.cluster.frontend import build_app

    (app,) = yaml.safe_load(next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "RayService")
                            ["spec"]["serveConfigV2"])["applications"]
    args = app["args"]
    # The manifest's config, sized for this machine: CPU replicas of the tiny model, loopback.
    port = free_port()
    args["settings"].update(model="tiny", model_dirs=[], lora_dirs=[], host="127.0.0.1", port=port,
                            data_dir=str(tmp_path / "data"), ray_min_replicas=1, ray_max_replicas=1,
                            ray_gpus_per_replica=0, ray_cpus_per_replica=0.5)
    args["frontend"] = {"num_cpus": 0.5}
    serve.run(build_app(args), name="lb-config", route_prefix=app["route_prefix"])
    try:
        url = f"http://127.0.0.1:{port}"

        async def run() -> bytes:
            async with AsyncClient(url) as client:
                deadline = time.monotonic() + 120
                while (await client.health())["status"] == "starting":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            return await generate(url, seed=9)

        assert asyncio.run(run()).startswith(b"\x89PNG")
        assert (tmp_path / "data").is_dir() and any((tmp_path / "data").rglob("job.json"))
    finally:
        serve.delete("lb-config")
