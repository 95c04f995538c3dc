"""AUTOMATIC1111-compatible subset of `/sdapi/v1`, so existing plug-ins and scripts work unchanged.

A1111 payloads are translated into our `GenerationRequest` and run through the same job queue as
every other client (so queue limits, fairness, security and result storage all apply). An A1111
call blocks its HTTP request until its jobs finish, awaiting the job subscription: the event loop
is never blocked. Fields we cannot honour either change nothing visible (ignored, as A1111 ignores
unknown fields) or are refused with a typed error (HTTP 422) rather than silently producing
something else. docs/a1111.md lists what is and isn't covered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import images as image_utils
from ..jobs import JobManager, PreviewFrame
from ..settings import Settings
from .app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY, capabilities
from .jsonio import json_response, read_json
from .security import list_models, resolve_model_name
from ..protocol import (
    MAX_SEED,
    BadImage,
    CancelledEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    InvalidRequest,
    JobState,
    LatentBridgeError,
    Mode,
    ProgressEvent,
    Sampler,
    Seamless,
    StatusEvent,
    Unsupported,
    error_from_validation,
    parse_object,
)

PREFIX = "/sdapi/v1"

# ---------------------------------------------------------------------------------------------
# Samplers and schedulers as A1111 spells them.


@dataclass(frozen=True)
class A1111Sampler:
    name: str
    sampler: Sampler
    aliases: tuple[str, ...] = ()
    karras: Sampler | None = None  # the variant chosen by scheduler "Karras"
    options: dict[str, str] = field(default_factory=dict)


SAMPLERS: tuple[A1111Sampler, ...] = (
    A1111Sampler("Euler a", Sampler.euler_a, ("k_euler_a", "k_euler_ancestral")),
    A1111Sampler("Euler", Sampler.euler, ("k_euler",)),
    A1111Sampler("Heun", Sampler.heun, ("k_heun",)),
    A1111Sampler("DPM++ 2M", Sampler.dpmpp_2m, ("k_dpmpp_2m",), karras=Sampler.dpmpp_2m_karras),
    A1111Sampler("DPM++ 2M Karras", Sampler.dpmpp_2m_karras, ("k_dpmpp_2m_ka",), options={"scheduler": "karras"}),
    # diffusers has only the Karras-sigma flavour of DPM++ SDE; A1111 users almost always pick it.
    A1111Sampler("DPM++ SDE", Sampler.dpmpp_sde_karras, ("k_dpmpp_sde",), karras=Sampler.dpmpp_sde_karras,
                 options={"scheduler": "karras"}),
    A1111Sampler("DPM++ SDE Karras", Sampler.dpmpp_sde_karras, ("k_dpmpp_sde_ka",), options={"scheduler": "karras"}),
    A1111Sampler("DDIM", Sampler.ddim, ("ddim",)),
    A1111Sampler("PLMS", Sampler.pndm, ("plms",)),
    A1111Sampler("UniPC", Sampler.unipc, ("unipc",)),
    A1111Sampler("LCM", Sampler.lcm, ("k_lcm",)),
)
_SAMPLER_BY_NAME = {n.lower(): s for s in SAMPLERS for n in (s.name, *s.aliases)}
# Our sampler → the A1111 name the infotext and `parameters` report.
A1111_NAME = {s.sampler: s.name for s in reversed(SAMPLERS)}

# Schedulers (A1111 ≥ 1.9 sends `scheduler` separately). "Automatic"/"Uniform" keep the
# sampler's own schedule; "Karras" picks the Karras variant where diffusers has one.
SCHEDULERS = (
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
    {"name": "uniform", "label": "Uniform", "aliases": None, "default_rho": -1, "need_inner_model": True},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
)
_DEFAULT_SCHEDULERS = {"", "automatic", "uniform"}


def resolve_sampler(sampler_name: str | None, scheduler: str | None) -> Sampler:
    """A1111 sampler (+ scheduler) → our Sampler, or a typed error naming the field."""
    name = (sampler_name or "Euler").strip()
    entry = _SAMPLER_BY_NAME.get(name.lower())
    sched = (scheduler or "").strip().lower()
    if entry is None and name.lower().endswith(" karras"):
        # Old-style "<sampler> Karras" names for samplers listed without the suffix.
        entry = _SAMPLER_BY_NAME.get(name[: -len(" karras")].lower())
        sched = "karras" if entry is not None else sched
    if entry is None:
        names = ", ".join(s.name for s in SAMPLERS)
        raise InvalidRequest(f"sampler {name!r} not found; available: {names}", field="sampler_name")
    if sched in _DEFAULT_SCHEDULERS:
        return entry.sampler
    if sched == "karras":
        if entry.karras is None and entry.options.get("scheduler") != "karras":
            raise Unsupported(f"scheduler 'Karras' is not available with sampler {entry.name!r}", field="scheduler")
        return entry.karras or entry.sampler
    raise Unsupported(f"scheduler {scheduler!r} is not supported; use Automatic or Karras", field="scheduler")


# ---------------------------------------------------------------------------------------------
# The payloads. Every field is optional with A1111's default; unknown fields are ignored.


class Txt2ImgPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    enable_hr: bool = False
    script_name: str | None = None
    script_args: list[Any] = []
    alwayson_scripts: dict[str, Any] = {}
    send_images: bool = True
    save_images: bool = False
    force_task_id: str | None = None
    infotext: str | None = None


class Img2ImgPayload(Txt2ImgPayload):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    denoising_strength: float | None = 0.75
    include_init_images: bool = False


# Our request's field → the A1111 field a client should fix.
_FIELD_NAMES = {
    "guidance": "cfg_scale",
    "strength": "denoising_strength",
    "sampler": "sampler_name",
    "seamless": "tiling",
    "mask.blur": "mask_blur",
    "mask.padding": "inpaint_full_res_padding",
    "model": "override_settings.sd_model_checkpoint",
}


def _a1111_field(exc: LatentBridgeError) -> LatentBridgeError:
    if exc.field in _FIELD_NAMES:
        exc.message = exc.message.replace(exc.field, _FIELD_NAMES[exc.field], 1)
        exc.field = _FIELD_NAMES[exc.field]
    return exc


def parse_payload(model: type[Txt2ImgPayload], data: Any) -> Txt2ImgPayload:
    return parse_object(model, data, what="request body", field="body")


# ---------------------------------------------------------------------------------------------
# Images: base64 (with or without a data-URL prefix) in, PIL out; A1111 mask conventions.


def decode_b64_image(value: str, field_name: str, max_pixels: int | None) -> Image.Image:
    text = value.strip()
    if text.startswith(("http://", "https://")):
        # A1111 can fetch URLs; a local server fetching arbitrary URLs is an SSRF hole.
        raise Unsupported("image URLs are not fetched; send the image as base64", field=field_name)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError):
        raise BadImage("image is not valid base64", field=field_name) from None
    try:
        return image_utils.decode_image(data, max_pixels=max_pixels)
    except LatentBridgeError as exc:
        exc.field = field_name
        raise


def _threshold(mask: Image.Image) -> Image.Image:
    return mask.point(lambda v: 255 if v > 128 else 0)


def binary_mask(mask: Image.Image) -> Image.Image:
    """A1111's reading of a mask: the alpha channel if it has any transparency, else luminance
    (the same rule as `images.mask_channel`); then thresholded at 128 (white = repaint)."""
    return _threshold(image_utils.mask_channel(mask))


def fit_image(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """A1111 resize modes: 0 just resize, 1 crop and resize, 2 resize and fill, 3 = 0."""
    if image.size == (width, height):
        return image
    if resize_mode == 1:
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if resize_mode == 2:
        # Fit inside, fill the borders with the image stretched behind it.
        inner = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
        canvas = image.resize((width, height), Image.Resampling.LANCZOS)
        canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window (edges clamped), via an integral image: exact and O(pixels)."""
    if radius <= 0:
        return a
    pad = np.pad(a, ((radius + 1, radius), (radius + 1, radius)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    s = pad.cumsum(0).cumsum(1)
    k = 2 * radius + 1
    h, w = a.shape[:2]
    total = s[k : k + h, k : k + w] - s[:h, k : k + w] - s[k : k + h, :w] + s[:h, :w]
    return total / (k * k)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """inpainting_fill=0: replace the masked area by colours spread in from its surroundings,
    coarse to fine (a mask-weighted blur at shrinking radii)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    keep = (np.asarray(mask, dtype=np.float64) < 128).astype(np.float64)
    if keep.sum() == 0:
        return image.convert("RGB")
    out = np.empty_like(rgb)
    out[:] = (rgb * keep[..., None]).sum((0, 1)) / keep.sum()
    for radius in (max(rgb.shape[:2]) // 4, 32, 8, 2):
        weight = _box_blur(keep, radius)
        color = _box_blur(rgb * keep[..., None], radius)
        known = weight > 1e-3
        out[known] = color[known] / weight[known, None]
    out[keep > 0] = rgb[keep > 0]
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")


def apply_inpainting_fill(image: Image.Image, mask: Image.Image, fill: int) -> Image.Image:
    """0 fill, 1 original, 2 latent noise (handled as strength 1), 3 latent nothing (neutral grey:
    what an all-zero latent decodes to)."""
    if fill == 0:
        return fill_masked(image, mask)
    if fill == 3:
        grey = Image.new("RGB", image.size, (128, 128, 128))
        return Image.composite(grey, image.convert("RGB"), mask)
    return image


# ---------------------------------------------------------------------------------------------
# Translation


@dataclass
class Plan:
    """What one A1111 call runs: `n_iter` jobs of `request` (seed advancing by batch_size)."""

    kind: str  # "txt2img" / "img2img"
    payload: Txt2ImgPayload
    request: GenerationRequest
    n_iter: int
    init_image: Image.Image | None = None
    mask: Image.Image | None = None

    def request_for(self, iteration: int) -> GenerationRequest:
        seed = ((self.request.seed or 0) + iteration * self.request.batch_size) % (MAX_SEED + 1)
        return self.request.with_seed(seed)


def _checkpoint_name(value: Any) -> str | None:
    """`override_settings.sd_model_checkpoint` as A1111 titles it ("name.safetensors [hash]")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest("sd_model_checkpoint must be a string", field="override_settings.sd_model_checkpoint")
    name = value.strip()
    if name.endswith("]") and " [" in name:
        name = name[: name.rindex(" [")]
    return name


def build_plan(kind: str, data: Any, *, max_pixels: int | None, max_iterations: int,
               loaded_model: str | None = None) -> Plan:
    """Validate an A1111 payload and translate it. Blocking (decodes images): run in a thread."""
    payload = parse_payload(Img2ImgPayload if kind == "img2img" else Txt2ImgPayload, data)
    if payload.enable_hr:
        raise Unsupported("hires fix (enable_hr) is not supported", field="enable_hr")
    if payload.script_name:
        raise Unsupported(f"script {payload.script_name!r} not found", field="script_name")
    if payload.alwayson_scripts:
        name = next(iter(payload.alwayson_scripts))
        raise Unsupported(f"always on script {name!r} not found", field="alwayson_scripts")
    if not 1 <= payload.n_iter <= max_iterations:
        raise InvalidRequest(f"n_iter must be between 1 and {max_iterations}", field="n_iter")
    if payload.seed < -1 or payload.seed > MAX_SEED:
        raise InvalidRequest(f"seed must be -1 (random) or 0..{MAX_SEED}", field="seed")
    seed = secrets.randbelow(MAX_SEED + 1) if payload.seed == -1 else payload.seed
    checkpoint = _checkpoint_name((payload.override_settings or {}).get("sd_model_checkpoint"))
    # A1111 works in latent units: sizes round down to a multiple of 8.
    width, height = payload.width - payload.width % 8, payload.height - payload.height % 8

    fields: dict[str, Any] = {
        "mode": Mode.txt2img,
        "prompt": payload.prompt,
        "negative_prompt": payload.negative_prompt,
        "seed": seed,
        "steps": payload.steps,
        "guidance": payload.cfg_scale,
        "width": width,
        "height": height,
        "sampler": resolve_sampler(payload.sampler_name or payload.sampler_index, payload.scheduler),
        "batch_size": payload.batch_size,
        "seamless": Seamless.xy if payload.tiling else Seamless.none,
        "model": checkpoint if checkpoint != loaded_model else None,
    }
    init_image = mask = None
    if isinstance(payload, Img2ImgPayload):
        if not payload.init_images:
            raise InvalidRequest("img2img needs at least one image in init_images", field="init_images")
        if payload.inpainting_fill not in (0, 1, 2, 3):
            raise InvalidRequest("inpainting_fill must be 0, 1, 2 or 3", field="inpainting_fill")
        if payload.resize_mode not in (0, 1, 2, 3):
            raise InvalidRequest("resize_mode must be 0, 1, 2 or 3", field="resize_mode")
        init_image = decode_b64_image(payload.init_images[0], "init_images", max_pixels)
        init_image = fit_image(init_image.convert("RGB"), width, height, payload.resize_mode)
        fields["mode"] = Mode.img2img
        fields["strength"] = payload.denoising_strength if payload.denoising_strength is not None else 0.75
        if payload.mask:
            mask = binary_mask(decode_b64_image(payload.mask, "mask", max_pixels))
            mask = _threshold(fit_image(mask, width, height, payload.resize_mode))
            blur = payload.mask_blur if payload.mask_blur is not None else max(payload.mask_blur_x, payload.mask_blur_y)
            fields["mode"] = Mode.inpaint
            fields["mask"] = {
                "blur": blur,
                "invert": bool(payload.inpainting_mask_invert),
                "only_masked": bool(payload.inpaint_full_res),
                "padding": payload.inpaint_full_res_padding,
            }
            # The fill is applied where the model will repaint (after any inversion).
            repaint = ImageOps.invert(mask) if payload.inpainting_mask_invert else mask
            init_image = apply_inpainting_fill(init_image, repaint, payload.inpainting_fill)
            if payload.inpainting_fill == 2:
                fields["strength"] = 1.0
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        raise _a1111_field(error_from_validation(exc)) from None
    return Plan(kind, payload, request, payload.n_iter, init_image, mask)

# ---------------------------------------------------------------------------------------------
# The server core underneath


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


# ---------------------------------------------------------------------------------------------
# Progress: A1111 reports one global state; we keep one per app for the A1111 calls in flight.


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


# ---------------------------------------------------------------------------------------------
# Running a plan


@dataclass
class Outcome:
    pngs: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)


def _raise_error(error: ErrorEvent) -> None:
    raise LatentBridgeError(error.message, field=error.field, code=ErrorCode(error.code))


async def _follow(jobs: JobManager, job_id: str, subscription: Any, task: Task) -> tuple[str, int]:
    """Await one job's end: ("done" | "cancelled", result count), or raise the job's error."""
    try:
        async for event in subscription:
            if isinstance(event, ProgressEvent):
                task.step, task.total = event.step, event.total
            elif isinstance(event, DoneEvent):
                return "done", event.count
            elif isinstance(event, CancelledEvent):
                return "cancelled", 0
            elif isinstance(event, ErrorEvent):
                if event.code == ErrorCode.cancelled:
                    return "cancelled", 0
                _raise_error(event)
    finally:
        subscription.close()
    # The stream ended without a final event: the job's recorded status decides.
    status = _status_of(jobs, job_id)
    if status is not None and status.state is JobState.done:
        return "done", status.result_count
    if status is not None and status.state is JobState.failed and status.error is not None:
        _raise_error(status.error)
    return "cancelled", 0


async def _client_gone(request: web.Request) -> None:
    """Returns once the HTTP client has disconnected (aiohttp does not cancel handlers for it)."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.25)


async def _follow_while_connected(request: web.Request, jobs: JobManager, job_id: str, task: Task) -> tuple[str, int]:
    # Subscribed before anything else runs on the loop, so no event of the job can be missed.
    follow = asyncio.ensure_future(_follow(jobs, job_id, jobs.subscribe(job_id), task))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({follow, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not follow.done():
            # Nobody is waiting for this picture any more: free the GPU for others.
            jobs.cancel(job_id)
            follow.cancel()
    if not follow.done():
        raise asyncio.CancelledError()
    return follow.result()


async def run_plan(request: web.Request, plan: Plan) -> Outcome:
    app = request.app
    jobs = _jobs(app)
    state = _state(app)
    task = Task(plan.kind, plan.n_iter)
    state.tasks.append(task)
    outcome = Outcome()
    try:
        for iteration in range(plan.n_iter):
            if task.interrupted:
                break
            job_request = plan.request_for(iteration)
            task.job_no, task.step, task.total = iteration, 0, job_request.steps
            try:
                job = jobs.submit(job_request, plan.init_image, plan.mask, owner=_owner(request))
            except LatentBridgeError as exc:
                if exc.code is ErrorCode.queue_full:
                    exc.retry_after_s = jobs.retry_after_s()  # type: ignore[attr-defined]
                raise
            task.job_id = job.id
            result, count = await _follow_while_connected(request, jobs, job.id, task)
            for index in range(count):
                png = jobs.result_png(job.id, index)
                if png is None:
                    raise LatentBridgeError(f"result {index} of job {job.id} is missing", code=ErrorCode.internal)
                outcome.pngs.append(png)
                # The engine makes image i of a batch with seed + i (architecture.md).
                outcome.seeds.append((job_request.seed or 0) + index)
                outcome.requests.append(job_request)
            if result == "cancelled":
                break
    finally:
        state.tasks.remove(task)
    return outcome


def build_info(plan: Plan, outcome: Outcome, model_name: str | None) -> dict[str, Any]:
    """The `info` object (sent as a JSON string), shaped as A1111's `Processed.js()`."""
    req = plan.request
    seeds = outcome.seeds or [req.seed or 0]
    requests = outcome.requests or [req]
    count = len(seeds)
    return {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * count,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * count,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": plan.payload.subseed if plan.payload.subseed != -1 else seeds[0],
        "all_subseeds": seeds,
        "subseed_strength": plan.payload.subseed_strength,
        "width": req.width,
        "height": req.height,
        "sampler_name": A1111_NAME.get(req.sampler, req.sampler.value),
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": bool(plan.payload.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": req.model or model_name,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": plan.payload.seed_resize_from_w,
        "seed_resize_from_h": plan.payload.seed_resize_from_h,
        "denoising_strength": req.strength if plan.kind == "img2img" else plan.payload.denoising_strength,
        "extra_generation_params": {"Schedule type": "Karras"} if "karras" in req.sampler.value else {},
        "index_of_first_image": 0,
        "infotexts": [image_utils.a1111_parameters(r, s) for r, s in zip(requests, seeds)],
        "styles": plan.payload.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": req.mode is Mode.inpaint,
        "version": "latentbridge",
    }


# ---------------------------------------------------------------------------------------------
# HTTP plumbing

_STATUS = {
    ErrorCode.queue_full: 429,
    ErrorCode.model_not_ready: 503,
    ErrorCode.unauthorized: 401,
    ErrorCode.forbidden: 403,
    ErrorCode.too_large: 413,
    ErrorCode.internal: 500,
    ErrorCode.out_of_memory: 500,
    ErrorCode.model_load_failed: 500,
    ErrorCode.timeout: 504,
}


def error_response(exc: LatentBridgeError) -> web.Response:
    """Our typed error body plus A1111's `detail`; 422 like A1111 for anything the client sent."""
    status = _STATUS.get(exc.code, 422)
    body = exc.to_event().model_dump(mode="json")
    body["detail"] = exc.message
    retry_after = getattr(exc, "retry_after_s", 5)
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return json_response(body, status=status, headers=headers)


async def _read_json(request: web.Request) -> Any:
    return await read_json(request)  # strict: NaN/Infinity and over-deep nesting refused


def _owner(request: web.Request) -> str:
    # Fairness is between clients: each peer address counts as one.
    return f"a1111:{request.remote or 'local'}"


async def _generate(request: web.Request, kind: str) -> web.Response:
    app = request.app
    settings = _settings(app)
    try:
        data = await _read_json(request)
        plan = await asyncio.to_thread(
            build_plan, kind, data, max_pixels=settings.max_pixels, max_iterations=settings.max_queue,
            loaded_model=_loaded_model(app),
        )
        if plan.request.model is not None:
            plan.request = plan.request.model_copy(update={"model": _resolve_model(app, plan.request.model)})
        outcome = await run_plan(request, plan)
    except LatentBridgeError as exc:
        return error_response(_a1111_field(exc))
    encoded = await asyncio.to_thread(lambda: [base64.b64encode(p).decode("ascii") for p in outcome.pngs])
    parameters = plan.payload.model_dump(mode="json")
    if isinstance(plan.payload, Img2ImgPayload) and not plan.payload.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    parameters.pop("include_init_images", None)
    return json_response({
        "images": encoded if plan.payload.send_images else [],
        "parameters": parameters,
        "info": json.dumps(build_info(plan, outcome, _loaded_model(app))),
    })


async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, "txt2img")


