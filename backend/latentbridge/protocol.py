"""The wire format: every request, event and error, as pydantic models.

This module is the one source of truth for what crosses a process boundary. The server
validates with it, the OpenAPI/JSON Schema documents are generated from it, results embed
`GenerationRequest` as JSON, and the Blender add-on (which cannot import this package) is held to
the same format by the shared test vectors in `tests/vectors/`.

It imports nothing heavy (no torch, no aiohttp) so any client can use it.
"""

from __future__ import annotations

import json
import math
import struct
from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError, ValidationInfo,
                      field_validator, model_validator)

PROTOCOL_VERSION = 1
WS_PATH = "/api/v1/ws"
DEFAULT_PORT = 7423  # neither A1111's 7860 nor ComfyUI's 8188

# Hard ceilings of the request model itself; the server may configure tighter limits.
MAX_SIDE = 4096
MAX_STEPS = 150
MAX_BATCH = 8
MAX_SEED = 2**32 - 1
MAX_CONTROLS = 4  # ControlNet units per request
MAX_REFERENCES = 4  # reference (IP-Adapter) images per request
# Models built in code with random weights (engine/tiny.py): safe for any client to name.
BUILTIN_MODELS = ("tiny", "tiny-inpaint", "tiny-sdxl", "random-mid", "tiny-sd3", "tiny-flux")
# Random ControlNets matching the tiny families (engine/tiny_control.py), and a random IP-Adapter.
BUILTIN_CONTROLNETS = ("tiny-controlnet", "tiny-controlnet-sdxl", "tiny-controlnet-union-sdxl", "tiny-controlnet-sd3",
                       "tiny-controlnet-flux")
BUILTIN_IP_ADAPTERS = ("tiny-ip-adapter", "tiny-ip-adapter-sdxl")


class Mode(str, Enum):
    txt2img = "txt2img"
    img2img = "img2img"
    inpaint = "inpaint"
    outpaint = "outpaint"


class Sampler(str, Enum):
    """The solver that steps through the noise schedule (diffusers' schedulers; docs/engine.md maps
    each to A1111's name). `dpmpp_2m_karras` and `dpmpp_sde_karras` are the older spellings of
    `dpmpp_2m` / `dpmpp_sde` with `schedule: karras`."""

    euler = "euler"
    euler_a = "euler_a"
    dpmpp_2m = "dpmpp_2m"
    dpmpp_2m_karras = "dpmpp_2m_karras"
    dpmpp_sde_karras = "dpmpp_sde_karras"
    ddim = "ddim"
    unipc = "unipc"
    lcm = "lcm"
    tcd = "tcd"
    heun = "heun"
    pndm = "pndm"
    lms = "lms"
    dpm2 = "dpm2"
    dpm2_a = "dpm2_a"
    dpmpp_2s_a = "dpmpp_2s_a"
    dpmpp_sde = "dpmpp_sde"
    dpmpp_2m_sde = "dpmpp_2m_sde"
    dpmpp_2m_sde_heun = "dpmpp_2m_sde_heun"
    dpmpp_3m_sde = "dpmpp_3m_sde"


# The older sampler names that carry their schedule: (sampler, schedule) they stand for.
KARRAS_SAMPLERS = {Sampler.dpmpp_2m_karras: Sampler.dpmpp_2m, Sampler.dpmpp_sde_karras: Sampler.dpmpp_sde}


class Schedule(str, Enum):
    """Where the sampler's steps fall on the noise scale. `default` keeps the model's own scheduler
    configuration; `linspace` / `leading` / `trailing` space the timesteps evenly over the whole
    range / from the start / from the end; `karras`, `exponential` and `beta` pick the noise levels
    (sigmas) by those formulas. Not every sampler takes every schedule (see capabilities)."""

    default = "default"
    linspace = "linspace"
    leading = "leading"
    trailing = "trailing"
    karras = "karras"
    exponential = "exponential"
    beta = "beta"


class Seamless(str, Enum):
    none = "none"
    x = "x"
    y = "y"
    xy = "xy"

    @property
    def wraps_x(self) -> bool:
        return self in (Seamless.x, Seamless.xy)

    @property
    def wraps_y(self) -> bool:
        return self in (Seamless.y, Seamless.xy)


