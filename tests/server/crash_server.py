"""`latentbridge serve` with pause points, for the crash-recovery tests (test_crash_recovery.py).

    python crash_server.py CONTROL_DIR serve --model tiny --port N --data-dir D

Runs the real server. At each pause point it reads CONTROL_DIR/pause (one line naming the point,
or absent); when it names the point reached, it writes CONTROL_DIR/paused-<point> and sleeps, so
the test can `kill -9` the process at exactly that moment. Points:

    started      a job's journal record says running, before the engine runs
    step:N       inside step N of a job's denoising
    result:I     result I of a job half written to its temporary file, before the rename
    recover      start-up: the first journaled job queued again, before the others
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

CONTROL = Path(sys.argv[1])


def wanted(point: str) -> bool:
    try:
        return (CONTROL / "pause").read_text().strip() == point
    except FileNotFoundError:
        return False


def pause_at(point: str) -> None:
    if wanted(point):
        (CONTROL / f"paused-{point}").write_text(str(os.getpid()))
        time.sleep(3600)


def install() -> None:
    from latentbridge import store
    from latentbridge.engine import Engine
    from latentbridge.jobs.job import Job
    from latentbridge.jobs.local import LocalRunner

    real_generate_job = LocalRunner._generate

    def generate_job(self, job, events):
        pause_at("started")
        return real_generate_job(self, job, events)

    LocalRunner._generate = generate_job

    real_generate = Engine.generate

    def generate(self, request, init_image=None, mask=None, on_step=None, cancel=None, inputs=None):
        def step(update):
            pause_at(f"step:{update.step}")
            if on_step is not None:
                on_step(update)

        return real_generate(self, request, init_image=init_image, mask=mask, on_step=step, cancel=cancel)

    Engine.generate = generate

    real_write = store.atomic_write

    def atomic_write(path, data):
        if path.name.startswith("result-"):
            point = "result:" + path.name.removeprefix("result-").removesuffix(".png")
            if wanted(point):  # half the bytes in a temporary file, as a kill mid-write leaves them
                (path.parent / f".{path.name}.crash.tmp").write_bytes(data[: len(data) // 2])
                pause_at(point)
        real_write(path, data)

    store.atomic_write = atomic_write

    real_from_record = Job.from_record.__func__
    recovered = []

    def from_record(cls, record, seq):
        if recovered:
            pause_at("recover")
        recovered.append(record.job_id)
        return real_from_record(cls, record, seq)

    Job.from_record = classmethod(from_record)


if __name__ == "__main__":
    install()
    from latentbridge.cli import main

    sys.exit(main(sys.argv[2:]))
