"""Unit tests of the job queue and the result store.

The queue's ordering, fairness and fan-out logic are tested with a small scripted engine (a
stand-in whose steps the test controls); whole flows with the real engine are in test_ws/test_http.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from PIL import Image

from latentbridge import images
from latentbridge.jobs import JobManager, PreviewFrame, Subscription
from latentbridge.protocol import (
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    JobState,
    LatentBridgeError,
    ModelState,
    ModelStatus,
    ProgressEvent,
    ResultEvent,
)
from latentbridge.settings import Settings
from latentbridge.store import ResultStore


class ScriptedEngine:
    """Generates solid images; each step waits for `gate` (so tests control timing)."""

    def __init__(self, fail_load: bool = False):
        self.status = ModelStatus(name="scripted", state=ModelState.loading)
        self.capabilities_families = ["sd1"]
        self.fail_load = fail_load
        self.gate = threading.Event()
        self.gate.set()
        self.order: list[str] = []
        self.crash = False

    def load(self, model=None):
        if self.fail_load:
            self.status = ModelStatus(name="scripted", state=ModelState.failed, error="no such file: x.safetensors")
            raise LatentBridgeError("no such file", code=ErrorCode.model_load_failed)
        self.status = ModelStatus(name="scripted", state=ModelState.ready)
        return self.status

    def generate(self, request, init_image=None, mask=None, on_step=None, cancel=None, inputs=None):
        from latentbridge.engine import StepUpdate  # the real step type the engine hands out
        from latentbridge.protocol import Cancelled

        self.order.append(request.prompt)
        if self.crash:
            raise ZeroDivisionError("boom")
        start = time.monotonic()
        for step in range(1, request.steps + 1):
            while not self.gate.wait(0.01):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if on_step is not None:
                on_step(StepUpdate(step, request.steps, time.monotonic() - start,
                                   lambda: Image.new("RGB", (request.width, request.height), (step * 20, 0, 0))))
        from latentbridge.engine import GenerationResult

        seeds = [request.seed + i for i in range(request.batch_size)]
        return GenerationResult(images=[Image.new("RGB", (request.width, request.height), (9, 9, 9)) for _ in seeds],
                                seeds=seeds, request=request)


def req(prompt="p", **kw) -> GenerationRequest:
    values = {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 1}
    values.update(kw)
    return GenerationRequest(**values)


@pytest.fixture
async def manager(tmp_path):
    engine = ScriptedEngine()
    settings = Settings(data_dir=tmp_path, preview_interval_s=0.0, max_queue=4)
    jobs = JobManager(engine, ResultStore(tmp_path, settings.retention_jobs), settings)
    await jobs.start()
    yield jobs
    engine.gate.set()
    await jobs.stop()


async def collect(sub: Subscription, timeout: float = 10.0) -> list:
    async def run():
        return [item async for item in sub]

    return await asyncio.wait_for(run(), timeout)


async def test_job_flow_events_and_store(manager):
    job = await manager.submit(req(batch_size=2))
    events = await collect(manager.subscribe(job.id))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "StartedEvent" and kinds[-1] == "DoneEvent"
    assert [e.step for e in events if isinstance(e, ProgressEvent)] == [1, 2]
    results = [e for e in events if isinstance(e, ResultEvent)]
    assert [(r.index, r.seed) for r in results] == [(0, 1), (1, 2)]
    assert results[1].request.seed == 2 and results[1].request.batch_size == 1  # regenerates that image
    assert any(isinstance(e, PreviewFrame) for e in events)
    png = manager.result_png(job.id, 1)
    assert images.read_png_request(png).seed == 2
    record = manager.store.record(job.id)
    assert record.state is JobState.done and record.seeds == [1, 2]
    # A finished job's subscription replays its results and final event, then ends.
    replay = await collect(manager.subscribe(job.id))
    assert [type(e).__name__ for e in replay] == ["ResultEvent", "ResultEvent", "DoneEvent"]


async def test_priorities_and_fairness(manager):
    engine = manager.engine
    engine.gate.clear()
    first = await manager.submit(req("running"), owner="a")
    while manager.current_job is None:
        await asyncio.sleep(0.01)
    a1 = await manager.submit(req("a1"), owner="a")
    a2 = await manager.submit(req("a2"), owner="a")
    b1 = await manager.submit(req("b1"), owner="b")
    inter = await manager.submit(req("interactive"), owner="a", priority="interactive")
    # Interactive first; then owner b (not served yet) before a's second job.
    assert [manager.position(j) for j in (inter, b1, a1, a2)] == [0, 1, 2, 3]
    engine.gate.set()
    await collect(manager.subscribe(a2.id))
    assert engine.order == ["running", "interactive", "b1", "a1", "a2"]
    assert manager.get(first.id).state is JobState.done


async def test_queue_full_and_limits(manager):
    manager.engine.gate.clear()
    await manager.submit(req("running"))
    while manager.current_job is None:
        await asyncio.sleep(0.01)
    for i in range(4):
        await manager.submit(req(f"q{i}"))
    with pytest.raises(LatentBridgeError) as info:
        await manager.submit(req("one too many"))
    assert info.value.code is ErrorCode.queue_full
    with pytest.raises(LatentBridgeError) as info:
        await manager.submit(req(width=4096, height=4096))
    assert info.value.code is ErrorCode.too_large and info.value.field == "width"
    with pytest.raises(LatentBridgeError) as info:
        await manager.submit(req(mode="img2img"))
    assert info.value.code is ErrorCode.missing_image and info.value.field == "init_image"
    with pytest.raises(LatentBridgeError) as info:
        await manager.submit(req(mode="inpaint"), init_image=Image.new("RGB", (64, 64)), mask=Image.new("L", (32, 32)))
    assert info.value.code is ErrorCode.bad_image and info.value.field == "mask"


async def test_cancel_queued_and_running(manager):
    manager.engine.gate.clear()
    running = await manager.submit(req("running", steps=50))
    queued = await manager.submit(req("queued"))
    running_sub, queued_sub = manager.subscribe(running.id), manager.subscribe(queued.id)
    while manager.current_job is None:
        await asyncio.sleep(0.01)
    assert await manager.cancel(queued.id)
    assert [type(e) for e in await collect(queued_sub)] == [CancelledEvent]
    assert await manager.cancel(running.id)
    events = await collect(running_sub)
    assert isinstance(events[-1], CancelledEvent)
    assert not await manager.cancel(running.id)  # already finished
    assert not await manager.cancel("0" * 32)
    assert manager.store.record(running.id).state is JobState.cancelled


async def test_timeout_and_crash_affect_that_job_alone(tmp_path):
    engine = ScriptedEngine()
    settings = Settings(data_dir=tmp_path, job_timeout_s=0.2)
    jobs = JobManager(engine, ResultStore(tmp_path), settings)
    await jobs.start()
    try:
        engine.gate.clear()
        slow = await jobs.submit(req("slow"))
        events = await collect(jobs.subscribe(slow.id))
        assert isinstance(events[-1], ErrorEvent) and events[-1].code is ErrorCode.timeout
        engine.gate.set()
        engine.crash = True
        crash = await jobs.submit(req("crash"))
        events = await collect(jobs.subscribe(crash.id))
        assert events[-1].code is ErrorCode.internal and "boom" not in events[-1].message  # no internals leak
        engine.crash = False
        ok = await jobs.submit(req("fine"))
        assert isinstance((await collect(jobs.subscribe(ok.id)))[-1], DoneEvent)
    finally:
        await jobs.stop()


async def test_model_load_failure_is_reported(tmp_path):
    engine = ScriptedEngine(fail_load=True)
    jobs = JobManager(engine, ResultStore(tmp_path), Settings(data_dir=tmp_path))
    await jobs.start()
    try:
        for _ in range(100):
            if engine.status.state is ModelState.failed:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(LatentBridgeError) as info:
            await jobs.submit(req())
        assert info.value.code is ErrorCode.model_load_failed and "x.safetensors" in info.value.message
    finally:
        await jobs.stop()


async def test_previews_are_latest_wins():
    sub = Subscription("j")
    for step in range(1, 101):
        sub.push_preview(PreviewFrame("j", step, 100, 8, 8, b"x"))
    sub.push(ProgressEvent(job_id="j", step=100, total=100))
    assert sub.previews_dropped == 99
    first, second = await sub.__anext__(), await sub.__anext__()
    assert isinstance(first, ProgressEvent) and second.step == 100  # only the newest preview is kept
    sub.push(DoneEvent(job_id="j", count=0, elapsed_s=0))
    sub.push_preview(PreviewFrame("j", 101, 100, 8, 8, b"x"))  # after the end: dropped
    assert [type(e) for e in await collect(sub)] == [DoneEvent]


def test_store_survives_restart_and_prunes(tmp_path):
    store = ResultStore(tmp_path, retention=2)
    from latentbridge.store import JobRecord

    ids = []
    for i in range(3):
        job_id = f"{i:032x}"
        store.save_result(job_id, 0, b"png%d" % i)
        store.save_record(JobRecord(job_id=job_id, request=req(), state=JobState.done, seeds=[1], result_count=1,
                                    sizes=[[64, 64]], created_at=100 + i, finished_at=200 + i))
        ids.append(job_id)
    assert store.record(ids[0]) is None and not (tmp_path / "jobs" / ids[0]).exists()  # pruned, oldest
    running = "f" * 32
    store.save_record(JobRecord(job_id=running, request=req(), state=JobState.running, created_at=300))
    again = ResultStore(tmp_path, retention=2)
    assert again.result_png(ids[2], 0) == b"png2"
    assert again.record(running).state is JobState.running  # the journal: the job manager resumes it
    assert [r.job_id for r in again.unfinished()] == [running]
    assert [r.job_id for r in again.records()][0] == running
    assert again.result_png("../../etc", 0) is None
    assert not list((tmp_path / "jobs").glob("*/.*.tmp"))
