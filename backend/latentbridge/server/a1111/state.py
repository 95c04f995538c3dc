"""What the A1111 layer keeps per app (A1111 reports one global progress state), and accessors
for the server core underneath."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...jobs import JobManager
from ...protocol import ErrorCode, LatentBridgeError, StatusEvent
from ...settings import Settings
from ..app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY
from ..security import list_models, resolve_model_name

PREFIX = "/sdapi/v1"

def _jobs(app: web.Application) -> JobManager:
    return app[JOBS_KEY]


def _settings(app: web.Application) -> Settings:
    return app[SETTINGS_KEY]


def _loaded_model(app: web.Application) -> str | None:
    return app[ENGINE_KEY].status.name or _settings(app).model


def _resolve_model(app: web.Application, name: str) -> str:
    """A checkpoint name from the client → what the engine may load (inside --model-dirs only)."""
    return resolve_model_name(name, _settings(app), _loaded_model(app))


def _list_models(app: web.Application) -> list[tuple[str, str]]:
    """(title, filename) of the loaded model, then of every model a client may pick."""
    loaded = _loaded_model(app)
    items = [(loaded, loaded)] if loaded else []
    items += [(m["name"], m["path"]) for m in list_models(_settings(app)) if m["name"] != loaded]
    return items


async def _load_model(app: web.Application, name: str) -> None:
    try:
        await _jobs(app).load_model(_resolve_model(app, name))
    except LatentBridgeError as exc:
        if exc.field == "model":
            exc.field = "sd_model_checkpoint"
        raise
    except Exception as exc:  # noqa: BLE001 - the reason goes to the client, the server stays up
        raise LatentBridgeError(f"loading {name!r} failed ({type(exc).__name__})", field="sd_model_checkpoint",
                                code=ErrorCode.model_load_failed) from None


def _status_of(jobs: JobManager, job_id: str) -> StatusEvent | None:
    found = jobs.get(job_id)
    if found is None or isinstance(found, StatusEvent):
        return found
    return found.status()



@dataclass
class Task:
    kind: str
    job_count: int
    started: float = field(default_factory=time.time)
    job_no: int = 0
    job_id: str | None = None
    step: int = 0
    total: int = 0
    interrupted: bool = False

    @property
    def timestamp(self) -> str:
        return time.strftime("%Y%m%d%H%M%S", time.localtime(self.started))


@dataclass
class A1111State:
    tasks: list[Task] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


STATE_KEY = web.AppKey("latentbridge_a1111_state", A1111State)


def _state(app: web.Application) -> A1111State:
    return app[STATE_KEY]
