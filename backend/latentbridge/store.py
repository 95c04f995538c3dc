"""Finished jobs on disk: results, inputs and a JSON record per job, kept across restarts.

Layout under `data_dir`:

    jobs/<job_id>/job.json        the record: request, state, seeds, error, timestamps
    jobs/<job_id>/result-<i>.png  result images (PNG with the request embedded)
    jobs/<job_id>/input-init.png  inputs, so the job can be regenerated exactly
    jobs/<job_id>/input-mask.png

Every file is written to a temporary name in the same folder and then `os.replace`d, so a reader
(or a restart after a crash) sees either the whole file or none of it. The record is written last:
a job whose record says `done` has all its results on disk. The store keeps an in-memory index of
the records so history queries never touch the disk; it is safe to use from the worker thread and
the event loop at once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from .protocol import ErrorCode, ErrorEvent, GenerationRequest, JobState, StatusEvent

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
INPUT_ROLES = ("init", "mask")


class JobRecord(BaseModel):
    job_id: str
    request: GenerationRequest
    state: JobState
    owner: str = "local"
    priority: str = "normal"
    seeds: list[int] = []
    result_count: int = 0
    sizes: list[list[int]] = []  # [width, height] of each result
    error: ErrorEvent | None = None
    inputs: list[str] = []
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None

    def status(self) -> StatusEvent:
        return StatusEvent(job_id=self.job_id, state=self.state, result_count=self.result_count,
                           request=self.request, error=self.error, created_at=self.created_at,
                           finished_at=self.finished_at, total=self.request.steps,
                           step=self.request.steps if self.state is JobState.done else None)


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ResultStore:
    def __init__(self, data_dir: Path | str, retention: int = 500):
        self.root = Path(data_dir) / "jobs"
        self.retention = max(1, retention)
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_index()

    # ------------------------------------------------------------------ startup

    def _load_index(self) -> None:
        for folder in self.root.iterdir():
            if not folder.is_dir() or not valid_job_id(folder.name):
                continue
            path = folder / "job.json"
            try:
                record = JobRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError, ValueError):
                log.warning("ignoring unreadable job record in %s", folder)
                continue
            if not record.state.finished:
                # The server stopped (or crashed) while this job was queued or running.
                record = record.model_copy(update={
                    "state": JobState.failed, "finished_at": record.finished_at or time.time(),
                    "error": ErrorEvent(job_id=record.job_id, code=ErrorCode.internal,
                                        message="the server stopped before this job finished"),
                })
                self._write_record(record)
            self._records[record.job_id] = record
        for tmp in self.root.glob("*/.*.tmp"):  # leftovers of writes interrupted by a crash
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing

    def _folder(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def save_input(self, job_id: str, role: str, png: bytes) -> None:
        if role not in INPUT_ROLES:
            raise ValueError(f"unknown input role {role!r}")
        folder = self._folder(job_id)
        folder.mkdir(exist_ok=True)
        atomic_write(folder / f"input-{role}.png", png)

    def save_result(self, job_id: str, index: int, png: bytes) -> None:
        folder = self._folder(job_id)
        folder.mkdir(exist_ok=True)
        atomic_write(folder / f"result-{index}.png", png)

    def _write_record(self, record: JobRecord) -> None:
        folder = self._folder(record.job_id)
        folder.mkdir(exist_ok=True)
        atomic_write(folder / "job.json", record.model_dump_json(indent=1).encode())

    def save_record(self, record: JobRecord) -> None:
        """Write a job's record (last, after its results) and apply the retention limit."""
        self._write_record(record)
        with self._lock:
            self._records[record.job_id] = record
        self.prune()

    def prune(self) -> list[str]:
        """Delete the oldest finished jobs beyond the retention limit; returns their ids."""
        with self._lock:
            finished = sorted((r for r in self._records.values() if r.state.finished),
                              key=lambda r: (r.finished_at or r.created_at, r.created_at))
            doomed = [r.job_id for r in finished[: max(0, len(finished) - self.retention)]]
            for job_id in doomed:
                del self._records[job_id]
        for job_id in doomed:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        return doomed

    # ------------------------------------------------------------------ reading

    def record(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._records.get(job_id)

    def records(self, limit: int = 50) -> list[JobRecord]:
        """Newest first."""
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: r.created_at, reverse=True)
        return records[: max(0, limit)]

    def result_png(self, job_id: str, index: int) -> bytes | None:
        record = self.record(job_id)
        if record is None or not 0 <= index < record.result_count:
            return None
        try:
            return (self._folder(job_id) / f"result-{index}.png").read_bytes()
        except OSError:
            return None

    def input_png(self, job_id: str, role: str) -> bytes | None:
        """A job's stored input image (`init` or `mask`), or None when it has none on disk."""
        if role not in INPUT_ROLES or not valid_job_id(job_id):
            return None
        try:
            return (self._folder(job_id) / f"input-{role}.png").read_bytes()
        except OSError:
            return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
