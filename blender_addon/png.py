"""A small PNG encoder (numpy + zlib) for pixels that exist only in memory (no bpy).

Blender can write images to files, but an image painted in the Image Editor or a mask computed
from pixels exists only in memory; encoding it here avoids a temp file and Blender's colour
management changing the values on the way out.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels → PNG colour type (grey, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, level: int = 3) -> bytes:
    """`pixels`: uint8 array (height, width) or (height, width, 1|3|4), top row first."""
    if pixels.dtype != np.uint8:
        raise ValueError("encode_png needs uint8 pixels")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    if channels not in _COLOR_TYPES:
        raise ValueError(f"encode_png cannot write {channels} channels")
    # Filter type 0 (None) on every row: a zero byte before each scanline.
    rows = np.empty((height, 1 + width * channels), np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = pixels.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, without decoding it."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def float_to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    v = np.clip(values, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1.0 / 2.4) - 0.055)