def _number_kind(annotation: Any) -> type | None:
    """int or float when a field holds a number (possibly Annotated, possibly or None), else None."""
    if annotation in (int, float):
        return annotation
    if get_origin(annotation) is Annotated:
        return _number_kind(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return next((kind for arg in get_args(annotation) if (kind := _number_kind(arg))), None)
    return None


class Strict(BaseModel):
    # Unknown fields are an error: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class StrictNumbers(Strict):
    """A Strict model whose numbers are JSON numbers (for models without a discriminator field:
    pydantic allows no before-validator on one)."""

    @field_validator("*", mode="before")
    @classmethod
    def _json_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON Schema's `integer` and `number` include neither booleans nor numeric strings, which
        # pydantic's lax mode would take (`true` as 1, "20" as 20). An integral float such as 2.0
        # is an integer to JSON Schema and stays accepted. Kept out of the field types so the
        # generated schemas keep their plain `minimum`/`maximum`.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and isinstance(value, (bool, str, bytes)) and _number_kind(field.annotation):
            raise ValueError("Input should be a number, not " + ("a boolean" if isinstance(value, bool) else "a string"))
        return value


# Booleans of client messages: `true`/`false` only (lax mode would take 1, "yes", ...).
WireBool = StrictBool


class MaskOptions(StrictNumbers):
    blur: int = Field(4, ge=0, le=256, description="Gaussian feather radius in pixels")
    invert: WireBool = Field(False, description="Repaint the unmasked area instead")
    only_masked: WireBool = Field(
        False, description="Crop around the mask (plus padding), generate at working size, paste back"
    )
    padding: int = Field(32, ge=0, le=1024, description="Context pixels around the mask when only_masked")


class OutpaintExtent(StrictNumbers):
    left: int = Field(0, ge=0, le=2048)
    top: int = Field(0, ge=0, le=2048)
    right: int = Field(0, ge=0, le=2048)
    bottom: int = Field(0, ge=0, le=2048)

    @property
    def any(self) -> bool:
        return bool(self.left or self.top or self.right or self.bottom)


class ControlType(str, Enum):
    """What a control image shows; ControlNet Union models take it as their control mode."""

    depth = "depth"  # near = white, far = black
    normal = "normal"  # camera-space normal map
    canny = "canny"  # white edges on black
    lineart = "lineart"
    softedge = "softedge"
    scribble = "scribble"
    segmentation = "segmentation"  # a colour per object / material (ADE20K palette)
    openpose = "openpose"
    tile = "tile"  # the image itself, for detail and upscaling


class ControlUnit(StrictNumbers):
    """One ControlNet unit. Its image is the upload with role `control.<index in controls>`."""

    type: ControlType
    model: str | None = Field(None, max_length=1024, description="ControlNet to use: a built-in, a name inside the "
                              "ControlNet folders, or (local callers) a hub id / folder / .safetensors; the server's "
                              "default for this type and the loaded family when absent")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="Conditioning scale; 0 gives exactly the image without this unit")
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps at which the control starts")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps at which it ends")
    mode: Literal["balanced", "prompt", "control"] = Field(
        "balanced", description="What wins when prompt and control disagree (A1111's control mode): balanced; prompt "
        "(control fades in the deeper layers); control (also applied to the unconditional pass, so CFG strengthens it)")
    preprocessor: str = Field("none", max_length=64, description="Turn a picture into this unit's map first (canny, "
                              "depth, normal, ...; see capabilities); `none`: the image already is the map")
    preprocessor_options: dict[str, float] = Field(default_factory=dict, max_length=8,
                                                   description="e.g. canny `low`/`high` thresholds")

    @model_validator(mode="after")
    def _range(self) -> "ControlUnit":
        if self.end <= self.start:
            raise ValueError("`end` must be after `start`")
        return self


class ReferenceImages(StrictNumbers):
    """Reference images for style and subject (IP-Adapter): uploads with roles `reference.0`, ...."""

    images: int = Field(1, ge=1, le=MAX_REFERENCES, description="How many reference images were uploaded")
    weight: float = Field(0.6, ge=0.0, le=2.0, description="How strongly the references steer the image")
    model: str | None = Field(None, max_length=1024, description="IP-Adapter to use; the server's default when absent")


def image_role_pattern(conditioning_only: bool = False) -> str:
    """Upload roles: init, mask, control.<i>, reference.<i> (only the last two when asked)."""
    roles = rf"control\.[0-{MAX_CONTROLS - 1}]|reference\.[0-{MAX_REFERENCES - 1}]"
    return rf"^({roles})$" if conditioning_only else rf"^(init|mask|{roles})$"


# An uploaded image's role in a request: init, mask, control.<i>, reference.<i>.
ImageRole = Annotated[str, Field(pattern=image_role_pattern(), max_length=16)]
# The roles of the conditioning images (REST bodies carry init and mask in fields of their own).
ConditioningRole = Annotated[str, Field(pattern=image_role_pattern(conditioning_only=True), max_length=16)]


class LoraSpec(StrictNumbers):
    name: str = Field(..., min_length=1, max_length=512, description="File name inside a LoRA directory, or a path the server allows")
    weight: float = Field(1.0, ge=-4.0, le=4.0)


# Encodings of a preview: images, or raw RGB rows (see PreviewOptions.format).
PreviewFormat = Literal["png", "jpeg", "webp", "rgb"]


class PreviewOptions(StrictNumbers):
    decoder: Literal["latent2rgb", "taesd", "vae", "none"] = "latent2rgb"
    max_size: int = Field(256, ge=16, le=1024, description="Longest side of a preview in pixels")
    format: Literal["jpeg", "png", "rgb"] = Field(
        "jpeg",
        description="Preview encoding. rgb: raw 8-bit RGB, rows top first, width*height*3 bytes: nothing to "
        "decode, for clients on the same machine (Blender applies it without a decode step)",
    )


