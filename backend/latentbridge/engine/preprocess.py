"""Preprocessors: turn a picture into the control map a ControlNet expects.

One entry point, `preprocess(name, image, options=..., estimators=...)`, and a registry,
`PREPROCESSORS` (name → description, options model, the estimator it needs if any), that the
server lists among its capabilities. Every preprocessor returns an RGB image of the input's size,
except `tile_resample`, which returns the down-sampled image (the engine fits every map to the
generation size, control.py's `_fit`).

Edge and line maps are OpenCV operations, written as sd-webui-controlnet writes them (the
maps the ControlNet 1.1 models were trained on come from those annotators): white lines on black.
`depth` runs a transformers depth-estimation model (engine/estimators.py); `normal` derives
surface normals from that depth with OpenCV's Sobel gradients, as sd-webui-controlnet's
normal_midas does, and writes them in the colour convention of ControlNet 1.1's normal model
(see `encode_normals`); `segmentation` runs a transformers semantic-segmentation model and
colours its classes with the ADE20K palette (engine/ade20k.py). The model-free filters (tile, blur, threshold, binary, colour grid, shuffle,
recolor) live in preprocess_filters.py. docs/preprocessors.md lists the conventions and their sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..protocol import BadImage, InvalidRequest, Unsupported, error_from_validation
from . import preprocess_filters as filters

if TYPE_CHECKING:
    from ..settings import Settings
    from .estimators import EstimatorCache

# --------------------------------------------------------------------------------------------
# Options (unknown fields are an error: a typo must not silently fall back to a default)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CannyOptions(BaseModel):
    """cv2.Canny's hysteresis thresholds on the (L1) Sobel gradient magnitude; defaults as
    sd-webui-controlnet's (100 / 200)."""

    model_config = ConfigDict(extra="forbid")
    low: int = Field(100, ge=0, le=2040, description="Edges weaker than this are dropped")
    high: int = Field(200, ge=0, le=2040, description="Edges stronger than this are kept; "
                                "those between the two only where they touch a strong one")

    @model_validator(mode="after")
    def _ordered(self) -> "CannyOptions":
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


class XdogOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: int = Field(32, ge=1, le=255, description="Higher: fewer, darker strokes only "
                           "(sd-webui-controlnet's default 32)")


class NormalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strength: float = Field(1.0, gt=0, le=100, description="Relief: the whole depth range spans this many times "
                            "the image's longest side (1: a ramp from far to near across the image tilts 45°)")
    background_threshold: float = Field(0.4, ge=0, le=1, description="Pixels farther than this fraction of the "
                                        "depth range (0 = farthest) face the viewer: a flat background "
                                        "(sd-webui-controlnet's normal_midas default 0.4)")


