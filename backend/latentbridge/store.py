"""Jobs on disk: a journal entry per job from the moment it is accepted, its inputs and results.

Layout under `data_dir` (docs/http-api.md "Data folder"):

    jobs/<job_id>/job.json          the record: request, state, seeds, error, timestamps
    jobs/<job_id>/input-<role>.png  inputs (init, mask, ...), so the job can run again exactly
    jobs/<job_id>/result-<i>.png    result images (PNG with the request embedded)

A job is journaled when it is accepted: its inputs are written, then its record (state `queued`),
before the client hears `accepted`; the record follows the job through `running` to `done`,
`failed`, `cancelled` or `interrupted`. Every file is written to a temporary name in the same
folder and then renamed, so a reader (or a restart after a crash) sees either the whole file or
none of it. Results are written before the record that lists them: a record lists only complete
results. A finished record is final: a late write of an unfinished state never replaces it.

On start-up the store reads every record, deletes what a crash can leave behind (temporary files,
results a record does not list, folders of jobs that were never accepted), and recovers folders
whose record is missing but whose results are whole (older versions wrote the record last) from
the request embedded in the result PNGs. The in-memory index answers history queries without
touching the disk; the store is safe to use from the worker thread and the event loop at once.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
from pathlib import Path

from pydantic import BaseModel, ValidationError

from .protocol import ErrorEvent, GenerationRequest, JobState, StatusEvent

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,40}$")  # init, mask, control.0, reference.1, ...
RESULT_RE = re.compile(r"^result-(\d+)\.png$")


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
    resumed: int = 0  # times the job was queued again after the server stopped while it was unfinished
    cancel_requested: bool = False  # a cancel arrived while it ran: it must not run again after a crash

    def status(self) -> StatusEvent:
        return StatusEvent(job_id=self.job_id, state=self.state, result_count=self.result_count,
                           request=self.request, error=self.error, created_at=self.created_at,
                           finished_at=self.finished_at, total=self.request.steps, resumed=self.resumed,
                           step=self.request.steps if self.state is JobState.done else None)


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))


def valid_role(role: str) -> bool:
    return bool(ROLE_RE.match(role))


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename. The file is
    created with mode 0o666 so the user's umask decides its permissions, as for any other file."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ResultStore:
    def __init__(self, data_dir: Path | str, retention: int = 500):
        self.root = Path(data_dir) / "jobs"
        self.retention = max(1, retention)
        self._lock = threading.Lock()  # the index; held briefly, never across disk I/O
        self._write_lock = threading.Lock()  # orders record writes
        self._records: dict[str, JobRecord] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_index()

    # ------------------------------------------------------------------ startup

    def _load_index(self) -> None:
        for folder in self.root.iterdir():
            if not folder.is_dir() or not valid_job_id(folder.name):
                continue
            for tmp in folder.glob(".*.tmp"):  # leftovers of writes interrupted by a crash
                tmp.unlink(missing_ok=True)
            record = self._read_record(folder) or self._recover_record(folder)
            if record is None:
                # Inputs without a record: the job was never acknowledged (the client got an error).
                log.info("removing %s: a job that was never accepted", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self._drop_unlisted_results(folder, record)
            self._records[record.job_id] = record

    def _read_record(self, folder: Path) -> JobRecord | None:
        path = folder / "job.json"
        if not path.exists():
            return None
        try:
            return JobRecord.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("unreadable job record %s (%s): recovering from its results", path, exc)
            return None

    def _recover_record(self, folder: Path) -> JobRecord | None:
        """A record for whole results that lost theirs, from the request each result PNG embeds."""
        from . import images

        seeds, sizes, request = [], [], None
        while (path := folder / f"result-{len(seeds)}.png").exists():
            try:
                data = path.read_bytes()
                embedded = images.read_png_request(data)
                size = images.decode_image(data).size
            except Exception:  # noqa: BLE001 - a partial or foreign file ends the recovered list
                break
            if embedded is None or embedded.seed is None:
                break
            request = request or embedded
            seeds.append(embedded.seed)
            sizes.append(list(size))
        if request is None:
            return None
        created = min(p.stat().st_mtime for p in folder.iterdir())
        record = JobRecord(job_id=folder.name, request=request.model_copy(update={"batch_size": len(seeds),
                                                                               "seed": seeds[0]}),
                           state=JobState.done, seeds=seeds, result_count=len(seeds), sizes=sizes,
                           created_at=created, finished_at=created)
        log.warning("recovered job %s (%d results) whose record was missing", folder.name, len(seeds))
        self._write_record(record)
        return record

    @staticmethod
    def _drop_unlisted_results(folder: Path, record: JobRecord) -> None:
        """Results beyond what the record lists were cut short by a crash, or belong to a run that
        will start again: never listed, so never seen; delete them."""
        listed = record.result_count if record.state is JobState.done else 0
        for path in folder.iterdir():
            match = RESULT_RE.match(path.name)
            if match and int(match.group(1)) >= listed:
                path.unlink(missing_ok=True)

    def unfinished(self) -> list[JobRecord]:
        """Jobs the journal says were queued or running, oldest first (the queue to rebuild)."""
        with self._lock:
            pending = [r for r in self._records.values() if not r.state.finished]
        return sorted(pending, key=lambda r: r.created_at)

    # ------------------------------------------------------------------ writing

    def _folder(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def journal(self, record: JobRecord, inputs: dict[str, bytes]) -> None:
        """Write an accepted job: its inputs first, then its record (the record makes it exist)."""
        folder = self._folder(record.job_id)
        folder.mkdir(exist_ok=True)
        for role, png in inputs.items():
            if not valid_role(role):
                raise ValueError(f"invalid input role {role!r}")
            atomic_write(folder / f"input-{role}.png", png)
        self.save_record(record)

    def save_result(self, job_id: str, index: int, png: bytes) -> None:
        folder = self._folder(job_id)
        folder.mkdir(exist_ok=True)
        atomic_write(folder / f"result-{index}.png", png)

    def _write_record(self, record: JobRecord) -> None:
        folder = self._folder(record.job_id)
        folder.mkdir(exist_ok=True)
        atomic_write(folder / "job.json", record.model_dump_json(indent=1).encode())

    def save_record(self, record: JobRecord) -> None:
        """Write a job's record (after its results) and apply the retention limit. A finished
        record is final: an unfinished one arriving after it (a cancel racing the end) is dropped."""
        with self._write_lock:
            known = self.record(record.job_id)
            if known is not None and known.state.finished and not record.state.finished:
                return
            self._write_record(record)
            with self._lock:
                self._records[record.job_id] = record
        if record.state.finished:
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
        """A stored input of a job (`init`, `mask`, ...), or None."""
        record = self.record(job_id)
        if record is None or role not in record.inputs or not valid_role(role):
            return None
        try:
            return (self._folder(job_id) / f"input-{role}.png").read_bytes()
        except OSError:
            return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

