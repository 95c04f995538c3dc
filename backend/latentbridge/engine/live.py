"""Live frames: the warm path a live session renders each frame on (docs/live.md).

`Engine.generate` sets a request up from scratch (LoRAs loaded and removed, prompt encoded, a VAE
override, previews); a live session renders the same settings frame after frame, so everything
that depends only on them is done once per settings revision and kept:

- the pipeline: the model's img2img (or ControlNet) pipeline derived once with the TAESD
  (`AutoencoderTiny`) as its VAE, so a frame is encoded and decoded by the tiny autoencoder
  (the model's VAE when `decoder` is vae or no TAESD fits the model);
- the LoRAs (an LCM / Lightning / Hyper-SD / TCD LoRA): loaded once and left in place while live
  frames run; a job that needs the base weights removes them first (`evict`);
- the prompt: encoded once (SD1/SD2/SDXL), so a frame runs no text encoder;
- the seed: every frame starts from the same noise, so a still scene gives a still image.

Only the frame's images change between frames. Not thread-safe, like the engine: the jobs layer
calls it from its one worker thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..protocol import GenerationRequest, LiveOptions, LoraSpec, MissingImage, Mode, Unsupported
from . import embeddings
from .generate import _Run, _fit, decode, sample, text_model_alias
from .lora import load_loras, unload_loras

log = logging.getLogger(__name__)

UNET_FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class LiveFrame:
    image: Image.Image
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage


@dataclass
class _Warm:
    """What one session's settings revision keeps between frames."""

    revision: int
    request: GenerationRequest
    decoder: str
    embeds: dict | None


