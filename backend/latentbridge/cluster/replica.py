"""An engine replica: one Ray Serve replica holding one `Engine` (one GPU), one call at a time.

This runs in a Ray worker process, on whichever node Ray places it; it is the only part of the
cluster path that imports torch (through latentbridge.engine, in the constructor). The
deployment is made with `max_ongoing_requests=1`, so Serve hands a replica one call at a time and
queues the rest; engine work still goes through one worker thread, so a cancelled job's last step
finishes before the next call touches the engine.

The model of each call is its multiplexed model id (`handle.options(multiplexed_model_id=...)`):
Serve routes a call to a replica that holds that model when one does (and after a short wait to
any other replica, which then loads it). A replica holds one model: loading another replaces it,
as `Engine.load` does.

Calls (made by cluster/runner.py and cluster/view.py):

    run(payload)   streaming; payload {job_id, request, inputs: {role: png}}. Yields dicts with
                   a `kind`: `replica` (where the job runs: replica, node, pid, package, version), then
                   `started`, `progress` {step, total, eta_s}, `preview` {frame}, and one final
                   item: `done` {output: JobOutput}, `error` {error: ErrorEvent} or
                   `cancelled`. Engine errors travel as items, never as exceptions.
    info()         what the front-end reports as capabilities, for the call's model (snapshot()).
    describe()     where this replica runs and the model it holds, loading nothing (diagnostics:
                   also where Serve routes a model's calls at the moment).
    load()         load the call's model; its snapshot, or {error}.
    upscale(...)   one image through an upscaler; {png} or {error}.
    preprocess(...) one image through a preprocessor (a control map); {png} or {error}.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any, AsyncIterator, Callable

import ray
from ray import serve

from .. import images
from ..jobs.job import decode_inputs
from ..jobs.running import encode_output, step_callback
from ..protocol import Cancelled, ErrorCode, ErrorEvent, GenerationRequest, LatentBridgeError, Sampler, Seamless
from ..settings import Settings

log = logging.getLogger("latentbridge.cluster")

FINAL_KINDS = ("done", "error", "cancelled")


class EngineReplica:
    async def __init__(self, settings: dict[str, Any]):
        from .. import __file__ as package_file
        from .. import __version__
        from ..engine import Engine

        self.settings = Settings.model_validate(settings)
        self.engine = Engine(self.settings)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentbridge-gpu")
        context = serve.get_replica_context()
        self.where = {"replica": context.replica_id.unique_id, "node": ray.get_runtime_context().get_node_id(),
                      "pid": os.getpid(), "package": os.path.dirname(package_file), "version": __version__}
        try:
            # The configured model, before Serve counts this replica as running, through the
            # multiplexed loader: Serve then routes jobs for that model here from the first one on.
            await self._model(self.settings.model)
        except LatentBridgeError as exc:  # the status says failed, with the reason; another model may still load
            log.error("replica %s: model load failed: %s", self.where["replica"], exc.message)

    # ---------------------------------------------------------------- models

    @serve.multiplexed(max_num_models_per_replica=1)
    async def _model(self, model_id: str) -> str:
        await self._in_engine_thread(self.engine.load, model_id)
        return model_id

    def _call_model(self) -> str:
        return serve.get_multiplexed_model_id() or self.settings.model

    async def _in_engine_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---------------------------------------------------------------- jobs

    async def run(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {"kind": "replica", **self.where}
        job_id: str = payload["job_id"]
        request: GenerationRequest = payload["request"]
        try:
            await self._model(self._call_model())
        except LatentBridgeError as exc:
            yield {"kind": "error", "error": exc.to_event(job_id)}
            return
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        loop.run_in_executor(self._executor, self._generate, job_id, request, payload["inputs"], cancel, put)
        try:
            while True:
                item = await items.get()
                yield item
                if item["kind"] in FINAL_KINDS:
                    return
        finally:
            # The caller cancelled (Serve raises CancelledError here) or went away: the engine stops
            # at its next step; the worker thread finishes that before any other call uses it.
            cancel.set()

    def _generate(self, job_id: str, request: GenerationRequest, pngs: dict[str, bytes], cancel: threading.Event,
                  put: Callable[[dict[str, Any]], None]) -> None:
        """Runs on the engine thread; reports through `put`, never raises."""
        try:
            if cancel.is_set():
                raise Cancelled()
            inputs = decode_inputs(pngs)
            put({"kind": "started"})
            on_step = step_callback(job_id, request, self.settings.preview_interval_s, cancel,
                                    lambda step, total, eta: put({"kind": "progress", "step": step, "total": total,
                                                                  "eta_s": eta}),
                                    lambda frame: put({"kind": "preview", "frame": frame}))
            result = self.engine.generate(request, init_image=inputs.pop("init", None), mask=inputs.pop("mask", None),
                                          on_step=on_step, cancel=cancel, inputs=inputs)
            put({"kind": "done", "output": encode_output(result)})
        except Cancelled:
            put({"kind": "cancelled"})
        except LatentBridgeError as exc:
            put({"kind": "error", "error": exc.to_event(job_id)})
        except Exception as exc:  # noqa: BLE001 - a crashed job affects that job alone
            log.exception("job %s failed on replica %s", job_id, self.where["replica"])
            put({"kind": "error", "error": ErrorEvent(
                job_id=job_id, code=ErrorCode.internal,
                message=f"internal error ({type(exc).__name__}) on engine replica {self.where['replica']}; "
                        "see its log")})

    # ---------------------------------------------------------------- state and extras

    async def info(self) -> dict[str, Any]:
        try:
            await self._model(self._call_model())
        except LatentBridgeError:
            pass  # the snapshot's status says failed, with the reason
        return await self._in_engine_thread(self.snapshot)

    async def describe(self) -> dict[str, Any]:
        return {**self.where, "model": self.engine.status.name}

    async def load(self) -> dict[str, Any]:
        try:
            await self._model(self._call_model())
        except LatentBridgeError as exc:
            return {"error": exc.to_event()}
        return await self._in_engine_thread(self.snapshot)

    def snapshot(self) -> dict[str, Any]:
        """What the server reports from `Engine` (app.capabilities, A1111 listings), for the loaded model."""
        engine = self.engine
        return {
            "status": engine.status,
            "families": list(engine.capabilities_families),
            "samplers": engine.usable_samplers(),
            "schedules": {sampler.value: engine.usable_schedules(sampler) for sampler in Sampler},
            "seamless": engine.usable_seamless(),
            "control": engine.control_capabilities(),
            "upscalers": engine.upscalers(),
            "vaes": engine.vaes(),
            "embeddings": engine.embeddings(),
            "memory": engine.memory(),
            "where": self.where,
        }

    async def preprocess(self, png: bytes, name: str, options: dict | None, field: str,
                         options_field: str | None) -> dict[str, Any]:
        return await self._in_engine_thread(self._preprocess, png, name, options, field, options_field)

    def _preprocess(self, png: bytes, name: str, options: dict | None, field: str,
                    options_field: str | None) -> dict[str, Any]:
        try:
            out = self.engine.preprocess(name, images.decode_image(png), options, field=field,
                                         options_field=options_field)
        except LatentBridgeError as exc:
            return {"error": exc.to_event()}
        return {"png": images.encode_png(out)}

    async def upscale(self, png: bytes, upscaler: str, size: tuple[int, int], seamless: str, tile: int,
                      overlap: int) -> dict[str, Any]:
        cancel = threading.Event()
        try:
            return await self._in_engine_thread(self._upscale, png, upscaler, size, Seamless(seamless), tile, overlap,
                                                cancel)
        finally:
            cancel.set()  # a cancelled call stops at the next tile

    def _upscale(self, png: bytes, upscaler: str, size: tuple[int, int], seamless: Seamless, tile: int, overlap: int,
                 cancel: threading.Event) -> dict[str, Any]:
        try:
            out = self.engine.upscale(images.decode_image(png), upscaler, tuple(size), seamless=seamless, tile=tile,
                                      overlap=overlap, cancel=cancel)
        except LatentBridgeError as exc:
            return {"error": exc.to_event()}
        return {"png": images.encode_png(out)}
