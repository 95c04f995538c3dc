"""Jobs survive `kill -9`: the real server process killed at each moment of a job's life (queued,
just started, mid-steps, while writing results, after a cancel, during start-up, at random
times), then restarted on the same data folder. Every accepted job comes back under its id and
finishes with the same images; a cancelled job stays cancelled; no partial file is ever listed;
results finished before the crash are byte-identical afterwards; `--no-resume-jobs` ends the
unfinished ones as `interrupted`.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentbridge.engine import Engine
from latentbridge.protocol import GenerationRequest
from latentbridge.settings import Settings

pytestmark = pytest.mark.slow

WRAPPER = Path(__file__).with_name("crash_server.py")
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(**fields) -> dict:
    values = {"prompt": "bronze", "steps": 4, "width": 64, "height": 64, "seed": 11, "guidance": 1.0,
              "sampler": "euler"}
    values.update(fields)
    return values


class Server:
    """One data folder, served by successive `latentbridge serve` processes."""

    def __init__(self, root: Path, *flags: str):
        self.data = root / "data"
        self.control = root / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.flags = list(flags)
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log = root / "server.log"

    def start(self, pause: str | None = None, wait: bool = True) -> None:
        self.pause(pause)
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(WRAPPER), str(self.control), "serve", "--model", "tiny", "--port", str(port),
                 "--data-dir", str(self.data), *self.flags],
                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def pause(self, point: str | None) -> None:
        for marker in self.control.glob("paused-*"):
            marker.unlink()
        if point is None:
            (self.control / "pause").unlink(missing_ok=True)
        else:
            (self.control / "pause").write_text(point)

    def wait_paused(self, point: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not (self.control / f"paused-{point}").exists():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"never paused at {point}"
            time.sleep(0.02)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.get("/api/v1/health")["model"]["state"] == "ready":
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    # -- HTTP

    def _call(self, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def get(self, path: str) -> dict:
        return json.loads(self._call(path))

    def submit(self, **fields) -> str:
        return json.loads(self._call("/api/v1/jobs", {"request": _request(**fields)}))["job_id"]

    def cancel(self, job_id: str) -> dict:
        return json.loads(self._call(f"/api/v1/jobs/{job_id}/cancel", {}))

    def wait_state(self, job_id: str, *states: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            status = self.get(f"/api/v1/jobs/{job_id}")
            if status["state"] in states:
                return status
            assert time.monotonic() < deadline, f"job {job_id} stuck in {status['state']}"
            time.sleep(0.05)

    def wait_finished(self, job_id: str) -> dict:
        return self.wait_state(job_id, "done", "failed", "cancelled", "interrupted")

    def result(self, job_id: str, index: int = 0) -> bytes:
        return self._call(f"/api/v1/jobs/{job_id}/results/{index}")


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(Settings(model="tiny"), local=True)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _expected(engine: Engine, seed: int, **fields) -> np.ndarray:
    result = engine.generate(GenerationRequest(**_request(seed=seed, **fields)))
    return np.asarray(result.images[0])


def _no_partial_files(data: Path) -> None:
    """Nothing a crash left half-written, and every result file is one the record lists."""
    for folder in (data / "jobs").iterdir():
        assert not list(folder.glob(".*.tmp")), folder
        record = json.loads((folder / "job.json").read_text())
        listed = record["result_count"] if record["state"] == "done" else 0
        results = sorted(folder.glob("result-*.png"))
        assert len(results) == listed, (folder, record["state"])
        for path in results:
            Image.open(path).load()  # whole PNGs


def test_kill_9_at_every_moment_loses_no_job(server, engine):
    rounds = []

    # Round 1: a finished job, then queued jobs behind one paused mid-steps.
    server.start()
    finished = server.submit(seed=1)
    server.wait_state(finished, "done")
    finished_png = server.result(finished)
    server.pause("step:2")
    running = server.submit(seed=2)
    server.wait_paused("step:2")
    queued = [server.submit(seed=s) for s in (3, 4)]
    server.kill()
    rounds.append(("queued + mid-steps", [running, *queued]))

    # Round 2 (start-up): killed while the journal's jobs are being queued again.
    server.start(pause="recover", wait=False)
    server.wait_paused("recover")
    server.kill()
    rounds.append(("during start-up", [running, *queued]))

    # Round 3: the restart runs them; then a job killed just after it started.
    server.start(pause="started")
    server.wait_paused("started")  # `running` starts first again
    server.kill()
    rounds.append(("just started", [running]))

    # Round 4: killed while writing the second result of a batch.
    server.start()
    for job_id in (running, *queued):
        assert server.wait_state(job_id, "done")["resumed"] >= 1
    assert server.result(finished) == finished_png  # byte-identical across three crashes
    server.pause("result:1")
    batch = server.submit(seed=20, batch_size=2)
    server.wait_paused("result:1")
    server.kill()
    rounds.append(("writing results", [batch]))
    assert list((server.data / "jobs" / batch).glob(".result-1.png.*.tmp"))  # it really was mid-write

    # Round 5: a cancel answered, then killed before the job noticed it.
    server.start(pause="step:3")
    server.wait_paused("step:3")  # the batch runs again
    assert server.cancel(batch)["cancelled"]
    server.kill()
    rounds.append(("after a cancel", [batch]))

    # Rounds 6-8: killed at random moments while several jobs run and queue.
    server.start()
    assert server.wait_finished(batch)["state"] == "cancelled"
    randoms = []
    rng = random.Random(1234)
    for round_no in range(3):
        randoms += [server.submit(seed=100 + 10 * round_no + i, steps=rng.choice([2, 4, 8])) for i in range(3)]
        time.sleep(rng.uniform(0.0, 1.5))
        server.kill()
        rounds.append((f"random {round_no + 1}", list(randoms)))
        server.start()

    # After the last restart: every accepted job finished, with the images an uninterrupted run makes.
    expected = {running: 2, queued[0]: 3, queued[1]: 4}
    for job_id, seed in expected.items():
        assert np.array_equal(_pixels(server.result(job_id)), _expected(engine, seed)), job_id
    lost = []
    for job_id in randoms:
        status = server.wait_finished(job_id)
        if status["state"] != "done":
            lost.append((job_id, status["state"]))
            continue
        req = status["request"]
        assert np.array_equal(_pixels(server.result(job_id)), _expected(engine, req["seed"], steps=req["steps"]))
    assert lost == []
    assert server.result(finished) == finished_png
    history = {s["job_id"]: s for s in server.get("/api/v1/jobs?limit=100")["jobs"]}
    assert history[running]["resumed"] >= 2 and history[finished]["resumed"] == 0
    assert history[batch]["state"] == "cancelled"
    server.stop()
    _no_partial_files(server.data)
    assert len(rounds) >= 8


def test_without_resume_unfinished_jobs_end_interrupted(tmp_path):
    server = Server(tmp_path, "--no-resume-jobs")
    try:
        server.start(pause="step:1")
        job_id = server.submit(seed=5)
        server.wait_paused("step:1")
        waiting = server.submit(seed=6)
        server.kill()
        server.start()
        for jid in (job_id, waiting):
            status = server.wait_finished(jid)
            assert status["state"] == "interrupted" and status["error"]["code"] == "interrupted", status
            assert "--no-resume-jobs" in status["error"]["message"]
        with pytest.raises(urllib.error.HTTPError) as info:
            server.result(job_id)
        assert info.value.code == 404
    finally:
        server.stop()
