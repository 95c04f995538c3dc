"""Images as A1111 sends them: base64 (with or without a data-URL prefix) in, PIL out; A1111's
mask, resize and inpainting-fill conventions."""

from __future__ import annotations

import base64
import binascii

import numpy as np
from PIL import Image, ImageOps

from ... import images as image_utils
from ...protocol import BadImage, LatentBridgeError, Unsupported

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