async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, "img2img")


def _png_b64(frame: PreviewFrame) -> str:
    """A1111 clients expect PNG here; our previews are JPEG or raw, so re-encode (small images)."""
    out = io.BytesIO()
    image_utils.preview_image(frame.data, frame.format, (frame.width, frame.height)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


async def progress(request: web.Request) -> web.Response:
    app = request.app
    jobs = _jobs(app)
    state = _state(app)
    skip_image = request.query.get("skip_current_image", "false").lower() in ("1", "true", "yes")
    running = jobs.current_job  # whatever is on the GPU: an A1111 call's job or anyone else's
    task = next((t for t in state.tasks if running is not None and t.job_id == running.id), None)
    if task is None and running is None and state.tasks:
        task = state.tasks[0]  # an A1111 call whose job is still queued
    if task is None and running is None:
        return json_response({
            "progress": 0.0, "eta_relative": 0.0, "state": _state_dict(None, None),
            "current_image": None, "textinfo": None,
        })
    if task is not None:
        step, total = task.step, task.total
        if running is not None and running.id == task.job_id and running.total:
            step, total = max(step, running.step or 0), running.total
        fraction = (task.job_no + (step / total if total else 0.0)) / task.job_count
        started = task.started
    else:
        step, total = running.step or 0, running.total or 0
        fraction = step / total if total else 0.0
        started = running.started_at or time.time()
    fraction = min(max(fraction, 0.01), 1.0)  # A1111 reports at least 0.01 while working
    elapsed = max(time.time() - started, 0.0)
    eta = max(elapsed / fraction - elapsed, 0.0)
    current_image = None
    latest = jobs.latest_preview()
    if latest is not None and not skip_image:
        current_image = await asyncio.to_thread(_png_b64, latest[1])
    return json_response({
        "progress": fraction,
        "eta_relative": eta,
        "state": _state_dict(task, (step, total)),
        "current_image": current_image,
        "textinfo": None,
    })


def _state_dict(task: Task | None, steps: tuple[int, int] | None) -> dict[str, Any]:
    step, total = steps or (0, 0)
    return {
        "skipped": False,
        "interrupted": bool(task and task.interrupted),
        "stopping_generation": False,
        "job": f"scripts_{task.kind}" if task else ("" if steps is None else "latentbridge"),
        "job_count": task.job_count if task else (1 if steps else 0),
        "job_timestamp": task.timestamp if task else "0",
        "job_no": task.job_no if task else 0,
        "sampling_step": step,
        "sampling_steps": total,
    }


async def interrupt(request: web.Request) -> web.Response:
    """Stop what is running now (A1111 semantics); its A1111 call also skips its later batches."""
    jobs = _jobs(request.app)
    running = jobs.current_job
    for task in _state(request.app).tasks:
        if running is None or task.job_id == running.id:
            task.interrupted = True
    if running is not None:
        jobs.cancel(running.id)
    return json_response({})


async def skip(request: web.Request) -> web.Response:
    # A1111's "skip" ends the current image and goes on with the next batch: a cancel does that.
    jobs = _jobs(request.app)
    running = jobs.current_job
    if running is not None:
        jobs.cancel(running.id)
    return json_response(None)


async def samplers(request: web.Request) -> web.Response:
    # Only what the loaded model can use in this installation (see capabilities()).
    usable = set(capabilities(request.app).samplers)
    return json_response([{"name": s.name, "aliases": list(s.aliases), "options": s.options}
                              for s in SAMPLERS if s.sampler in usable])


async def schedulers(request: web.Request) -> web.Response:
    return json_response(list(SCHEDULERS))


def _model_item(name: str, filename: str) -> dict[str, Any]:
    stem = name.rsplit(".", 1)[0] if name.endswith((".safetensors", ".ckpt")) else name
    return {"title": name, "model_name": stem, "hash": None, "sha256": None, "filename": filename, "config": None}


async def sd_models(request: web.Request) -> web.Response:
    listed = await asyncio.to_thread(_list_models, request.app)  # scans the model folders
    return json_response([_model_item(name, filename) for name, filename in listed])


# Options A1111 clients commonly read; all round-trip, the model one also loads the model.
DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_format": "png",
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 1,
    "live_previews_image_format": "png",
    "img2img_color_correction": False,
    "inpainting_mask_weight": 1.0,
    "save_images_default": False,
}


