"""The cluster runner: the job queue's jobs run on engine replicas on Ray Serve.

The front-end keeps everything that makes the single-machine server what it is — the journal,
the queue with its priorities and fairness, subscriptions, previews' latest-wins delivery,
results on disk — in `JobManager`; this runner only replaces the local worker thread. It hands
a job to the engine deployment when the queue gives it one (at most `ray_max_replicas` at once,
so Serve's autoscaler sees jobs waiting), as one streaming call routed to a replica holding the
job's model, and turns the replica's items back into the job's events.

Cancel (or the job timeout, or a shutdown) cancels that call: Serve cancels it in the replica,
whose engine stops at its next step. A replica that dies mid-job (its process killed, its node
lost) surfaces as an actor error on the stream: the job runs once more, on another replica
(Serve no longer routes to the dead one and starts a replacement); if that one dies too, the job
fails with `worker_lost`. Either way the journal keeps the job and the front-end serves on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .. import __version__
from ..jobs.job import Job, stored_inputs
from ..jobs.running import JobEvents, JobOutput
from ..protocol import Cancelled, ErrorCode, LatentBridgeError, ModelState
from ..settings import Settings
from ..store import ResultStore
from . import deploy
from .view import ClusterEngine

log = logging.getLogger("latentbridge.cluster")

ATTEMPTS = 2  # a job whose replica dies runs once more, on another replica


class ReplicaLost(Exception):
    """The replica running a call died (or became unreachable) before answering."""


class ClusterRunner:
    def __init__(self, settings: Settings, view: ClusterEngine, store: ResultStore, handle: Any = None):
        self.settings = settings
        self.view = view
        self.store = store
        self._handle = handle
        self._owns_deployment = handle is None  # deployed by this front-end: removed when it stops
        self._setup: asyncio.Task | None = None
        self._streams: dict[str, Any] = {}  # job id → its call in flight
        self.placements: dict[str, dict[str, Any]] = {}  # job id → where its current attempt runs

    @property
    def capacity(self) -> int:
        return self.settings.ray_max_replicas

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._setup = asyncio.create_task(self._connect(), name="latentbridge-ray-setup")

    async def ready(self) -> None:
        assert self._setup is not None
        await asyncio.shield(self._setup)

    async def _connect(self) -> None:
        """Deploy (or take) the engine replicas, then ask one for the current model's capabilities.
        Never raises: a failure is the view's status (health, handshake), the server stays up."""
        try:
            if self._handle is None:
                self._handle = await asyncio.to_thread(deploy.deploy_engines, self.settings)
            self.view.handle = self._handle
            model = self.view.current_model
            snapshot = await self._call("info", model)
            self.view.set_snapshot(model, snapshot)
            status, where = self.view.status, snapshot["where"]
            if where["version"] != __version__:
                log.warning("the engine replicas run latentbridge %s, this front-end %s: install the same version "
                            "on every node", where["version"], __version__)
            if status.state is ModelState.failed:
                log.error("the engine replicas could not load %s: %s", model, status.error)
            else:
                log.info("engine replicas ready on Ray (model %s on %s; latentbridge %s from %s)", model, status.device,
                         where["version"], where["package"])
        except LatentBridgeError as exc:
            log.error("%s", exc.message)
            self.view.set_failed(exc.message)
        except Exception as exc:  # noqa: BLE001 - reported through the status; the server stays up
            log.exception("the engine replicas could not be deployed on Ray")
            self.view.set_failed(f"the engine replicas could not be deployed on Ray: {type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        if self._setup is not None and not self._setup.done():
            self._setup.cancel()
        if self._owns_deployment:
            await asyncio.to_thread(deploy.teardown, self.settings)

    async def drain(self) -> None:
        """Nothing runs here: the running jobs' calls end with their jobs."""

    # ---------------------------------------------------------------- calls

    async def _call(self, method: str, model: str, *args: Any) -> Any:
        """A plain (non-streaming) call to a replica holding `model`; once more on another replica
        if the first dies."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await getattr(self._handle.options(multiplexed_model_id=model), method).remote(*args)
            except Exception as exc:  # noqa: BLE001 - sorted into typed errors
                error = _translate(exc)
                if not isinstance(error, ReplicaLost):
                    raise error from None
                if attempt == ATTEMPTS:
                    raise LatentBridgeError(f"the engine replica answering {method!r} stopped ({error}), and so did "
                                            "the one it was retried on", code=ErrorCode.worker_lost) from None
                log.warning("engine replica stopped during %r (%s); asking another", method, error)
        raise AssertionError("unreachable")

    async def load_model(self, model: str | None) -> None:
        """Make `model` the current one: a replica loads it (after its running job) and reports."""
        if self._handle is None:
            raise self.view.unavailable()
        name = model or self.settings.model
        answer = await self._call("load", name)
        if "error" in answer:
            error = answer["error"]
            raise LatentBridgeError(error.message, field=error.field, code=error.code)
        self.view.set_snapshot(name, answer)

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """`fn` calls the view (ClusterEngine.upscale), which sends the work to a replica; Serve
        gives each replica one call at a time. Ray's errors come out typed, as a job's do."""
        try:
            return await asyncio.to_thread(fn)
        except (LatentBridgeError, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors, sorted into typed ones
            error = _translate(exc)
            if isinstance(error, ReplicaLost):
                raise LatentBridgeError(f"the engine replica doing this stopped ({error}); try again",
                                        code=ErrorCode.worker_lost) from None
            raise error from None

    # ---------------------------------------------------------------- jobs

    def cancel(self, job: Job) -> None:
        stream = self._streams.get(job.id)
        if stream is not None:
            stream.cancel()

    async def run(self, job: Job, events: JobEvents) -> JobOutput:
        if self._handle is None or (self.view.status.state is ModelState.failed and job.request.model is None):
            raise self.view.unavailable()
        model = job.request.model or self.view.current_model
        if job.request.model is not None and job.request.model != self.view.current_model:
            log.info("job %s asks for model %s (current %s): routed to a replica holding it, or one loads it",
                     job.id, job.request.model, self.view.current_model,
                     extra={"job_id": job.id, "client": job.owner, "event": "model_switch"})
        payload = {"job_id": job.id, "request": job.request,
                   "inputs": await asyncio.to_thread(stored_inputs, job, self.store)}
        try:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    return await self._attempt(job, events, model, payload)
                except ReplicaLost as exc:
                    if job.cancel_event.is_set():
                        raise Cancelled() from None
                    where = self.placements.get(job.id, {}).get("replica", "?")
                    if attempt == ATTEMPTS:
                        raise LatentBridgeError(
                            f"the engine replica running this job stopped ({exc}), and so did the one it was "
                            f"retried on (replica {where}); the server keeps serving: submit it again",
                            code=ErrorCode.worker_lost) from None
                    log.warning("job %s: engine replica %s stopped at step %d (%s); retrying on another replica",
                                job.id, where, job.step, exc, extra={"job_id": job.id, "event": "retry"})
            raise AssertionError("unreachable")
        finally:
            self.placements.pop(job.id, None)

    async def _attempt(self, job: Job, events: JobEvents, model: str, payload: dict[str, Any]) -> JobOutput:
        stream = self._handle.options(stream=True, multiplexed_model_id=model).run.remote(payload)
        self._streams[job.id] = stream
        if job.cancel_event.is_set():  # cancelled before the call existed
            stream.cancel()
        try:
            async for item in stream:
                kind = item["kind"]
                if kind == "replica":
                    self.placements[job.id] = item
                    log.info("job %s runs on engine replica %s (node %s, pid %s)", job.id, item["replica"],
                             item["node"][:12], item["pid"], extra={"job_id": job.id, "event": "placed"})
                elif kind == "started":
                    events.started()
                elif kind == "progress":
                    events.progress(item["step"], item["total"], item["eta_s"])
                elif kind == "preview":
                    events.preview(item["frame"])
                elif kind == "done":
                    return item["output"]
                elif kind == "error":
                    error = item["error"]
                    raise LatentBridgeError(error.message, field=error.field, code=error.code)
                elif kind == "cancelled":
                    raise Cancelled()
            raise ReplicaLost("the replica ended the call without a result")
        except (LatentBridgeError, Cancelled, ReplicaLost):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors, sorted into typed ones
            if job.cancel_event.is_set():
                raise Cancelled() from None
            raise _translate(exc) from None
        finally:
            self._streams.pop(job.id, None)


def _translate(exc: BaseException) -> Exception:
    """A Ray / Serve error on a call → ReplicaLost (worth another replica) or a typed error."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    if isinstance(exc, serve_errors.RequestCancelledError):
        return Cancelled()
    if isinstance(exc, (ray_errors.RayActorError, ray_errors.ActorUnavailableError,
                        serve_errors.ReplicaUnavailableError)):
        return ReplicaLost(type(exc).__name__)
    if isinstance(exc, serve_errors.DeploymentUnavailableError):
        return LatentBridgeError("no engine replica is available: their deployment failed (see `serve status`)",
                                 code=ErrorCode.model_not_ready)
    log.error("engine replica call failed: %s: %s", type(exc).__name__, exc)
    return LatentBridgeError(f"internal error ({type(exc).__name__}) reaching the engine replicas; see the server log",
                             code=ErrorCode.internal)
