"""Arrays into Blender's pixel layout, without bpy (so it runs on the worker thread).

`Image.pixels.foreach_set` takes flat float32 RGBA, bottom row first; the add-on's arrays are
(rows, columns, channels), top row first, uint8 (0..255) or float (0..1). Converting on the
worker leaves the main thread only the `foreach_set` itself.
"""

from __future__ import annotations

import numpy as np

from .png import float_to_uint8


def blender_rgba(values: np.ndarray) -> np.ndarray:
    """(h, w), (h, w, 1|3|4) uint8 or float pixels, top row first → flat float32 RGBA, bottom row
    first. Grey fills R, G and B; alpha is 1 unless given."""
    a = np.asarray(values)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"pixels must be (height, width[, 1|3|4]), got shape {a.shape}")
    height, width, channels = a.shape
    out = np.empty((height, width, 4), np.float32)
    flipped = a[::-1]
    if channels == 1:
        out[..., :3] = flipped
    else:
        out[..., :3] = flipped[..., :3]
    if a.dtype == np.uint8:
        out[..., 3] = flipped[..., 3] if channels == 4 else 255
        out *= np.float32(1.0 / 255.0)
    else:
        out[..., 3] = flipped[..., 3] if channels == 4 else 1.0
    return out.reshape(-1)


def box_reduce(values: np.ndarray, factor: int, *, how: str = "mean") -> np.ndarray:
    """Shrink (h, w[, C]) by an integer factor: the mean of each factor × factor block, its max
    (thin white lines must survive), or its centre pixel ("centre": exact colours, e.g. labels).
    uint8 stays uint8 (rounded)."""
    if factor <= 1:
        return values
    a = np.asarray(values)
    h, w = a.shape[0] // factor, a.shape[1] // factor
    if how == "centre":
        return np.ascontiguousarray(a[factor // 2 : h * factor : factor, factor // 2 : w * factor : factor])
    blocks = a[: h * factor, : w * factor].reshape(h, factor, w, factor, *a.shape[2:])
    if how == "max":
        return blocks.max(axis=(1, 3))
    if how != "mean":
        raise ValueError(f"box_reduce how must be 'mean', 'max' or 'centre', not {how!r}")
    mean = blocks.mean(axis=(1, 3), dtype=np.float64)
    return (mean + 0.5).astype(np.uint8) if a.dtype == np.uint8 else mean.astype(a.dtype)


def nearest_resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w[, C]) resized to (width, height) by nearest neighbour (masks, segmentation)."""
    width, height = size
    a = np.asarray(values)
    if a.shape[1] == width and a.shape[0] == height:
        return a
    rows = (np.arange(height) * a.shape[0] // height).clip(0, a.shape[0] - 1)
    cols = (np.arange(width) * a.shape[1] // width).clip(0, a.shape[1] - 1)
    return a[rows][:, cols]


def opaque_rgb(color: np.ndarray) -> np.ndarray:
    """A render's RGBA (uint8, or float 0..1) as uint8 RGB over black, as an RGB PNG of the
    render stores it."""
    rgba = np.asarray(color)
    if rgba.ndim != 3 or rgba.shape[2] not in (3, 4):
        raise ValueError(f"a colour image is (height, width, 3|4), got shape {rgba.shape}")
    if rgba.dtype == np.uint8:
        if rgba.shape[2] == 3 or (rgba[..., 3] == 255).all():
            return np.ascontiguousarray(rgba[..., :3])
        rgba = rgba.astype(np.float32) / np.float32(255.0)
    rgb = rgba[..., :3] * rgba[..., 3:4] if rgba.shape[2] == 4 else rgba[..., :3]
    return float_to_uint8(rgb)
