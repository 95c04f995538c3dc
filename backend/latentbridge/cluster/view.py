"""The engine as the server sees it when the engines are Ray Serve replicas.

The server reads "the engine" for its state and capabilities (status, samplers, seamless axes,
control types, upscaler/VAE/embedding listings, memory) and runs upscales and preprocessors on it. Here those come
from a snapshot that a replica holding the server's current model reports (replica.snapshot),
taken when the replicas are first up and after each model switch; an upscale is one call to a
replica. No torch: the front-end process never imports it.
"""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from .. import images
from ..protocol import Cancelled, ErrorCode, LatentBridgeError, ModelState, ModelStatus, Sampler, Schedule, Seamless
from ..settings import Settings


class ClusterEngine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.handle: Any = None  # the engine deployment's DeploymentHandle, once deployed
        self._lock = threading.Lock()
        self._model = settings.model  # what a job without `model` runs with (a model switch changes it)
        self._snapshot: dict[str, Any] = {}
        self._status = ModelStatus(name=settings.model, state=ModelState.loading)

    # ---------------------------------------------------------------- state (any thread)

    @property
    def current_model(self) -> str:
        with self._lock:
            return self._model

    @property
    def status(self) -> ModelStatus:
        with self._lock:
            return self._status.model_copy()

    def set_snapshot(self, model: str, snapshot: dict[str, Any]) -> None:
        """A replica's report for `model`, which becomes the current model."""
        status: ModelStatus = snapshot["status"]
        with self._lock:
            self._model = model
            self._snapshot = snapshot
            self._status = status.model_copy(update={"name": model})

    def set_failed(self, message: str) -> None:
        with self._lock:
            self._status = self._status.model_copy(update={"state": ModelState.failed, "error": message,
                                                           "progress": None})

    def _get(self, key: str, default: Any) -> Any:
        with self._lock:
            return self._snapshot.get(key, default)

    # ---------------------------------------------------------------- what the server reads

    @property
    def capabilities_families(self) -> list[str]:
        return list(self._get("families", []))

    def usable_samplers(self) -> list[Sampler]:
        return list(self._get("samplers", list(Sampler)))

    def usable_schedules(self, sampler: Sampler) -> list[Schedule]:
        return list(self._get("schedules", {}).get(Sampler(sampler).value, list(Schedule)))

    def usable_seamless(self) -> list[Seamless]:
        return list(self._get("seamless", list(Seamless)))

    def control_capabilities(self) -> dict:
        return dict(self._get("control", {}))

    def preprocessor_names(self) -> list[str]:
        return list(self.control_capabilities().get("preprocessors", []))

    def upscalers(self) -> list[dict]:
        return list(self._get("upscalers", []))

    def vaes(self) -> list[dict[str, str]]:
        return list(self._get("vaes", []))

    def embeddings(self) -> dict[str, dict[str, dict]]:
        return dict(self._get("embeddings", {"loaded": {}, "skipped": {}}))

    def memory(self) -> dict:
        return dict(self._get("memory", {"error": "no engine replica has reported yet"}))

    def upscale(self, image: Image.Image, upscaler: str, size: tuple[int, int], *, seamless: Seamless = Seamless.none,
                tile: int = 192, overlap: int = 8, cancel: threading.Event | None = None) -> Image.Image:
        """One image through an upscaler on a replica. Blocking: call it from a worker thread
        (JobManager.run_exclusive); `cancel` stops the call."""
        return self._on_replica("upscale", images.encode_png(image), upscaler, tuple(size), Seamless(seamless).value,
                                tile, overlap, cancel=cancel)

    def preprocess(self, name: str, image: Image.Image, options: dict | None = None, *, field: str = "preprocessor",
                   options_field: str | None = None) -> Image.Image:
        """Preprocessor `name` on `image` on a replica (with its depth estimator), as
        `Engine.preprocess` does. Blocking: call it from a worker thread."""
        return self._on_replica("preprocess", images.encode_png(image), name, options, field, options_field)

    def _on_replica(self, method: str, *args: Any, cancel: threading.Event | None = None) -> Image.Image:
        """Call `method` on a replica holding the current model; its {png} back as an image, its
        {error} raised as the typed error it is."""
        if self.handle is None:
            raise self.unavailable()
        response = getattr(self.handle.options(multiplexed_model_id=self.current_model), method).remote(*args)
        while True:
            try:
                answer = response.result(timeout_s=0.1)
                break
            except TimeoutError:
                if cancel is not None and cancel.is_set():
                    response.cancel()
                    raise Cancelled() from None
        if "error" in answer:
            error = answer["error"]
            raise LatentBridgeError(error.message, field=error.field, code=error.code)
        return images.decode_image(answer["png"])

    def unavailable(self) -> LatentBridgeError:
        """The typed error for work that needs replicas while there are none (yet)."""
        status = self.status
        if status.state is ModelState.failed:
            return LatentBridgeError(f"the engine replicas are not available: {status.error}",
                                     code=ErrorCode.model_load_failed)
        return LatentBridgeError("the engine replicas are still starting", code=ErrorCode.model_not_ready)
