"""One generation on a loaded model: the modes, previews, cancellation and decoding.

Every mode ends in the same denoising call (`_denoise`) on one of the model's three shared
pipelines, with a fresh scheduler for the chosen sampler and one CPU generator per image (so a
seed means the same image on every device). The pipelines return latents (Flux's packed ones are
unpacked); decoding is ours for every family, so a large image decodes in tiles and a seamless
one stays seamless (`seamless.decode_latents`, which also applies SD3/Flux's latent shift).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .. import images
from ..protocol import Cancelled, GenerationRequest, InvalidRequest, Mode, Sampler, Schedule
from .control import ControlRun
from .models import LoadedModel
from .preview import LatentPreviewer
from .reference import ReferenceRun, applied_reference
from .samplers import FLOW_FAMILIES, make_scheduler
from .seamless import decode_latents

OUTPAINT_MIN_FEATHER = 8  # px of seam blending when the request's mask blur is smaller


class StepUpdate:
    """Progress of one denoising step. `preview()` is lazy: it costs time only when called, and
    must be called inside the `on_step` callback (the latents are only valid then)."""

    def __init__(self, step: int, total: int, elapsed_s: float, preview: Callable[[], Image.Image | None]):
        self.step = step
        self.total = total
        self.elapsed_s = elapsed_s
        self._preview = preview

    def preview(self) -> Image.Image | None:
        return self._preview()

    def __repr__(self) -> str:
        return f"StepUpdate(step={self.step}, total={self.total}, elapsed_s={self.elapsed_s:.3f})"


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    request: GenerationRequest


@dataclass
class _Run:
    """What every denoising call of one request shares."""

    model: LoadedModel
    request: GenerationRequest
    seeds: list[int]
    previewer: LatentPreviewer | None
    on_step: Callable[[StepUpdate], None] | None
    cancel: object | None  # threading.Event
    tile_vae: bool
    control: ControlRun | None = None
    reference: ReferenceRun | None = None  # IP-Adapter: loaded into the pipeline of each call (reference.py)
    # Upscales an image by name to (width, height) (engine/upscale.py): the hires pass needs it.
    upscale: Callable[..., Image.Image] | None = None
    steps_done: int = 0  # steps of the passes already run (the hires fix runs two)
    # Live frames (engine/live.py): a pipeline of their own (TAESD as its VAE) and the prompt
    # already encoded (`prompt_embeds=...` keyword arguments), so a frame skips the text encoders.
    pipe: object | None = None
    prompt_embeds: dict | None = None

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class Pass:
    """What one denoising call uses: the request's own settings, or the hires second pass's.
    `later` is the steps of the passes still to come, so progress counts over all of them."""

    prompt: str
    negative_prompt: str
    sampler: Sampler
    schedule: Schedule
    steps: int
    later: int = 0


def first_pass(request: GenerationRequest, later: int = 0) -> Pass:
    return Pass(request.prompt, request.negative_prompt, request.sampler, request.schedule, request.steps, later=later)


class _CleanLatentTap:
    """Records the scheduler's predicted clean latent (x0) at each step, for previews.

    Euler/DDIM/LCM/Heun return it from `step`; the multistep solvers (DPM++, UniPC) keep it as
    their latest model output; flow-matching schedulers (SD3, Flux) return neither, so x0 is
    computed from the velocity: x_t = (1 - sigma) * x0 + sigma * noise and v = noise - x0 give
    x0 = x_t - sigma * v. Others fall back to the current (noisy) latents.
    """

    def __init__(self, scheduler):
        self.latest: torch.Tensor | None = None
        original = scheduler.step
        flow = _is_flow(scheduler)

        # wraps: pipelines inspect step's signature to decide whether to pass `generator`/`eta`.
        @functools.wraps(original)
        def step(*args, **kwargs):
            out = original(*args, **kwargs)
            self.latest = self._flow_clean(scheduler, args, kwargs) if flow else self._clean(out, scheduler)
            return out

        scheduler.step = step  # instance attribute: the scheduler is private to this request

    @staticmethod
    def _flow_clean(scheduler, args, kwargs) -> torch.Tensor | None:
        velocity = kwargs.get("model_output", args[0] if args else None)
        sample = kwargs.get("sample", args[2] if len(args) > 2 else None)
        if velocity is None or sample is None:
            return None
        sigma = scheduler.sigmas[scheduler.step_index - 1]  # step() has just advanced the index
        return sample.float() - sigma.to(sample.device) * velocity.float()

    @staticmethod
    def _clean(out, scheduler) -> torch.Tensor | None:
        if isinstance(out, tuple):
            if len(out) > 1 and isinstance(out[1], torch.Tensor):
                return out[1]
        else:
            for name in ("pred_original_sample", "denoised"):
                value = getattr(out, name, None)
                if isinstance(value, torch.Tensor):
                    return value
        outputs = getattr(scheduler, "model_outputs", None)
        if outputs and isinstance(outputs[-1], torch.Tensor) and scheduler.config.get("algorithm_type", "dpmsolver++") != "dpmsolver":
            return outputs[-1]
        return None


def _is_flow(scheduler) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def _feed_generators(scheduler, generators: list[torch.Generator]) -> None:
    """Stochastic flow-matching Euler draws fresh noise in `step`, but the SD3/Flux pipelines call
    `step` without a generator (so it would use torch's global RNG): hand it the request's own
    generators, so a seed still means one image."""
    original = scheduler.step

    @functools.wraps(original)
    def step(*args, **kwargs):
        kwargs.setdefault("generator", generators if len(generators) > 1 else generators[0])
        return original(*args, **kwargs)

    scheduler.step = step


def _generators(seeds: list[int]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same noise on CUDA, MPS and CPU.
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _size_multiple(pipe) -> int:
    """Pixel sizes the denoiser accepts are multiples of this: the VAE factor (8) times the
    transformer's patch (SD3: 2) or Flux's 2x2 latent packing."""
    vae_scale = int(getattr(pipe, "vae_scale_factor", 8))
    if "Flux" in type(pipe).__name__:
        return vae_scale * 2
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(transformer.config, "patch_size", 1) if transformer is not None else 1
    return vae_scale * int(patch)


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _nchw_latents(pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pipeline latents as (B, C, h, w): Flux works on packed 2x2 patch sequences."""
    if latents.ndim == 3:
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return latents


def steps_run(family: str, steps: int, strength: float) -> int:
    """How many steps an img2img/inpaint pipeline runs for `strength` (diffusers' own rounding)."""
    if family in FLOW_FAMILIES:  # SD3/Flux pipelines skip int(steps - steps * strength) steps
        return steps - int(max(steps - steps * strength, 0))
    return min(int(steps * strength), steps)


def at_least_one_step(family: str, steps: int, strength: float) -> float:
    """`strength`, or the smallest strength that still runs one step when it would run none: A1111
    runs at least one step however low the denoising strength (that step is the least noisy one)."""
    strength = max(strength, 1.0 / steps)
    while steps_run(family, steps, strength) < 1 and strength < 1.0:
        strength = min(1.0, strength * (1 + 1e-9) + 1e-12)  # absorbs float rounding in steps * strength
    return strength


def _denoise(run: _Run, kind: str, width: int, height: int, step: Pass | None = None, **mode_kwargs) -> list[Image.Image]:
    """Run one pipeline call and decode its output into PIL images of width x height."""
    latents = sample(run, kind, width, height, step, **mode_kwargs)
    run.check_cancel()
    return decode(run, latents, width, height)


def sample(run: _Run, kind: str, width: int, height: int, step: Pass | None = None, **mode_kwargs) -> torch.Tensor:
    """Run one pipeline call; its latents as (B, C, h, w) at the working size.

    Transformer models take sizes in multiples of 16: such a size is generated at the next
    multiple (`decode` resizes it back; init images and masks are resized by the pipeline itself).
    """
    model, request = run.model, run.request
    step = step or first_pass(request)
    if "strength" in mode_kwargs:
        mode_kwargs["strength"] = at_least_one_step(model.family, step.steps, mode_kwargs["strength"])
    pipe = run.pipe or (model.pipe(kind) if run.control is None else model.control_pipe(kind, run.control.controlnet()))
    multiple = _size_multiple(pipe)
    work_w, work_h = _round_up(width, multiple), _round_up(height, multiple)
    generators = _generators(run.seeds)
    scheduler = make_scheduler(step.sampler, model.scheduler, model.family, seed=run.seeds[0], schedule=step.schedule)
    if scheduler.config.get("stochastic_sampling", False):
        _feed_generators(scheduler, generators)
    tap = _CleanLatentTap(scheduler)
    pipe.scheduler = scheduler  # one request at a time per engine: see Engine
    started = time.perf_counter()
    done, seen_total = run.steps_done, [step.steps]

    def on_step_end(pipeline, step_index, timestep, callback_kwargs):
        run.check_cancel()
        total = seen_total[0] = int(getattr(pipeline, "_num_timesteps", 0) or step.steps)
        if run.on_step is not None:
            latents = callback_kwargs["latents"]

            def preview() -> Image.Image | None:
                if run.previewer is None:
                    return None
                source = tap.latest if tap.latest is not None and tap.latest.shape == latents.shape else latents
                image = run.previewer.to_image(_nchw_latents(pipe, source, work_w, work_h), request.preview.max_size)
                if image is not None and (work_w, work_h) != (width, height):  # back to the request's aspect
                    image = image.resize((max(1, round(image.width * width / work_w)), max(1, round(image.height * height / work_h))))
                return image

            run.on_step(StepUpdate(done + step_index + 1, done + total + step.later, time.perf_counter() - started, preview))
        return callback_kwargs

    kwargs = dict(
        prompt=step.prompt,
        num_inference_steps=step.steps,
        guidance_scale=request.guidance,  # Flux: its distilled guidance embedding, not CFG
        num_images_per_prompt=len(run.seeds),
        generator=generators,
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        width=work_w,
        height=work_h,
    )
    if model.family != "flux":  # Flux is guidance-distilled: the engine refuses negative prompts
        kwargs["negative_prompt"] = step.negative_prompt or None
    if request.clip_skip > 1:  # diffusers counts the layers skipped: 1 = the penultimate layer
        kwargs["clip_skip"] = request.clip_skip - 1
    if run.prompt_embeds is not None:  # encoded once (clip_skip included) for the whole live session
        for name in ("prompt", "negative_prompt", "clip_skip"):
            kwargs.pop(name, None)
        kwargs.update(run.prompt_embeds)
    kwargs.update(mode_kwargs)
    if run.control is not None:
        kwargs.update(run.control.pipeline_kwargs(kind, work_w, work_h))
    run.check_cancel()
    with text_model_alias(pipe if request.clip_skip > 1 and run.prompt_embeds is None else None), \
            run.control.hooks(len(run.seeds)) if run.control is not None else contextlib.nullcontext(), \
            applied_reference(run.reference, pipe) as reference_kwargs, seeded_global_rng(pipe, run.seeds[0]):
        latents = pipe(output_type="latent", **kwargs, **reference_kwargs).images
    run.steps_done += seen_total[0]
    return _nchw_latents(pipe, latents, work_w, work_h)


@contextmanager
def seeded_global_rng(pipe, seed: int):
    """Torch's global RNG seeded from the request for one pipeline call, then restored. Pipelines
    that draw without our generators (diffusers' SD3 ControlNet pipelines sample the control
    image's latents with a bare `latent_dist.sample()`) would otherwise make the same request
    give a different image each time."""
    device = getattr(pipe, "device", None)
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextmanager
def text_model_alias(pipe):
    """diffusers' clip_skip reads `text_encoder.text_model.final_layer_norm`; transformers 5's
    CLIPTextModel is flat (that norm sits on the model itself): alias it for the call."""
    encoder = getattr(pipe, "text_encoder", None) if pipe is not None else None
    if encoder is None or hasattr(encoder, "text_model"):
        yield
        return
    object.__setattr__(encoder, "text_model", encoder)  # a plain attribute, not a child: no module cycle
    try:
        yield
    finally:
        object.__delattr__(encoder, "text_model")


def decode(run: _Run, latents: torch.Tensor, width: int, height: int, vae=None) -> list[Image.Image]:
    """(B, C, h, w) latents → PIL images of width x height (tiled and seamless as the request says);
    `vae`: another decoder than the model's own (a TAESD)."""
    model, request = run.model, run.request
    vae = vae if vae is not None else model.base.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:  # SDXL's VAE overflows in fp16: decode in fp32, as diffusers' pipelines do
        vae.to(torch.float32)
    try:
        tile_latent = max(8, model.native_size // model.vae_scale)
        with torch.no_grad():
            pixels = decode_latents(vae, latents, request.seamless, tile=run.tile_vae, tile_latent=tile_latent, overlap=tile_latent // 4)
    finally:
        if upcast:
            vae.to(torch.float16)
    arrays = ((pixels.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in arrays]
    return [im if im.size == (width, height) else im.resize((width, height), Image.Resampling.LANCZOS) for im in out]


# --------------------------------------------------------------------------------------------
# Modes


def _ceil8(v: int) -> int:
    return max(64, math.ceil(v / 8) * 8)


def txt2img(run: _Run) -> list[Image.Image]:
    r = run.request
    if r.hires is not None:
        from .hires import hires_txt2img

        return hires_txt2img(run)
    if run.model.inpaint_native:
        # A dedicated inpainting model has no text-to-image pipeline: repaint a blank canvas fully.
        blank = Image.new("RGB", (r.width, r.height), (127, 127, 127))
        full = Image.new("L", (r.width, r.height), 255)
        return _denoise(run, "inpaint", r.width, r.height, image=blank, mask_image=full, strength=1.0)
    return _denoise(run, "text2image", r.width, r.height)


def img2img(run: _Run, init: Image.Image) -> list[Image.Image]:
    r = run.request
    init = _fit(init, r.width, r.height)
    if run.model.inpaint_native:
        full = Image.new("L", (r.width, r.height), 255)
        return _denoise(run, "inpaint", r.width, r.height, image=init, mask_image=full, strength=r.strength)
    return _denoise(run, "image2image", r.width, r.height, image=init, strength=r.strength)


def inpaint(run: _Run, init: Image.Image, mask: Image.Image) -> list[Image.Image]:
    r = run.request
    init = _fit(init, r.width, r.height)
    full_mask = images.prepare_mask(mask, init.size, r.mask.blur, r.mask.invert)
    if full_mask.getbbox() is None:
        raise InvalidRequest("the mask is empty: nothing to repaint (white = repaint; check `mask.invert`)", field="mask")
    if not r.mask.only_masked:
        generated = _repaint(run, init, full_mask, r.width, r.height, r.strength)
        return [images.composite(init, g, full_mask) for g in generated]
    # "Only masked": work on a crop around the mask at the full working resolution, paste back.
    box = images.mask_crop_box(full_mask, r.mask.padding, r.width / r.height)
    crop, crop_mask = init.crop(box), full_mask.crop(box)
    if run.control is not None:  # the maps follow the crop
        run = dataclasses.replace(run, control=run.control.cropped(box, init.size))
    generated = _repaint(run, crop.resize((r.width, r.height), Image.Resampling.LANCZOS),
                         crop_mask.resize((r.width, r.height), Image.Resampling.BILINEAR), r.width, r.height, r.strength)
    results = []
    for g in generated:
        pasted = init.copy()
        pasted.paste(g.resize(crop.size, Image.Resampling.LANCZOS), box[:2])
        results.append(images.composite(init, pasted, full_mask))
    return results


def outpaint(run: _Run, init: Image.Image) -> list[Image.Image]:
    r = run.request
    init = _fit(init, r.width, r.height)
    canvas, mask = images.extend_canvas(init, r.outpaint, feather=max(OUTPAINT_MIN_FEATHER, r.mask.blur))
    # Models need sizes in multiples of 8: generate at the rounded-up size, resize back.
    work_w, work_h = _ceil8(canvas.width), _ceil8(canvas.height)
    generated = _repaint(run, canvas.resize((work_w, work_h), Image.Resampling.LANCZOS),
                         mask.resize((work_w, work_h), Image.Resampling.BILINEAR), work_w, work_h, r.strength)
    return [images.composite(canvas, g, mask) for g in generated]


def _repaint(run: _Run, image: Image.Image, mask: Image.Image, width: int, height: int, strength: float) -> list[Image.Image]:
    return _denoise(run, "inpaint", width, height, image=image, mask_image=mask, strength=strength)


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """The init image as RGB at the request's size (alpha dropped: masks carry transparency)."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def run_mode(run: _Run, init: Image.Image | None, mask: Image.Image | None) -> list[Image.Image]:
    mode = run.request.mode
    if mode is Mode.txt2img:
        return txt2img(run)
    if mode is Mode.img2img:
        return img2img(run, init)
    if mode is Mode.inpaint:
        return inpaint(run, init, mask)
    return outpaint(run, init)
