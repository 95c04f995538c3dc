"""Render passes out of one render (no bpy): a reader for the uncompressed multilayer OpenEXR
files Blender writes with `exr_codec = "NONE"`.

Blender-as-a-module gives no pixels for "Render Result", and its Python has no EXR library; but
`save_render` writes every pass of the render it just made into one multilayer EXR. Uncompressed
scanline EXR is a simple format (a header, a table of line offsets, then one block per line with
each channel's values in turn), so reading a pass back costs a few numpy calls and no second
render. Only what Blender writes is supported: scanline parts, no compression.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = 20000630
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class ExrError(ValueError):
    pass


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _attributes(data: bytes, pos: int) -> tuple[dict[str, tuple[str, bytes]], int]:
    attrs = {}
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        attrs[name] = (kind, data[pos:pos + size])
        pos += size
    return attrs, pos + 1


def _headers(data: bytes) -> tuple[list[dict[str, tuple[str, bytes]]], int, bool]:
    """(one attribute table per part, offset of the first line table, multi-part layout).
    Blender writes a multilayer EXR as one part per pass."""
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ExrError("not an OpenEXR file")
    flags = struct.unpack_from("<i", data, 4)[0] >> 8
    if flags & (0x2 | 0x8):  # tiled, deep
        raise ExrError("only scanline OpenEXR files are supported")
    multipart = bool(flags & 0x10)
    parts, pos = [], 8
    while True:
        attrs, pos = _attributes(data, pos)
        parts.append(attrs)
        if not multipart or data[pos] == 0:
            return parts, pos + (1 if multipart else 0), multipart


def _channels(raw: bytes) -> list[tuple[str, np.dtype]]:
    out, pos = [], 0
    while raw[pos] != 0:
        name, pos = _cstring(raw, pos)
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", raw, pos)
        pos += 16
        if (x_sampling, y_sampling) != (1, 1):
            raise ExrError(f"channel {name} is subsampled")
        out.append((name, _PIXEL_DTYPES[pixel_type]))
    return out


def read_channels(data: bytes) -> dict[str, np.ndarray]:
    """Every channel of the file as float32 arrays (height, width), top row first, keyed by its
    full name (`ViewLayer.Combined.R`, `ViewLayer.Object Index.X`, …)."""
    parts, pos, multipart = _headers(data)
    out: dict[str, np.ndarray] = {}
    layouts = []
    for attrs in parts:
        if attrs.get("compression", ("", b"\0"))[1][0] != 0:
            raise ExrError("the EXR is compressed; write it with exr_codec NONE")
        channels = _channels(attrs["channels"][1])
        xmin, ymin, xmax, ymax = struct.unpack("<iiii", attrs["dataWindow"][1])
        width, height = xmax - xmin + 1, ymax - ymin + 1
        layouts.append((channels, ymin, width, np.frombuffer(data, "<u8", count=height, offset=pos)))
        pos += 8 * height  # uncompressed: one line per chunk
        for name, _ in channels:
            out[name] = np.empty((height, width), np.float32)
    for channels, ymin, width, offsets in layouts:
        for offset in offsets:
            at = int(offset) + (4 if multipart else 0)  # multi-part chunks start with their part number
            y, _size = struct.unpack_from("<ii", data, at)
            at += 8
            for name, dtype in channels:
                out[name][y - ymin] = np.frombuffer(data, dtype, count=width, offset=at)
                at += width * dtype.itemsize
    return out


def find_pass(channels: dict[str, np.ndarray], *names: str) -> np.ndarray | None:
    """The first channel whose pass is one of `names` (e.g. "Object Index", "IndexOB")."""
    for full, values in channels.items():
        parts = full.split(".")
        if len(parts) >= 2 and parts[-2] in names:
            return values
    return None