class LiveRenderer:
    def __init__(self, engine):
        self.engine = engine
        self._warm: dict[str, _Warm] = {}  # session id → its warm state
        self._pipes: dict[tuple, object] = {}  # (kind, decoder, ControlNet ids) → derived pipeline
        self._pipes_model: int | None = None  # id of the LoadedModel the pipelines belong to
        self._resident: tuple[tuple[str, float], ...] = ()  # the live LoRAs on the base pipeline now
        self._resident_model: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def end(self, session: str) -> None:
        """A session ended: drop its warm state (its LoRAs stay until a job or another set needs the pipeline)."""
        self._warm.pop(session, None)
        if not self._warm:
            self._pipes.clear()

    def evict(self) -> None:
        """Remove the live LoRAs from the model (a job runs next on the base weights)."""
        model = self.engine.model
        if self._resident and model is not None and id(model) == self._resident_model:
            self._unload(model)
            log.info("live LoRAs removed for a job")
        self._resident, self._resident_model = (), None
        for warm in self._warm.values():
            warm.embeds = None  # the text encoders' LoRA layers are gone too: encode again

    # ------------------------------------------------------------------ rendering

    def decoder_for(self, options: LiveOptions) -> str:
        """The autoencoder live frames of the loaded model use: taesd when asked and one fits."""
        model = self.engine.model
        if options.decoder == "taesd" and model is not None and self.engine.taesd_for(model) is not None:
            return "taesd"
        return "vae"

    def render(self, session: str, revision: int, request: GenerationRequest, options: LiveOptions,
               images: dict[str, Image.Image], cancel=None) -> LiveFrame:
        engine = self.engine
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        if request.model and (engine.model is None or request.model != engine.model.name):
            engine.load(request.model)
        elif engine.model is None:
            engine.load()
        model = engine.model
        if model.inpaint_native:
            raise Unsupported("live sessions need a text-to-image model, not a dedicated inpainting model",
                              field="request.model")
        engine.check_supported(model, request)
        if id(model) != self._pipes_model:
            self._pipes.clear()
            self._pipes_model = id(model)
        if request.mode is Mode.img2img and "init" not in images:
            raise MissingImage("an img2img live session needs the frame itself (part `init`)", field="header.parts")
        control_run = engine.control_run(model, request, images)
        self._make_resident(model, request.loras)
        warm = self._warm.get(session)
        if warm is None or warm.revision != revision:
            warm = _Warm(revision, request, self.decoder_for(options), None)
            self._warm[session] = warm
        taesd = engine.taesd_for(model) if warm.decoder == "taesd" else None
        kind = "image2image" if request.mode is Mode.img2img else "text2image"
        pipe = self._pipe(model, kind, control_run, taesd)
        if warm.embeds is None:
            warm.embeds = self._encode(pipe, model, request)
        timings["setup"] = _ms(clock)

        run = _Run(model=model, request=request, seeds=[request.seed or 0], previewer=None, on_step=None,
                   cancel=cancel, tile_vae=False, control=control_run, pipe=pipe, prompt_embeds=warm.embeds)
        width, height = request.width, request.height
        clock = time.perf_counter()
        with torch.inference_mode(), engine.vae_override(model, None if taesd is not None else request.vae):
            if kind == "image2image":
                latents = sample(run, kind, width, height, image=_fit(images["init"], width, height),
                                 strength=request.strength)
            else:
                latents = sample(run, kind, width, height)
            _sync(model.device)
            timings["denoise"] = _ms(clock)
            clock = time.perf_counter()
            image = decode(run, latents, width, height, vae=taesd)[0]
        timings["vae"] = _ms(clock)
        return LiveFrame(image, timings)

    def warm_up(self, session: str, revision: int, request: GenerationRequest, options: LiveOptions,
                cancel=None) -> None:
        """Render one frame of grey (and black control maps), so the first real frame finds the
        pipeline, LoRAs, prompt and any compiled kernels ready."""
        grey = Image.new("RGB", (request.width, request.height), (128, 128, 128))
        images = {"init": grey} if request.mode is Mode.img2img else {}
        images.update({f"control.{i}": Image.new("RGB", grey.size) for i in range(len(request.controls))})
        self.render(session, revision, request, options, images, cancel)

    # ------------------------------------------------------------------ warm parts

    def _make_resident(self, model, loras: list[LoraSpec]) -> None:
        wanted = tuple((spec.name, spec.weight) for spec in loras)
        if wanted == self._resident and id(model) == self._resident_model:
            return
        if self._resident and id(model) == self._resident_model:
            self._unload(model)
        self._resident, self._resident_model = (), None
        for warm in self._warm.values():
            warm.embeds = None
        if loras:
            accel = self.engine.accel
            if accel is not None:
                accel.unfuse()  # LoRAs target the separate q/k/v projections
            try:
                load_loras(model.base, loras, self.engine.settings, local=self.engine.local, prefix="latentbridge_live")
            except BaseException:
                if accel is not None:
                    accel.refuse()
                raise
            log.info("live LoRAs loaded: %s", ", ".join(f"{n} ({w:g})" for n, w in wanted))
        self._resident, self._resident_model = wanted, id(model)

    def _unload(self, model) -> None:
        unload_loras(model.base)
        if self.engine.accel is not None:
            self.engine.accel.refuse()

    def _pipe(self, model, kind: str, control_run, taesd):
        nets = tuple(id(net) for net in control_run.nets) if control_run is not None else ()
        key = (kind, id(taesd) if taesd is not None else None, nets)
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = model.pipe(kind) if control_run is None else model.control_pipe(kind, control_run.controlnet())
            if taesd is not None:
                pipe = type(pipe).from_pipe(pipe, vae=taesd, dtype=model.dtype)
                pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = pipe
        return pipe

    def _encode(self, pipe, model, request: GenerationRequest) -> dict | None:
        """The prompt's embeddings as pipeline keyword arguments (UNet families), or None: SD3 and
        Flux encode it on each call."""
        if model.family not in UNET_FAMILIES:
            return None
        cfg = request.guidance > 1.0 and getattr(model.denoiser().config, "time_cond_proj_dim", None) is None
        negative = request.negative_prompt or None
        clip_skip = request.clip_skip - 1 if request.clip_skip > 1 else None
        prompts = [request.prompt, request.negative_prompt]
        with torch.inference_mode(), embeddings.applied_embeddings(model.base, prompts, self.engine.settings), \
                text_model_alias(pipe if clip_skip else None):
            if model.family == "sdxl":
                embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
                    prompt=request.prompt, device=model.device, num_images_per_prompt=1,
                    do_classifier_free_guidance=cfg, negative_prompt=negative, clip_skip=clip_skip)
                out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
                if cfg:
                    out.update(negative_prompt_embeds=negative_embeds, negative_pooled_prompt_embeds=negative_pooled)
                return out
            embeds, negative_embeds = pipe.encode_prompt(request.prompt, model.device, 1, cfg, negative,
                                                         clip_skip=clip_skip)
        out = {"prompt_embeds": embeds}
        if cfg:
            out["negative_prompt_embeds"] = negative_embeds
        return out


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 2)


def _sync(device: torch.device) -> None:
    """Wait for the device, so the stages' timings are their own (the decode would wait anyway)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