# --------------------------------------------------------------------------------------------
# Conventions shared with exact passes (Blender's Normal and Z passes follow the same rules)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals in camera space (x right, y up, z towards the viewer), shape (H, W, 3) →
    uint8 RGB in the colour convention of ControlNet 1.1's normal model (control_v11p_sd15_normalbae):
    "blue is front, red is left, green is top", i.e. RGB = ((-x, y, z) + 1) / 2 × 255.
    A surface facing the viewer is (128, 128, 255)."""
    colour = np.stack([-normals[..., 0], normals[..., 1], normals[..., 2]], axis=-1)
    return np.clip(np.rint((colour + 1.0) * 127.5), 0, 255).astype(np.uint8)


def normalise_disparity(disparity: np.ndarray) -> np.ndarray:
    """Disparity (larger = nearer) → 0..1 over its own range: ControlNet depth maps are near =
    white, far = black, normalised (as sd-webui-controlnet's depth annotators write them).
    A constant map (no depth differences) is all 0."""
    low, high = float(disparity.min()), float(disparity.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return np.zeros_like(disparity, dtype=np.float32)
    return ((disparity - low) / (high - low)).astype(np.float32)


def depth_map(disparity: np.ndarray) -> np.ndarray:
    """Disparity → the uint8 depth map (H, W): near = 255, far = 0."""
    return np.rint(normalise_disparity(disparity) * 255.0).astype(np.uint8)


def normals_from_depth(disparity: np.ndarray, *, strength: float = 1.0, background_threshold: float = 0.4) -> np.ndarray:
    """Camera-space unit normals (H, W, 3) from a disparity map, as sd-webui-controlnet's
    normal_midas computes them (Sobel gradients of the depth as a height field, z constant),
    except that the height is the normalised depth scaled to the image (`strength` × longest
    side), so the tilt does not depend on the estimator's output scale."""
    import cv2

    relief = normalise_disparity(disparity)
    height = relief * np.float32(strength * max(relief.shape))
    # scale 1/8: the 3x3 Sobel kernel sums 8 pixel differences; this gives the slope per pixel.
    slope_x = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
    slope_y = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
    background = relief < background_threshold
    slope_x[background] = 0.0
    slope_y[background] = 0.0
    # Surface z = h(x, y_down): its normal is (-dh/dx, -dh/dy_down, 1); with y up, (-dh/dx, dh/dy_down, 1).
    normals = np.stack([-slope_x, slope_y, np.ones_like(slope_x)], axis=-1)
    return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# The preprocessors (each: RGB uint8 array in → uint8 array of the same height and width out)


def _none(image: Image.Image, options: BaseModel, estimators, field: str) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _invert(image: Image.Image, options: BaseModel, estimators, field: str) -> np.ndarray:
    return 255 - _flatten(image)


def _canny(image: Image.Image, options: CannyOptions, estimators, field: str) -> np.ndarray:
    import cv2

    # On the colour image, as sd-webui-controlnet does (OpenCV takes the strongest channel's gradient).
    return cv2.Canny(_flatten(image), options.low, options.high)


def _scribble_xdog(image: Image.Image, options: XdogOptions, estimators, field: str) -> np.ndarray:
    import cv2

    # sd-webui-controlnet's scribble_xdog: a difference of Gaussians, thresholded.
    pixels = _flatten(image).astype(np.float32)
    fine = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    return np.where(2 * (255 - dog.astype(np.int32)) > options.threshold, 255, 0).astype(np.uint8)


def _lineart_standard(image: Image.Image, options: BaseModel, estimators, field: str) -> np.ndarray:
    import cv2

    # sd-webui-controlnet's lineart_standard: how much darker each pixel is than its blurred
    # surroundings, scaled by the median line strength.
    pixels = _flatten(image).astype(np.float32)
    blurred = cv2.GaussianBlur(pixels, (0, 0), 6.0)
    intensity = np.min(blurred - pixels, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines))) if lines.size else 16.0
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def _depth(image: Image.Image, options: BaseModel, estimators: "EstimatorCache | None", field: str) -> np.ndarray:
    return depth_map(_disparity(image, estimators, field, "the depth preprocessor"))


def _normal(image: Image.Image, options: NormalOptions, estimators: "EstimatorCache | None", field: str) -> np.ndarray:
    disparity = _disparity(image, estimators, field, "the normal preprocessor")
    normals = normals_from_depth(disparity, strength=options.strength, background_threshold=options.background_threshold)
    return encode_normals(normals)


def _disparity(image: Image.Image, estimators: "EstimatorCache | None", field: str, what: str) -> np.ndarray:
    if estimators is None:
        raise Unsupported(f"{what} needs a depth estimator and none was given (--depth-estimator)", field=field)
    return estimators.get(field=field, what=what).disparity(_flatten_image(image), field=field)


def _segmentation(image: Image.Image, options: BaseModel, estimators: "EstimatorCache | None", field: str) -> np.ndarray:
    from . import ade20k
    from .estimators import SEGMENTATION

    what = "the segmentation preprocessor"
    if estimators is None:
        raise Unsupported(f"{what} needs a segmentation estimator and none was given (--segmentation-estimator)",
                          field=field)
    segmenter = estimators.get(field=field, what=what, kind=SEGMENTATION)
    return ade20k.colorize(segmenter.labels(_flatten_image(image), field=field))