# Hires-fix upscalers that work on the latents (torch's interpolation modes), before any by name.
LATENT_UPSCALERS = ("latent", "latent-antialiased", "latent-bicubic", "latent-bicubic-antialiased",
                    "latent-nearest", "latent-nearest-exact")


class HiresOptions(StrictNumbers):
    """A second pass ("hires fix"): the image is generated at `width` x `height`, upscaled, then
    repainted at the large size with img2img, so it keeps the composition of the base size. The
    result is `width * scale` x `height * scale`, or `hires.width` x `hires.height` when given (both
    given: upscaled to cover that size, then centre-cropped); sizes round down to multiples of 8."""

    scale: float = Field(2.0, ge=1.0, le=8.0, description="Upscale factor when hires.width/height are 0")
    width: int = Field(0, ge=0, le=MAX_SIDE, description="Final width; 0: width * scale (or from height)")
    height: int = Field(0, ge=0, le=MAX_SIDE, description="Final height; 0: height * scale (or from width)")
    upscaler: str = Field(
        "latent", min_length=1, max_length=256,
        description="latent (bilinear), latent-antialiased, latent-bicubic, latent-bicubic-antialiased, "
        "latent-nearest, latent-nearest-exact; lanczos, nearest; or an upscaler model in --upscaler-dirs",
    )
    steps: int = Field(0, ge=0, le=MAX_STEPS, description="Steps of the second pass; 0: the request's steps")
    strength: float = Field(0.7, ge=0.0, le=1.0, description="Denoising strength of the second pass")
    prompt: str | None = Field(None, max_length=10_000, description="Second-pass prompt; the request's when absent")
    negative_prompt: str | None = Field(None, max_length=10_000)
    sampler: Sampler | None = Field(None, description="Second-pass sampler; the request's when absent")
    schedule: Schedule | None = None

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the result for a first pass of width x height."""
        if self.width and self.height:
            w, h = self.width, self.height
        else:
            w, h = self.target_size(width, height)
        return max(8, w - w % 8), max(8, h - h % 8)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the first pass is upscaled to (before the centre crop to `final_size`)."""
        if not self.width and not self.height:
            return int(width * self.scale), int(height * self.scale)
        if not self.height:
            return self.width, self.width * height // width
        if not self.width:
            return self.height * width // height, self.height
        # Both given: cover the target box keeping the aspect, crop the overflow afterwards.
        if width / height < self.width / self.height:
            return self.width, self.width * height // width
        return self.height * width // height, self.height


# `_mode_consistency` below, as JSON Schema can say it (so the generated schemas promise only what
# the model accepts): outpaint needs at least one non-zero extent; a Karras sampler takes the
# default or karras schedule only; hires is for txt2img, and its own Karras sampler the same rule.
# (That hires' final size must stay within 64..MAX_SIDE is arithmetic JSON Schema cannot do: a 422.)
_OUTPAINT_NEEDS_AN_EXTENT = {
    "if": {"properties": {"mode": {"const": "outpaint"}}, "required": ["mode"]},
    "then": {"required": ["outpaint"], "properties": {"outpaint": {"anyOf": [
        {"properties": {side: {"minimum": 1}}, "required": [side]} for side in ("left", "top", "right", "bottom")
    ]}}},
}
_KARRAS_SAMPLER_SCHEDULE = {
    "if": {"properties": {"sampler": {"enum": [s.value for s in KARRAS_SAMPLERS]}}, "required": ["sampler"]},
    "then": {"properties": {"schedule": {"enum": ["default", "karras"]}}},
}
_HIRES_IS_FOR_TXT2IMG = {
    "if": {"properties": {"hires": {"type": "object"}}, "required": ["hires"]},
    "then": {"properties": {"mode": {"const": "txt2img"}, "hires": {
        "if": {"properties": {"sampler": {"enum": [s.value for s in KARRAS_SAMPLERS]}}, "required": ["sampler"]},
        "then": {"properties": {"schedule": {"enum": ["default", "karras", None]}}}}}},
}


