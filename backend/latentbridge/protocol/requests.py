"""Constants, enums and the one request type (`GenerationRequest`) with its option models."""

from __future__ import annotations

from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator

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