def _filter(function: Callable[[np.ndarray, Any], np.ndarray]) -> Callable[..., np.ndarray]:
    """A model-free filter of preprocess_filters.py as a preprocessor (on the flattened RGB pixels)."""
    def run(image: Image.Image, options: BaseModel, estimators, field: str) -> np.ndarray:
        return function(_flatten(image), options)
    return run


# --------------------------------------------------------------------------------------------
# Registry


DEPTH, SEGMENTATION = "depth_estimator", "segmentation_estimator"  # the settings naming each estimator


@dataclass(frozen=True)
class Preprocessor:
    name: str
    description: str
    options: type[BaseModel]
    estimator: str | None  # the setting naming the estimator it runs (DEPTH, SEGMENTATION), None: model-free
    run: Callable[..., np.ndarray]

    @property
    def needs_estimator(self) -> bool:
        return self.estimator is not None

    def describe(self) -> dict[str, Any]:
        """For capabilities: name, description, the estimator setting it needs (if any), options schema."""
        return {"name": self.name, "description": self.description, "needs_estimator": self.needs_estimator,
                "estimator": self.estimator, "options": self.options.model_json_schema()}


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", "The image as it is, as RGB: for images that already are control maps.", NoOptions, None, _none),
    Preprocessor("invert", "Negative of the image: a black-on-white drawing becomes the white-on-black lines the "
                 "line ControlNets (canny, lineart, scribble) expect.", NoOptions, None, _invert),
    Preprocessor("canny", "Canny edges (OpenCV), white on black: for canny ControlNets.", CannyOptions, None, _canny),
    Preprocessor("scribble_xdog", "Model-free scribble (sd-webui-controlnet's scribble_xdog): thresholded difference "
                 "of Gaussians, white strokes on black: for scribble ControlNets.", XdogOptions, None, _scribble_xdog),
    Preprocessor("lineart_standard", "Model-free line art (sd-webui-controlnet's lineart_standard, not its neural "
                 "lineart): dark lines of the image as white on black, for lineart ControlNets; best on drawings "
                 "and renders with dark outlines.", NoOptions, None, _lineart_standard),
    Preprocessor("depth", "Monocular depth from the server's depth estimator (--depth-estimator): near = white, "
                 "far = black, normalised over the image: for depth ControlNets.", NoOptions, DEPTH, _depth),
    Preprocessor("normal", "Surface normals from the estimated depth's gradients (as sd-webui-controlnet's "
                 "normal_midas), in ControlNet 1.1's normal colours (blue = facing the viewer, red = left, "
                 "green = up): for normal ControlNets.", NormalOptions, DEPTH, _normal),
    Preprocessor("segmentation", "Semantic segmentation from the server's segmentation estimator "
                 "(--segmentation-estimator, an ADE20K model), each class in its ADE20K colour: for segmentation "
                 "ControlNets.", NoOptions, SEGMENTATION, _segmentation),
    Preprocessor("tile_resample", "The image, shrunk by `down_sampling_rate` (area average): for tile ControlNets "
                 "(detail and upscaling); the map comes back smaller and is fitted to the generation size.",
                 filters.TileResampleOptions, None, _filter(filters.tile_resample)),
    Preprocessor("blur_gaussian", "The image blurred with a Gaussian of `sigma` pixels: for tile / blur ControlNets.",
                 filters.BlurOptions, None, _filter(filters.blur_gaussian)),
    Preprocessor("threshold", "White where the darkest channel is above `threshold`, black elsewhere.",
                 filters.ThresholdOptions, None, _filter(filters.threshold)),
    Preprocessor("binary", "Dark parts white, light parts black, cut at `threshold` on the grey image (0: Otsu's "
                 "threshold): a drawing's strokes as white lines, for scribble ControlNets.",
                 filters.BinaryOptions, None, _filter(filters.binary)),
    Preprocessor("color_grid", "A grid of the image's average colours (cells of `cell` pixels): for the T2I colour "
                 "adapter and colour-guiding ControlNets.", filters.ColorGridOptions, None, _filter(filters.color_grid)),
    Preprocessor("shuffle", "The image's content shuffled by a smooth random warp (seeded: `seed`, else the "
                 "generation's seed): for the shuffle ControlNet.", filters.ShuffleOptions, None,
                 _filter(filters.shuffle)),
    Preprocessor("recolor_luminance", "Grey image of the lightness (CIE L*), gamma-corrected: for recolor "
                 "ControlNets.", filters.RecolorOptions, None, _filter(filters.recolor_luminance)),
    Preprocessor("recolor_intensity", "Grey image of the HSV value (brightest channel), gamma-corrected: for recolor "
                 "ControlNets.", filters.RecolorOptions, None, _filter(filters.recolor_intensity)),
)}