async def get_options(request: web.Request) -> web.Response:
    options = {**DEFAULT_OPTIONS, **_state(request.app).options}
    options["sd_model_checkpoint"] = _loaded_model(request.app)
    return json_response(options)


def _check_option_types(data: dict[str, Any]) -> None:
    for key, value in data.items():
        default = DEFAULT_OPTIONS.get(key)
        if default is None or value is None:
            continue
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise InvalidRequest(f"option {key} must be a {type(default).__name__}", field=key)


async def set_options(request: web.Request) -> web.Response:
    app = request.app
    try:
        data = await _read_json(request)
        if not isinstance(data, dict):
            raise InvalidRequest("options must be a JSON object", field="body")
        _check_option_types(data)
        checkpoint = _checkpoint_name(data.get("sd_model_checkpoint"))
        if checkpoint is not None and checkpoint != _loaded_model(app):
            # A1111 loads the checkpoint before answering; so do we (on the worker, not the loop).
            await _load_model(app, checkpoint)
    except LatentBridgeError as exc:
        return error_response(_a1111_field(exc))
    # Unknown options are ignored, as A1111's opts.set ignores them.
    _state(app).options.update({k: v for k, v in data.items() if k in DEFAULT_OPTIONS and v is not None})
    return json_response(None)


def add_a1111_routes(app: web.Application) -> None:
    """Register the /sdapi/v1 routes (called by server.app.create_app)."""
    app[STATE_KEY] = A1111State()
    app.router.add_post(f"{PREFIX}/txt2img", txt2img)
    app.router.add_post(f"{PREFIX}/img2img", img2img)
    app.router.add_get(f"{PREFIX}/progress", progress)
    app.router.add_post(f"{PREFIX}/interrupt", interrupt)
    app.router.add_post(f"{PREFIX}/skip", skip)
    app.router.add_get(f"{PREFIX}/samplers", samplers)
    app.router.add_get(f"{PREFIX}/schedulers", schedulers)
    app.router.add_get(f"{PREFIX}/sd-models", sd_models)
    app.router.add_get(f"{PREFIX}/options", get_options)
    app.router.add_post(f"{PREFIX}/options", set_options)
