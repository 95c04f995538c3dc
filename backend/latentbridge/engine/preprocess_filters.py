"""The model-free image filters among the preprocessors (tile, blur, threshold, binary, colour grid,
content shuffle, recolor), written as sd-webui-controlnet computes them, with OpenCV.

Each filter takes the input as an RGB uint8 array (transparency already over white) and its
validated options, and returns a uint8 array (H, W) or (H, W, 3). All keep the input's size except
`tile_resample`, which returns the down-sampled image (the ControlNet's map is fitted to the
generation size afterwards, as the extension fits it). preprocess.py registers them;
docs/preprocessors.md lists their conventions and the extension's files they follow.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..protocol import MAX_SEED


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo must not silently fall back to a default


class TileResampleOptions(_Options):
    down_sampling_rate: float = Field(1.0, ge=1.0, le=8.0, description="Shrink the image by this factor (area "
                                      "average); below 1.1 the image is kept as it is (sd-webui-controlnet's "
                                      "tile_resample: default 1, range 1-8)")


class BlurOptions(_Options):
    sigma: float = Field(9.0, ge=0.01, le=64.0, description="Standard deviation of the Gaussian in pixels "
                         "(sd-webui-controlnet's blur_gaussian: default 9, range 0.01-64)")


class ThresholdOptions(_Options):
    threshold: int = Field(127, ge=0, le=255, description="A pixel whose darkest channel is above this turns "
                           "white, the rest black (sd-webui-controlnet's threshold: default 127)")


class BinaryOptions(_Options):
    threshold: int = Field(0, ge=0, le=255, description="Grey levels at or below this turn white, the rest black "
                           "(dark strokes become white lines); 0 or 255: Otsu's threshold, chosen from the "
                           "image (sd-webui-controlnet's binary: default 0)")


class ColorGridOptions(_Options):
    cell: int = Field(64, ge=1, le=1024, description="Side of a grid cell in pixels: each cell holds the "
                      "image's average colour there (sd-webui-controlnet's t2ia_color_grid uses 64)")


class ShuffleOptions(_Options):
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the random warp; absent: the "
                             "generation's seed (0 where there is none, e.g. a plain detect call)")


class RecolorOptions(_Options):
    gamma: float = Field(1.0, ge=0.1, le=2.0, description="The grey level (0-1) is raised to this power: above 1 "
                         "darker mid-tones, below 1 lighter (sd-webui-controlnet's recolor Gamma Correction)")


def tile_resample(pixels: np.ndarray, options: TileResampleOptions) -> np.ndarray:
    import cv2

    rate = options.down_sampling_rate
    if rate < 1.1:  # the extension's rule: a rate this close to 1 keeps the image
        return pixels
    height, width = pixels.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def blur_gaussian(pixels: np.ndarray, options: BlurOptions) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(pixels, (0, 0), options.sigma)


def threshold(pixels: np.ndarray, options: ThresholdOptions) -> np.ndarray:
    return np.where(pixels.min(axis=2) > options.threshold, 255, 0).astype(np.uint8)


def binary(pixels: np.ndarray, options: BinaryOptions) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    if options.threshold in (0, 255):
        _, result = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, result = cv2.threshold(grey, options.threshold, 255, cv2.THRESH_BINARY_INV)
    return result


def color_grid(pixels: np.ndarray, options: ColorGridOptions) -> np.ndarray:
    """The colour palette map of the T2I colour adapter: the image shrunk to one pixel per cell
    (bicubic, as the extension) and blown up again without interpolation."""
    import cv2

    height, width = pixels.shape[:2]
    grid = (max(1, round(width / options.cell)), max(1, round(height / options.cell)))
    small = cv2.resize(pixels, grid, interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def shuffle(pixels: np.ndarray, options: ShuffleOptions) -> np.ndarray:
    """Content shuffle (ControlNet 1.1's shuffle model): every pixel is fetched from a place given by
    two smooth random fields, one per axis, each spanning the whole image. The extension draws them
    from the global random state; here they come from `options.seed`, so a map can be made again."""
    import cv2

    height, width = pixels.shape[:2]
    rng = np.random.default_rng(options.seed or 0)
    source_x = _smooth_noise(rng, height, width) * np.float32(width - 1)
    source_y = _smooth_noise(rng, height, width) * np.float32(height - 1)
    return cv2.remap(pixels, source_x, source_y, cv2.INTER_LINEAR)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, period: int = 256) -> np.ndarray:
    """Uniform noise on a coarse grid (one knot per `period` px, the extension's 256), upsampled
    bicubically past the image's borders, cropped, then stretched to 0..1."""
    import cv2

    knots = rng.uniform(0.0, 1.0, size=(height // period + 2, width // period + 2)).astype(np.float32)
    field = cv2.resize(knots, (width + 2 * period, height + 2 * period), interpolation=cv2.INTER_CUBIC)
    field = field[period:period + height, period:period + width]
    low, high = float(field.min()), float(field.max())
    return (field - low) / (high - low) if high > low else np.zeros_like(field)


def recolor_luminance(pixels: np.ndarray, options: RecolorOptions) -> np.ndarray:
    """CIE L* lightness (OpenCV's 8-bit Lab L channel), gamma-corrected: for recolor ControlNets."""
    import cv2

    return _gamma(cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)[:, :, 0], options.gamma)


def recolor_intensity(pixels: np.ndarray, options: RecolorOptions) -> np.ndarray:
    """HSV value (the brightest channel), gamma-corrected: for recolor ControlNets."""
    import cv2

    return _gamma(cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)[:, :, 2], options.gamma)


def _gamma(grey: np.ndarray, gamma: float) -> np.ndarray:
    corrected = (grey.astype(np.float32) / 255.0) ** np.float32(gamma)
    return (corrected * 255.0).clip(0, 255).astype(np.uint8)
