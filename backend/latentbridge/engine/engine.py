"""The engine: one loaded model, one generation at a time. Knows nothing of HTTP.

The jobs layer calls `load` and `generate` from one worker thread per device; `status` may be
read from any thread. See docs/architecture.md for the contract.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import secrets
import threading
from contextlib import contextmanager

import torch
from PIL import Image

from ..protocol import (
    MAX_SEED,
    ControlType,
    LiveOptions,
    ErrorCode,
    GenerationRequest,
    InvalidRequest,
    LatentBridgeError,
    MissingImage,
    Mode,
    ModelState,
    ModelStatus,
    OutOfMemory,
    Sampler,
    Schedule,
    Seamless,
    Unsupported,
)
from .. import images as images_module
from ..protocol import LATENT_UPSCALERS
from ..settings import Settings
from . import control, embeddings, fewstep, models, preprocess, reference, samplers, tiny_control, upscale, vae
from .accel import Accel
from .taesd import TaesdCache
from .estimators import EstimatorCache
from .generate import GenerationResult, StepUpdate, _Run, run_mode
from .live import LiveFrame, LiveRenderer
from .lora import applied_loras
from .preview import LatentPreviewer
from .seamless import set_seamless

log = logging.getLogger(__name__)


class Engine:
    """Loads a model and turns requests into images.

    `local=True` is for an in-process caller that names models and LoRAs by any path (the CLI);
    the server keeps the default, where names resolve only to built-ins, the configured model and
    files inside the configured model / LoRA folders.
    """

    def __init__(self, settings: Settings, *, local: bool = False):
        self.settings = settings
        self.local = local
        self._model: models.LoadedModel | None = None
        self.accel: Accel | None = None  # the speed options in force on the loaded model
        self._taesds = TaesdCache(settings)
        self._live = LiveRenderer(self)
        self._controlnets = control.ControlNetCache(settings, local=local)
        self._references = reference.AdapterCache(settings, local=local)
        self._estimators = EstimatorCache(settings)
        self._lock = threading.Lock()
        self._status = ModelStatus(name=settings.model, state=ModelState.loading)
        self._upscalers = upscale.Upscalers(settings)
        self._vaes = vae.VaeOverrides(settings, local=local)

    # ---------------------------------------------------------------- state

    @property
    def status(self) -> ModelStatus:
        with self._lock:
            return self._status.model_copy()

    def _set_status(self, **values) -> None:
        with self._lock:
            self._status = self._status.model_copy(update=values)

    @property
    def capabilities_families(self) -> list[str]:
        return list(models.FAMILIES)

    def usable_samplers(self) -> list[Sampler]:
        """Samplers the loaded model can use (all this installation has while none is loaded)."""
        family = self.status.family
        return samplers.family_samplers(family) if family else samplers.available_samplers()

    def usable_schedules(self, sampler: Sampler) -> list[Schedule]:
        """Schedules `sampler` takes with the loaded model."""
        return samplers.schedules_for(sampler, self.status.family)

    def usable_seamless(self) -> list[Seamless]:
        """Seamless axes the loaded model can tile (none for transformer models: SD3, Flux)."""
        family = self.status.family
        return list(Seamless) if not family or family in models.SEAMLESS_FAMILIES else [Seamless.none]

    def control_capabilities(self) -> dict:
        """What conditioning the loaded model can take: control types, the modes that run with
        ControlNet, the ControlNets a request may name, preprocessors, reference images."""
        family = self.status.family
        if family is None:
            return {}
        ref = self._model.source.ref if self._model is not None and self._model.source.kind == "builtin" else None
        names = [name for name, (_, base) in tiny_control.FAMILY.items()
                 if ref is not None and (base == ref or tiny_control.default_for(ref) == name)]
        names += [n for n in control.default_models(self.settings).values() if n not in names]
        return {
            "control_types": list(ControlType),
            "control_modes": sorted(control.CONTROL_MODES.get(family, set()), key=list(Mode).index),
            "controlnets": names,
            "preprocessors": self.preprocessor_names(),
            "reference": reference.available(self._model, self.settings),
        }

    def preprocessor_names(self) -> list[str]:
        return preprocess.available(self.settings)

    def preprocess(self, name: str, image: Image.Image, options: dict | None = None, *, field: str = "preprocessor",
                   options_field: str | None = None) -> Image.Image:
        """Preprocessor `name` on `image` with this engine's depth estimator (a control map, as a unit
        would get it). Blocking; one that needs the estimator runs on the worker thread."""
        with torch.inference_mode():
            return preprocess.preprocess(name, image, options=options, estimators=self._estimators, field=field,
                                         options_field=options_field)

    @property
    def model(self) -> models.LoadedModel | None:
        return self._model

    def list_models(self) -> list[str]:
        return models.list_local_models(self.settings)

    # ---------------------------------------------------------------- loading

    def load(self, model: str | None = None) -> ModelStatus:
        """Load `model` (default: the configured one) in place of the current model. Blocking.

        The current model keeps serving if the new one cannot be had: its weights are read into
        CPU memory first, and only then is the current model parked in CPU memory (freeing the
        accelerator for the new one) and dropped once the new one is in place. A failure restores
        the current model and its status and raises the typed error for the caller alone; with no
        model to fall back on, the status says `failed` with the reason."""
        name = model or self.settings.model
        before = self.status
        current = self._model
        parked: list[bool] = []
        try:
            source = models.resolve_source(name, self.settings, local=self.local)
            if current is not None and current.source == source:
                return before  # the same model under another name (e.g. its listed name)
            self._set_status(name=name, family=None, state=ModelState.loading, error=None, progress=None)
            loaded = models.load(name, self.settings, local=self.local, on_download=self._on_download, source=source,
                                 make_room=lambda _device: parked.append(current is not None and models.park(current)))
        except Exception as exc:
            error = exc if isinstance(exc, LatentBridgeError) else self._unexpected_load_failure(name, exc)
            if current is not None:
                if parked and parked[0]:
                    models.place(current.base, current.device, self.settings)  # back where it served from
                with self._lock:
                    self._status = before  # the previous model serves on; the failure is the caller's alone
                log.warning("could not load %s (still serving %s): %s", name, current.name, error.message)
            else:
                self._set_status(state=ModelState.failed, error=error.message, progress=None)
            raise error from None
        self._model = loaded
        current = None  # dropped: its memory goes back
        self._taesds.clear()
        _free_memory()
        self.accel = Accel(loaded, self.settings).apply()
        self.accel.warm_up(self._warm_generate)
        self._set_status(
            name=name,
            family=loaded.family,
            state=ModelState.ready,
            error=None,
            progress=None,
            inpaint_native=loaded.inpaint_native,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
        )
        log.info("model %s ready (%s, %s, %s)", name, loaded.family, loaded.device, loaded.dtype)
        return self.status

    def _warm_generate(self, width: int, height: int, guidance: float) -> None:
        """One short generation at a size (torch.compile's warm-up at load)."""
        self.generate(GenerationRequest(prompt="", width=width, height=height, steps=2, guidance=guidance, seed=0,
                                        sampler=Sampler.euler, preview={"decoder": "none"}))

    @staticmethod
    def _unexpected_load_failure(name: str, exc: Exception) -> LatentBridgeError:
        if isinstance(exc, torch.OutOfMemoryError):
            return OutOfMemory(f"not enough device memory to load {name}; try --cpu-offload or a smaller model",
                               field="model")
        # An unexpected loader failure must still give a clear, typed error and status.
        log.error("loading %s failed", name, exc_info=exc)
        return LatentBridgeError(f"could not load {name}: {type(exc).__name__}: {exc}", field="model",
                                 code=ErrorCode.model_load_failed)

    def _on_download(self, fraction: float | None) -> None:
        if fraction is not None and fraction >= 1.0:
            self._set_status(state=ModelState.loading, progress=None)  # fetched; now loading
        else:
            self._set_status(state=ModelState.downloading, progress=fraction)

    # ---------------------------------------------------------------- generating

    def generate(
        self,
        request: GenerationRequest,
        init_image: Image.Image | None = None,
        mask: Image.Image | None = None,
        on_step=None,
        cancel: threading.Event | None = None,
        inputs: dict[str, Image.Image] | None = None,
    ) -> GenerationResult:
        """`inputs` holds the other images by role: `control.<i>` (unit i's image), `reference.<i>`."""
        inputs = inputs or {}
        if request.needs_init_image() and init_image is None:
            raise MissingImage(f"mode {request.mode.value} needs an init image", field="init_image")
        if request.needs_mask() and mask is None:
            raise MissingImage("mode inpaint needs a mask", field="mask")
        images_module.check_mask_size(init_image, mask)
        if request.model and (self._model is None or request.model != self._model.name):
            self.load(request.model)
        elif self._model is None:
            self.load()
        model = self._model
        self._check_supported(model, request)
        # The seed is chosen first: seeded preprocessors (shuffle) draw from it too.
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        request = request.model_copy(update={"seed": seed, "model": request.model or model.name})
        control_run = self._control_run(model, request, inputs)
        reference_run = reference.resolve(self._references, model, request, inputs)
        self._live.evict()  # a live session's LoRAs must not colour a job
        accel = self.accel or Accel(model, self.settings)

        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(request.batch_size)]
        tile_vae = self._tile_vae(model, request)
        # On CPU each image of a batch is its own call: batched arithmetic rounds differently, and
        # image i must be bit-identical to a batch-1 request with seed + i (what its PNG embeds).
        # Elsewhere the batch runs in one call, for speed.
        groups = [[s] for s in seeds] if model.device.type == "cpu" else [seeds]
        images: list[Image.Image] = []
        prompts = [request.prompt, request.negative_prompt]
        if request.hires is not None:
            prompts += [request.hires.prompt or "", request.hires.negative_prompt or ""]
        try:
            # The VAE override goes in first: the seamless patch and the previews then use it.
            with self._vaes.applied(model, request.vae), embeddings.applied_embeddings(model.base, prompts, self.settings), \
                    accel.lora_ready(bool(request.loras)), \
                    applied_loras(model.base, request.loras, self.settings, local=self.local), \
                    self._seamless(model, request.seamless, control_run):
                previewer = self._previewer(model, request) if on_step is not None else None
                for index, group in enumerate(groups):
                    run = _Run(
                        model=model,
                        request=request,
                        seeds=group,
                        previewer=previewer,
                        on_step=_batch_progress(on_step, index, len(groups)),
                        cancel=cancel,
                        tile_vae=tile_vae,
                        control=control_run,
                        reference=reference_run,
                        upscale=functools.partial(self._upscale_for_run, model, request.seamless, cancel),
                    )
                    with torch.inference_mode(), accel.generation():
                        images += run_mode(run, init_image, mask)
        except torch.OutOfMemoryError:
            _free_memory()
            raise OutOfMemory(_oom_message(request)) from None
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            _free_memory()  # MPS and some CUDA paths report OOM as a plain RuntimeError
            raise OutOfMemory(_oom_message(request)) from None
        return GenerationResult(images=images, seeds=seeds, request=request)

    def _check_supported(self, model: models.LoadedModel, request: GenerationRequest) -> None:
        samplers.check_sampler(request.sampler, request.schedule, model.family)
        if request.hires is not None:
            hires = request.hires
            samplers.check_sampler(hires.sampler or request.sampler,
                                   hires.schedule if hires.schedule is not None else request.schedule, model.family,
                                   field="hires.sampler")
            if hires.upscaler not in LATENT_UPSCALERS and not upscale.is_builtin(hires.upscaler):
                try:
                    upscale.find_upscaler(hires.upscaler, self.settings)  # fails before any step runs
                except LatentBridgeError as exc:
                    exc.field = "hires.upscaler"
                    raise
        if request.mode not in models.FAMILY_MODES.get(model.family, set()):
            raise Unsupported(f"mode {request.mode.value} is not supported for {model.family} models", field="mode")
        if request.seamless is not Seamless.none and model.family not in models.SEAMLESS_FAMILIES:
            raise Unsupported(
                f"seamless tiling needs a convolutional UNet model (SD 1.x/2.x, SDXL), not {model.family}", field="seamless"
            )
        if request.clip_skip > 1 and model.family == "flux":
            raise Unsupported("clip_skip is not available for flux models (their pipelines take no clip_skip)", field="clip_skip")
        layers = _text_encoder_layers(model.base)
        if layers is not None and request.clip_skip > layers:
            raise InvalidRequest(f"clip_skip {request.clip_skip} is more than the {layers} layers of this model's "
                                 f"text encoder", field="clip_skip")
        if request.negative_prompt.strip() and model.family == "flux":
            # Flux is guidance-distilled: `guidance` drives its guidance embedding, and a negative
            # prompt would need a second (true CFG) scale the request does not carry.
            raise Unsupported("flux models take no negative prompt (guidance-distilled): leave it empty", field="negative_prompt")

    def _tile_vae(self, model: models.LoadedModel, request: GenerationRequest) -> bool:
        mode = self.settings.vae_tiling
        if mode == "on":
            return True
        if mode == "off":
            return False
        width, height = request.output_size()
        width += request.outpaint.left + request.outpaint.right
        height += request.outpaint.top + request.outpaint.bottom
        return max(width, height) > model.native_size

    def _control_run(self, model: models.LoadedModel, request: GenerationRequest,
                     inputs: dict[str, Image.Image]) -> control.ControlRun | None:
        """The request's ControlNet units with their maps (preprocessed when asked), or None."""
        if not request.controls:
            return None
        maps = []
        for i, unit in enumerate(request.controls):
            image = inputs.get(f"control.{i}")
            if image is None:
                raise MissingImage(f"control unit {i} needs its image (the upload with role control.{i})",
                                   field=f"controls.{i}")
            maps.append(preprocess.preprocess(unit.preprocessor, image, options=unit.preprocessor_options,
                                              estimators=self._estimators, field=f"controls.{i}.preprocessor",
                                              options_field=f"controls.{i}.preprocessor_options",
                                              seed=request.seed))
        return control.resolve(self._controlnets, request.controls, maps, model, request.mode)

    # ---------------------------------------------------------------- upscaling and extras

    def _upscale_for_run(self, model: models.LoadedModel, seamless: Seamless, cancel, image: Image.Image, name: str,
                         size: tuple[int, int]) -> Image.Image:
        try:
            return self._upscalers.upscale(image, name, size, device=model.device, seamless=seamless, cancel=cancel)
        except LatentBridgeError as exc:
            exc.field = "hires.upscaler" if exc.field == "upscaler" else exc.field
            raise

    def upscale(self, image: Image.Image, upscaler: str, size: tuple[int, int], *, seamless: Seamless = Seamless.none,
                tile: int = 192, overlap: int = 8, cancel: threading.Event | None = None) -> Image.Image:
        """`image` upscaled to `size` by name: None/Lanczos/Nearest, or a model in the upscaler folders.
        Blocking; call it from the worker thread (it uses the model's device)."""
        device = self._model.device if self._model is not None else models.pick_device(self.settings.device)
        with torch.inference_mode():
            return self._upscalers.upscale(image, upscaler, size, device=device, seamless=seamless, tile=tile,
                                           overlap=overlap, cancel=cancel)

    def upscalers(self) -> list[dict]:
        """The model upscalers in the upscaler folders: name, path, scale (from the name) and whether
        spandrel, which runs them, is installed."""
        available = upscale.spandrel_available()
        return [{"name": e.name, "path": str(e.path), "scale": e.guessed_scale, "available": available}
                for e in upscale.upscaler_files(self.settings)]

    def embeddings(self) -> dict[str, dict[str, dict]]:
        """Textual-inversion embeddings in the embedding folders: the ones that fit the loaded model
        ("loaded") and the others ("skipped"), as A1111's /embeddings answers."""
        return embeddings.listing(self.settings, self._model.base if self._model is not None else None)

    def vaes(self) -> list[dict[str, str]]:
        return vae.vae_listing(self.settings)

    def memory(self) -> dict:
        """Accelerator memory, as A1111's /memory `cuda` object (or {"error": ...} without CUDA)."""
        if not torch.cuda.is_available():
            return {"error": "CUDA is not available"}
        try:
            free, total = torch.cuda.mem_get_info()
            stats = torch.cuda.memory_stats()
        except RuntimeError as exc:
            return {"error": str(exc).splitlines()[0][:200] if str(exc) else "unavailable"}

        def pair(name: str) -> dict[str, int]:
            return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"), "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }

    @contextmanager
    def _seamless(self, model: models.LoadedModel, seamless: Seamless, control_run=None):
        if seamless is Seamless.none:
            yield
            return
        # Patched after LoRA layers are in place (they add convolutions), restored afterwards;
        # ControlNets wrap too, or their residuals would carry the seams back in.
        modules = [model.denoiser(), model.base.vae] + (control_run.modules() if control_run else [])
        set_seamless(modules, seamless)
        try:
            yield
        finally:
            set_seamless(modules, Seamless.none)

    def _previewer(self, model: models.LoadedModel, request: GenerationRequest) -> LatentPreviewer | None:
        decoder = request.preview.decoder
        if decoder == "none":
            return None
        taesd = None
        if decoder == "taesd":
            taesd = self.taesd_for(model)
            if taesd is None:
                log.warning("preview decoder 'taesd' requested but no TAESD fits %s models: using latent2rgb",
                            model.family)
                decoder = "latent2rgb"
        width = request.width + request.outpaint.left + request.outpaint.right
        height = request.height + request.outpaint.top + request.outpaint.bottom
        return LatentPreviewer(model.family, decoder, taesd=taesd, vae=model.base.vae, image_size=(width, height))

    def taesd_for(self, model: models.LoadedModel):
        """The TAESD (AutoencoderTiny) that fits the loaded model, or None (engine/taesd.py)."""
        return self._taesds.get(model)

    # ---------------------------------------------------------------- live sessions (engine/live.py)

    def live_request(self, request: GenerationRequest, options: LiveOptions) -> GenerationRequest:
        """The request a live session's frames render (preset applied, seed chosen). Pure: the server
        calls it on its event loop. Raises typed errors naming the field."""
        family = self.status.family or "sd1"
        if request.seed is None:
            request = request.with_seed(secrets.randbelow(MAX_SEED + 1))
        return fewstep.live_request(request, options, family, self.settings.max_steps)

    def live_decoder(self, options: LiveOptions) -> str:
        return self._live.decoder_for(options)

    def live_warm(self, session: str, revision: int, request: GenerationRequest, options: LiveOptions,
                  cancel: threading.Event | None = None) -> None:
        """Get a session ready before its first frame (worker thread): pipeline, LoRAs, prompt, and
        the compiled denoiser for its size when torch.compile is on."""
        warming = self.accel.compiled.warming() if self.accel is not None and self.accel.compiled else contextlib.nullcontext()
        with warming:
            self._live.warm_up(session, revision, request, options, cancel)

    def live_frame(self, session: str, revision: int, request: GenerationRequest, options: LiveOptions,
                   images: dict[str, Image.Image], cancel: threading.Event | None = None) -> LiveFrame:
        """Render one live frame (worker thread): `images` holds `init` and/or `control.<i>`."""
        try:
            return self._live.render(session, revision, request, options, images, cancel)
        except torch.OutOfMemoryError:
            _free_memory()
            raise OutOfMemory(_oom_message(request)) from None

    def live_end(self, session: str) -> None:
        self._live.end(session)

    # ---------------------------------------------------------------- shared with engine/live.py

    def check_supported(self, model: models.LoadedModel, request: GenerationRequest) -> None:
        self._check_supported(model, request)

    def control_run(self, model: models.LoadedModel, request: GenerationRequest, inputs: dict[str, Image.Image]):
        return self._control_run(model, request, inputs)

    def vae_override(self, model: models.LoadedModel, name: str | None):
        return self._vaes.applied(model, name)


def _batch_progress(on_step, index: int, count: int):
    """Report the steps of call `index` of `count` as one progress over the whole batch."""
    if on_step is None or count == 1:
        return on_step

    def report(update: StepUpdate) -> None:
        on_step(StepUpdate(index * update.total + update.step, count * update.total, update.elapsed_s, update.preview))

    return report


def _text_encoder_layers(pipe) -> int | None:
    """The fewest hidden layers among the pipeline's CLIP text encoders (clip_skip counts from
    their last layer), or None when it has none that say."""
    counts = []
    for name in ("text_encoder", "text_encoder_2"):
        config = getattr(getattr(pipe, name, None), "config", None)
        layers = getattr(config, "num_hidden_layers", None)
        if isinstance(layers, int):
            counts.append(layers)
    return min(counts) if counts else None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom_message(request: GenerationRequest) -> str:
    return (
        f"out of GPU memory at {request.width}x{request.height} x{request.batch_size}: try a smaller size or batch, "
        "or start the server with --cpu-offload / --vae-slicing"
    )