def describe_all() -> list[dict[str, Any]]:
    return [p.describe() for p in PREPROCESSORS.values()]


def available(settings: "Settings") -> list[str]:
    """The preprocessors this server can run: those that need an estimator only when one is set."""
    return [p.name for p in PREPROCESSORS.values() if p.estimator is None or getattr(settings, p.estimator)]


def lookup(name: str, *, field: str = "preprocessor") -> Preprocessor:
    preprocessor = PREPROCESSORS.get(name) if isinstance(name, str) else None
    if preprocessor is None:
        raise InvalidRequest(f"unknown preprocessor {name!r}: one of {', '.join(PREPROCESSORS)}", field=field)
    return preprocessor


def parse_options(name: str, options: Mapping[str, Any] | BaseModel | None = None, *, field: str = "preprocessor",
                  options_field: str | None = None) -> BaseModel:
    """The validated options of preprocessor `name` (cheap, no model: usable at submit time).
    Errors are InvalidRequest naming `options_field` (default `<field>_options`) and the option."""
    model = lookup(name, field=field).options
    options_field = options_field or f"{field}_options"
    if isinstance(options, model):
        return options
    if isinstance(options, BaseModel):
        options = options.model_dump(exclude_unset=True)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InvalidRequest(f"{options_field}: preprocessor options must be an object", field=options_field)
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        raise error_from_validation(exc, prefix=options_field) from None


def preprocess(name: str, image: Image.Image, *, options: Mapping[str, Any] | BaseModel | None = None,
               estimators: "EstimatorCache | None" = None, field: str = "preprocessor",
               options_field: str | None = None, seed: int | None = None) -> Image.Image:
    """Run preprocessor `name` on `image`; an RGB image of the same size comes back (tile_resample:
    the down-sampled image).

    `estimators` is needed by `depth` and `normal` only; `seed` (the generation's) by the random
    ones (`shuffle`) when their options name none. Errors are typed LatentBridgeErrors naming
    `field` (unknown name, no or failed depth estimator, bad image) or `options_field` (options)."""
    preprocessor = lookup(name, field=field)
    parsed = parse_options(name, options, field=field, options_field=options_field)
    if "seed" in type(parsed).model_fields and parsed.seed is None and seed is not None:
        parsed = parsed.model_copy(update={"seed": seed})
    image = _checked(image, field)
    result = preprocessor.run(image, parsed, estimators, field)
    if result.ndim == 2:
        result = np.repeat(result[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(result, dtype=np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# Input images


def _checked(image: Any, field: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise BadImage(f"{field}: expected an image, got {type(image).__name__}", field=field)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadImage(f"{field}: the image has an empty size {width}x{height}", field=field)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{field}: the image cannot be read ({exc})", field=field) from None
    return image


def _flatten_image(image: Image.Image) -> Image.Image:
    """RGB, transparent parts over white (as sd-webui-controlnet's HWC3 does for detector inputs)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _flatten(image: Image.Image) -> np.ndarray:
    return np.asarray(_flatten_image(image))
