"""What the A1111 layer keeps per app: the calls in flight (A1111 reports one global progress
state), its options (persisted in the data folder), the checkpoint a client selected, and the
model-hash cache."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...model_hash import HashCache
from ...settings import Settings
from ..app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY

PREFIX = "/sdapi/v1"


@dataclass
class Task:
    """One A1111 generation call: `job_count` jobs (its n_iter batches), run one after another."""

    kind: str
    job_count: int
    started: float = field(default_factory=time.time)
    job_no: int = 0
    job_id: str | None = None
    step: int = 0
    total: int = 0
    interrupted: bool = False
    skipped: bool = False

    @property
    def timestamp(self) -> str:
        return time.strftime("%Y%m%d%H%M%S", time.localtime(self.started))


@dataclass
class A1111State:
    hashes: HashCache
    tasks: list[Task] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # what clients set (defaults are not stored)
    # The checkpoint POST /options (or an override kept afterwards) selected: A1111 calls without an
    # override use it, as A1111 reloads its selected checkpoint. None: whatever is loaded.
    selected_checkpoint: str | None = None


STATE_KEY = web.AppKey("latentbridge_a1111_state", A1111State)


def state(app: web.Application) -> A1111State:
    return app[STATE_KEY]


def settings(app: web.Application) -> Settings:
    return app[SETTINGS_KEY]


def engine(app: web.Application) -> Any:
    return app[ENGINE_KEY]


def jobs(app: web.Application):
    return app[JOBS_KEY]


def owner(request: web.Request) -> str:
    # Fairness is between clients: each peer address counts as one.
    return f"a1111:{request.remote or 'local'}"