class GenerationRequest(StrictNumbers):
    """A whole generation. Stored with every result, so any image can be regenerated exactly."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False,
                              json_schema_extra={"allOf": [_OUTPAINT_NEEDS_AN_EXTENT, _KARRAS_SAMPLER_SCHEDULE,
                                                           _HIRES_IS_FOR_TXT2IMG]})
    mode: Mode = Mode.txt2img
    prompt: str = Field("", max_length=10_000)
    negative_prompt: str = Field("", max_length=10_000)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(None, description="Random when absent; always reported back")
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    guidance: float = Field(7.0, ge=0.0, le=30.0)
    strength: float = Field(0.75, ge=0.0, le=1.0, description="img2img/inpaint denoising strength")
    width: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8)
    sampler: Sampler = Sampler.euler_a
    schedule: Schedule = Field(Schedule.default, description="Noise schedule; the model's own by default")
    clip_skip: int = Field(1, ge=1, le=12, description="Use the text encoder's output this many layers from the end "
                           "(A1111's Clip skip; 1 = the last layer)")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    seamless: Seamless = Seamless.none
    mask: MaskOptions = Field(default_factory=MaskOptions)
    outpaint: OutpaintExtent = Field(default_factory=OutpaintExtent)
    model: str | None = Field(None, max_length=1024, description="Model to use; the loaded model when absent")
    loras: list[LoraSpec] = Field(default_factory=list, max_length=8)
    controls: list[ControlUnit] = Field(default_factory=list, max_length=MAX_CONTROLS,
                                        description="ControlNet units; unit i's image is the upload `control.i`")
    reference: ReferenceImages | None = Field(None, description="Reference images (IP-Adapter)")
    preview: PreviewOptions = Field(default_factory=PreviewOptions)
    hires: HiresOptions | None = Field(None, description="txt2img only: a second, upscaled pass (hires fix)")
    vae: str | None = Field(None, min_length=1, max_length=1024,
                            description="VAE to encode/decode with (a file or folder in --vae-dirs); the model's own when absent")

    @model_validator(mode="after")
    def _mode_consistency(self) -> "GenerationRequest":
        if self.mode is Mode.outpaint and not self.outpaint.any:
            raise ValueError("outpaint needs at least one non-zero extent in `outpaint`")
        if self.sampler in KARRAS_SAMPLERS and self.schedule not in (Schedule.default, Schedule.karras):
            raise ValueError(f"sampler {self.sampler.value} implies schedule karras; use sampler "
                             f"{KARRAS_SAMPLERS[self.sampler].value} with schedule {self.schedule.value}")
        if self.hires is not None and self.mode is not Mode.txt2img:
            raise ValueError("hires (a second, upscaled pass) is for mode txt2img")
        if self.hires is not None and self.hires.sampler in KARRAS_SAMPLERS \
                and self.hires.schedule not in (None, Schedule.default, Schedule.karras):
            raise ValueError(f"hires.sampler {self.hires.sampler.value} implies schedule karras")
        if self.hires is not None:
            w, h = self.hires.final_size(self.width, self.height)
            if not (64 <= w <= MAX_SIDE and 64 <= h <= MAX_SIDE):
                raise ValueError(f"hires makes a {w}x{h} image; each side must be 64..{MAX_SIDE}")
        return self

    def output_size(self) -> tuple[int, int]:
        """(width, height) of the images a txt2img/img2img/inpaint request makes (outpaint adds its
        extents to the init image's size)."""
        if self.hires is not None:
            return self.hires.final_size(self.width, self.height)
        return self.width, self.height

    def needs_init_image(self) -> bool:
        return self.mode is not Mode.txt2img

    def needs_mask(self) -> bool:
        return self.mode is Mode.inpaint

    def image_roles(self) -> list[str]:
        """The uploads this request needs: init, mask, control.<i>, reference.<i>."""
        roles = (["init"] if self.needs_init_image() else []) + (["mask"] if self.needs_mask() else [])
        roles += [f"control.{i}" for i in range(len(self.controls))]
        roles += [f"reference.{i}" for i in range(self.reference.images if self.reference else 0)]
        return roles

    def with_seed(self, seed: int) -> "GenerationRequest":
        return self.model_copy(update={"seed": seed})


# --------------------------------------------------------------------------------------------
# Errors


class ErrorCode(str, Enum):
    bad_message = "bad_message"  # not JSON, unknown type, wrong binary header
    invalid_request = "invalid_request"  # a field failed validation (see `field`)
    bad_image = "bad_image"  # undecodable / truncated / wrong size image
    missing_image = "missing_image"  # mode needs an init image or mask that was not sent
    too_large = "too_large"  # body, message, pixel or upload limit exceeded
    unknown_model = "unknown_model"
    model_not_ready = "model_not_ready"
    model_load_failed = "model_load_failed"
    unsupported = "unsupported"  # mode/sampler/family combination the engine cannot do
    unknown_job = "unknown_job"
    queue_full = "queue_full"
    cancelled = "cancelled"
    out_of_memory = "out_of_memory"
    timeout = "timeout"
    interrupted = "interrupted"  # the server stopped before the job finished (see JobState.interrupted)
    worker_lost = "worker_lost"  # the engine replica running the job died, and so did the one it was retried on
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    internal = "internal"


class LatentBridgeError(Exception):
    """An error with a wire code. Raised anywhere; the server turns it into an `ErrorEvent`."""

    code: ErrorCode = ErrorCode.internal

    def __init__(self, message: str, *, field: str | None = None, code: ErrorCode | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_event(self, job_id: str | None = None) -> "ErrorEvent":
        return ErrorEvent(job_id=job_id, code=self.code, message=self.message, field=self.field)


class InvalidRequest(LatentBridgeError):
    code = ErrorCode.invalid_request


class BadImage(LatentBridgeError):
    code = ErrorCode.bad_image


class MissingImage(LatentBridgeError):
    code = ErrorCode.missing_image


class TooLarge(LatentBridgeError):
    code = ErrorCode.too_large


class UnknownModel(LatentBridgeError):
    code = ErrorCode.unknown_model


class Unsupported(LatentBridgeError):
    code = ErrorCode.unsupported


class Cancelled(LatentBridgeError):
    code = ErrorCode.cancelled

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


class OutOfMemory(LatentBridgeError):
    code = ErrorCode.out_of_memory


def error_from_validation(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """First pydantic error as a typed InvalidRequest naming the offending field (dotted path)."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return InvalidRequest(f"{field or 'request'}: {first.get('msg', 'invalid value')}", field=field or None)


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999: Python would read it as inf
        raise _NotFinite(text)
    return value


def loads_json(text: str | bytes | bytearray, what: str = "message", field: str | None = None) -> Any:
    """Strict JSON for everything a client sends: NaN, Infinity and numbers beyond a float's range
    are refused (they are not JSON, and a NaN must never reach a response), and nesting too deep
    for the decoder is a typed error, not a RecursionError. Any failure is `bad_message`."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise LatentBridgeError(f"{what} contains {exc}: NaN and Infinity are not JSON numbers",
                                field=field, code=ErrorCode.bad_message) from None
    except RecursionError:
        raise LatentBridgeError(f"{what} is nested too deeply", field=field, code=ErrorCode.bad_message) from None
    except (ValueError, UnicodeDecodeError):
        raise LatentBridgeError(f"{what} is not valid JSON", field=field, code=ErrorCode.bad_message) from None


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_object(model: type[ModelT], data: Any, what: str = "request", field: str = "request") -> ModelT:
    """Validate a JSON-like object into `model`, or raise InvalidRequest naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object", field=field)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_from_validation(exc) from None


def parse_request(data: Any) -> GenerationRequest:
    """Validate a JSON-like object into a GenerationRequest or raise InvalidRequest."""
    return parse_object(GenerationRequest, data)


# --------------------------------------------------------------------------------------------
# Websocket messages, client → server (JSON text frames)


class HelloMessage(Strict):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    client: str = Field("", max_length=200)
    token: str | None = Field(None, max_length=512, description="Alternative to the Authorization header")


class SubmitMessage(Strict):
    """Submit a job. Images are uploaded first as binary `upload` frames; `images` maps a role
    ("init", "mask", "control.0", "reference.0", ...) to the `upload_id` of such a frame."""

    type: Literal["submit"] = "submit"
    client_ref: str | None = Field(None, max_length=200, description="Echoed in `accepted` to correlate")
    request: GenerationRequest
    images: dict[ImageRole, str] = Field(default_factory=dict, max_length=2 + MAX_CONTROLS + MAX_REFERENCES)
    priority: Literal["interactive", "normal", "batch"] = "normal"


class CancelMessage(Strict):
    type: Literal["cancel"] = "cancel"
    job_id: str = Field(..., max_length=100)


class AttachMessage(Strict):
    """Re-attach to a job (after a reconnect): the server replies with its status and, for a
    finished job, re-sends its results."""

    type: Literal["attach"] = "attach"
    job_id: str = Field(..., max_length=100)


class PingMessage(Strict):
    type: Literal["ping"] = "ping"


# --------------------------------------------------------------------------------------------
# Live mode (docs/live.md): a session renders every frame the client sends, latest wins.


class LivePreset(str, Enum):
    """Few-step settings a live session runs with (docs/live.md lists the checkpoints and LoRAs
    each one is for; a LoRA goes in `request.loras`)."""

    custom = "custom"  # the request's own sampler, schedule, steps and guidance
    turbo = "turbo"  # SD-Turbo / SDXL-Turbo checkpoints: euler, trailing timesteps, guidance off
    lcm = "lcm"  # LCM checkpoints, or an LCM-LoRA: LCM scheduler, guidance off
    lightning = "lightning"  # SDXL-Lightning LoRAs or UNets: euler, trailing timesteps, guidance off
    hyper = "hyper"  # Hyper-SD N-step LoRAs: DDIM, trailing timesteps, guidance off
    tcd = "tcd"  # TCD LoRAs: the TCD scheduler, guidance off


class LiveOptions(StrictNumbers):
    """How a live session renders its frames (fixed for the session; `live_update` changes them)."""

    preset: LivePreset = Field(LivePreset.turbo, description="Few-step settings (custom: the request's own)")
    steps: int | None = Field(None, ge=1, le=50, description="Denoising steps each frame runs (img2img: after "
                              "`strength`); the preset's when absent (turbo 1, the others 4; custom: the request's)")
    decoder: Literal["taesd", "vae"] = Field("taesd", description="taesd: the tiny autoencoder (AutoencoderTiny) "
                                             "encodes and decodes the frames (fast); vae: the model's own VAE. "
                                             "Without a configured TAESD the server uses the VAE and says so")
    format: Literal["jpeg", "png", "rgb"] = Field("jpeg", description="Encoding of the result frames; rgb: raw "
                                                  "8-bit RGB rows, for clients on the same machine")


class LiveStartMessage(Strict):
    """Start a live session: every `live_frame` it is sent becomes one img2img (or, with control
    units, txt2img) generation of `request`, at most one pending per session (a newer frame
    replaces it). The server answers `live_started` with the session's `job_id`."""

    type: Literal["live_start"] = "live_start"
    client_ref: str | None = Field(None, max_length=200, description="Echoed in `live_started` to correlate")
    request: GenerationRequest
    live: LiveOptions = Field(default_factory=LiveOptions)


class LiveUpdateMessage(Strict):
    """Change a running session's request and/or options (a new prompt, strength, seed, units...)
    without restarting it; the last frame is rendered again with them when it carries the parts
    they take (a change of control units waits for the client's next frame)."""

    type: Literal["live_update"] = "live_update"
    job_id: str = Field(..., max_length=100)
    request: GenerationRequest | None = None
    live: LiveOptions | None = None


class LiveStopMessage(Strict):
    type: Literal["live_stop"] = "live_stop"
    job_id: str = Field(..., max_length=100)


ClientMessage = Annotated[
    Union[HelloMessage, SubmitMessage, CancelMessage, AttachMessage, PingMessage, LiveStartMessage, LiveUpdateMessage,
          LiveStopMessage], Field(discriminator="type")
]
_client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


CLIENT_MESSAGE_TYPES = ("hello", "submit", "cancel", "attach", "ping", "live_start", "live_update", "live_stop")


def parse_client_message(text: str | bytes) -> Any:
    """Decode one JSON text frame from a client, or raise a typed LatentBridgeError."""
    data = loads_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise LatentBridgeError("message must be a JSON object with a string `type`", field="type", code=ErrorCode.bad_message)
    if data["type"] not in CLIENT_MESSAGE_TYPES:
        raise LatentBridgeError(f"unknown message type {data['type']!r}", field="type", code=ErrorCode.bad_message)
    try:
        return _client_message_adapter.validate_python(data)
    except ValidationError as exc:
        err = error_from_validation(exc)
        # The discriminator is the first element of pydantic's location; drop it.
        if err.field and err.field.startswith(data["type"] + "."):
            err.field = err.field[len(data["type"]) + 1 :]
            err.message = err.message[len(data["type"]) + 1 :]
        raise err from None


# --------------------------------------------------------------------------------------------
# Events, server → client (JSON text frames; also the SSE payloads of the HTTP API)


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    cancelled = "cancelled"
    failed = "failed"
    interrupted = "interrupted"  # the server stopped while it was unfinished, and it was not resumed

    @property
    def finished(self) -> bool:
        return self is not JobState.queued and self is not JobState.running


class ModelState(str, Enum):
    loading = "loading"
    downloading = "downloading"
    ready = "ready"
    failed = "failed"


class ModelStatus(BaseModel):
    name: str | None = None
    family: str | None = None
    state: ModelState = ModelState.loading
    progress: float | None = Field(None, description="0..1 while downloading, when known")
    error: str | None = None
    inpaint_native: bool = False
    device: str | None = None
    dtype: str | None = None


class Limits(BaseModel):
    max_width: int
    max_height: int
    max_pixels: int
    max_steps: int
    max_batch: int
    max_message_bytes: int
    max_queue: int


class Capabilities(BaseModel):
    modes: list[Mode]
    samplers: list[Sampler]
    families: list[str]
    seamless: list[Seamless]
    preview_decoders: list[str]
    limits: Limits
    control_types: list[ControlType] = Field(default_factory=list, description="ControlNet types the loaded model "
                                             "can take (empty: no ControlNet for this family)")
    control_modes: list[Mode] = Field(default_factory=list, description="Modes that can run with ControlNet units")
    controlnets: list[str] = Field(default_factory=list, description="ControlNets a request may name (GET "
                                   "/api/v1/models lists the folders' ones with details)")
    preprocessors: list[str] = Field(default_factory=lambda: ["none"])
    reference: bool = Field(False, description="Reference images (IP-Adapter) available")


class HelloEvent(BaseModel):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    server: str
    capabilities: Capabilities
    model: ModelStatus


class AcceptedEvent(BaseModel):
    type: Literal["accepted"] = "accepted"
    job_id: str
    client_ref: str | None = None
    position: int = Field(..., description="0 = next to run")


class StartedEvent(BaseModel):
    type: Literal["started"] = "started"
    job_id: str
    seed: int


class ProgressEvent(BaseModel):
    type: Literal["progress"] = "progress"
    job_id: str
    step: int
    total: int
    eta_s: float | None = None


class ResultEvent(BaseModel):
    """Announces one finished image; its bytes follow as a binary `result` frame (websocket) or at
    `url` (HTTP)."""

    type: Literal["result"] = "result"
    job_id: str
    index: int
    seed: int
    width: int
    height: int
    request: GenerationRequest
    url: str | None = None


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    job_id: str
    count: int
    elapsed_s: float


class CancelledEvent(BaseModel):
    type: Literal["cancelled"] = "cancelled"
    job_id: str


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    job_id: str | None = None
    code: ErrorCode
    message: str
    field: str | None = None


class StatusEvent(BaseModel):
    """Reply to `attach`, and the body of `GET /api/v1/jobs/{id}`."""

    type: Literal["status"] = "status"
    job_id: str
    state: JobState
    position: int | None = None
    step: int | None = None
    total: int | None = None
    result_count: int = 0
    request: GenerationRequest | None = None
    error: ErrorEvent | None = None
    created_at: float | None = None
    finished_at: float | None = None
    resumed: int = Field(0, description="Times the job was queued again because the server stopped (crash or "
                         "restart) while it was queued or running")


class ModelEvent(BaseModel):
    """The model's state changed (loading, downloading with progress, ready, failed): sent to every
    client that said hello, so a first-run download shows its progress without polling."""

    type: Literal["model"] = "model"
    model: ModelStatus


class PongEvent(BaseModel):
    type: Literal["pong"] = "pong"


class PreviewEvent(BaseModel):
    """A preview as JSON, for the HTTP event stream (SSE) only; the websocket sends previews as
    binary `preview` frames instead."""

    type: Literal["preview"] = "preview"
    job_id: str
    step: int
    total: int
    width: int
    height: int
    format: PreviewFormat = "jpeg"
    data: str = Field(..., description="The image bytes, base64")


class LiveStartedEvent(BaseModel):
    """A live session runs: `request` is what every frame renders (the preset applied, the seed
    chosen), `decoder` the autoencoder in use (vae when no TAESD fits the model)."""

    type: Literal["live_started"] = "live_started"
    job_id: str
    client_ref: str | None = None
    revision: int = Field(0, description="Bumped by every live_update; result frames name the one they used")
    request: GenerationRequest
    live: LiveOptions
    decoder: Literal["taesd", "vae"]


class LiveUpdatedEvent(BaseModel):
    type: Literal["live_updated"] = "live_updated"
    job_id: str
    revision: int
    request: GenerationRequest
    live: LiveOptions
    decoder: Literal["taesd", "vae"]


class LiveCounts(BaseModel):
    received: int = Field(0, description="Frames the session was sent")
    rendered: int = Field(0, description="Frames rendered (result frames sent), re-renders after live_update included")
    dropped: int = Field(0, description="Frames replaced by a newer one before they were rendered (stale)")
    stale_rendered: int = Field(0, description="Frames rendered although a newer one had arrived: always 0")
    failed: int = Field(0, description="Frames that failed (each with an error event)")


class LiveStoppedEvent(BaseModel):
    type: Literal["live_stopped"] = "live_stopped"
    job_id: str
    reason: Literal["stopped", "disconnected", "failed", "shutdown"]
    frames: LiveCounts
    message: str | None = None


ServerEvent = Annotated[
    Union[
        HelloEvent,
        AcceptedEvent,
        StartedEvent,
        ProgressEvent,
        ResultEvent,
        DoneEvent,
        CancelledEvent,
        ErrorEvent,
        StatusEvent,
        PongEvent,
        PreviewEvent,
        ModelEvent,
        LiveStartedEvent,
        LiveUpdatedEvent,
        LiveStoppedEvent,
    ],
    Field(discriminator="type"),
]
server_event_adapter: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)


def parse_server_event(text: str | bytes) -> BaseModel:
    return server_event_adapter.validate_json(text)


# --------------------------------------------------------------------------------------------
# Binary frames: u32 big-endian header length, UTF-8 JSON header, then the payload bytes.

BinaryKind = Literal["upload", "preview", "result", "live_frame", "live_result"]
ImageFormat = Literal["png", "jpeg", "webp"]
MAX_BINARY_HEADER = 4096
# Kinds whose payload may be raw `rgb` pixels (with width and height in the header).
RAW_KINDS = ("preview", "live_frame", "live_result")
# The images one live frame may carry: the frame itself and the control units' maps.
LIVE_ROLE_PATTERN = rf"^(init|control\.[0-{MAX_CONTROLS - 1}])$"


class LivePart(StrictNumbers):
    """One image of a `live_frame`: its role and its length in the payload (parts follow each other)."""

    role: str = Field(..., pattern=LIVE_ROLE_PATTERN, max_length=16, description="init (the frame) or control.<i>")
    bytes: int = Field(..., ge=1, description="Length of this image in the payload")


class LiveTimings(StrictNumbers):
    """Where a live frame's time went on the server, in milliseconds (None: the stage did not run)."""

    wait: float | None = Field(None, description="From arrival to the start of its render (queue, other work)")
    decode: float | None = Field(None, description="Decoding the frame's images")
    setup: float | None = Field(None, description="Loading, LoRAs, pipeline and prompt (once per settings)")
    denoise: float | None = Field(None, description="Encoding the frame and the denoising steps")
    vae: float | None = Field(None, description="Decoding the latents (TAESD or the VAE)")
    encode: float | None = Field(None, description="Encoding the result frame")


class BinaryHeader(StrictNumbers):
    kind: BinaryKind
    format: PreviewFormat = Field(..., description="png, jpeg or webp; `rgb` (raw pixels) on preview, live_frame and "
                                  "live_result frames, with width and height")
    job_id: str | None = Field(None, max_length=100, description="Set on preview/result frames and on live frames "
                               "(the live session)")
    upload_id: str | None = Field(None, max_length=100, description="Set on upload frames; named in `submit.images`")
    index: int = Field(0, ge=0, le=1024)
    step: Annotated[int, Field(ge=0)] | None = Field(None, description="Preview frames: the step it shows")
    total: Annotated[int, Field(ge=0)] | None = None
    width: Annotated[int, Field(ge=1)] | None = None
    height: Annotated[int, Field(ge=1)] | None = None
    frame: Annotated[int, Field(ge=0, le=2**53)] | None = Field(None, description="Live frames: the client's frame "
                                                                 "number (increasing); live results name the frame")
    revision: Annotated[int, Field(ge=0)] | None = Field(None, description="Live results: the settings revision used")
    parts: list[LivePart] | None = Field(None, min_length=1, max_length=1 + MAX_CONTROLS,
                                         description="live_frame: the images in the payload, in order")
    timings: LiveTimings | None = Field(None, description="Live results: milliseconds spent per stage on the server")

    @model_validator(mode="after")
    def _ids(self) -> "BinaryHeader":
        if self.kind == "upload" and not self.upload_id:
            raise ValueError("upload frames need `upload_id`")
        if self.kind != "upload" and not self.job_id:
            raise ValueError(f"{self.kind} frames need `job_id`")
        if self.format == "rgb" and (self.kind not in RAW_KINDS or not self.width or not self.height):
            raise ValueError("raw `rgb` payloads are for preview, live_frame and live_result frames only, with width "
                             "and height")
        if self.kind.startswith("live_") and self.frame is None:
            raise ValueError(f"{self.kind} frames need `frame`")
        if (self.kind == "live_frame") != (self.parts is not None):
            raise ValueError("`parts` is required on live_frame frames and only there")
        if self.parts is not None:
            roles = [part.role for part in self.parts]
            if "init" not in roles and not any(role.startswith("control.") for role in roles):
                raise ValueError("a live frame needs an `init` or a `control.<i>` part")
            if len(set(roles)) != len(roles):
                raise ValueError("each role appears once in `parts`")
            if self.format == "rgb" and any(part.bytes != self.width * self.height * 3 for part in self.parts):
                raise ValueError("raw `rgb` parts are width * height * 3 bytes each")
        return self


def split_live_parts(header: BinaryHeader, payload: bytes) -> dict[str, bytes]:
    """A live frame's payload cut into its parts (role → bytes), or `bad_message` saying why."""
    assert header.parts is not None
    if sum(part.bytes for part in header.parts) != len(payload):
        raise LatentBridgeError(f"live frame payload is {len(payload)} bytes, its parts add up to "
                                f"{sum(part.bytes for part in header.parts)}", field="header.parts",
                                code=ErrorCode.bad_message)
    out, offset = {}, 0
    for part in header.parts:
        out[part.role] = payload[offset:offset + part.bytes]
        offset += part.bytes
    return out


def encode_binary_frame(header: BinaryHeader, payload: bytes) -> bytes:
    head = header.model_dump_json(exclude_none=True).encode()
    return struct.pack(">I", len(head)) + head + payload


def decode_binary_frame(frame: bytes) -> tuple[BinaryHeader, bytes]:
    """Split a binary frame, or raise a typed `bad_message` error saying what is wrong."""
    if len(frame) < 4:
        raise LatentBridgeError("binary frame shorter than its 4-byte header length", code=ErrorCode.bad_message)
    (n,) = struct.unpack(">I", frame[:4])
    if n == 0 or n > MAX_BINARY_HEADER:
        raise LatentBridgeError(f"binary header length {n} out of range 1..{MAX_BINARY_HEADER}", code=ErrorCode.bad_message)
    if len(frame) < 4 + n:
        raise LatentBridgeError("binary frame truncated inside its header", code=ErrorCode.bad_message)
    data = loads_json(frame[4 : 4 + n], what="binary header")
    if not isinstance(data, dict):
        raise LatentBridgeError("binary header must be a JSON object", code=ErrorCode.bad_message)
    try:
        header = BinaryHeader.model_validate(data)
    except ValidationError as exc:
        err = error_from_validation(exc, prefix="header")
        err.code = ErrorCode.bad_message
        raise err from None
    return header, frame[4 + n :]


def json_schemas() -> dict[str, Any]:
    """JSON Schema of the request, client messages and server events (for docs and OpenAPI)."""
    return {
        "GenerationRequest": GenerationRequest.model_json_schema(),
        "ClientMessage": _client_message_adapter.json_schema(),
        "ServerEvent": server_event_adapter.json_schema(),
        "BinaryHeader": BinaryHeader.model_json_schema(),
    }
