"""Read the uncompressed OpenEXR files Blender writes for a multi-pass render (numpy, no bpy).

Blender can save a render with all its passes as one multilayer EXR, but its Python API gives
no access to the passes of a loaded multilayer image, and the OpenImageIO module Blender ships
is not importable everywhere the add-on runs (it is missing from `bpy` as a module). So the
add-on writes the file uncompressed (codec NONE, 32-bit float) and reads it here: scanline
images, single- or multi-part, FLOAT / HALF / UINT channels. Anything else (compression, tiles,
deep data, subsampling) is refused with a clear `ExrError`.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = 20000630
_TILED, _DEEP, _MULTIPART = 0x200, 0x800, 0x1000
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class ExrError(ValueError):
    """An EXR this reader cannot read; the message says why."""


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _header(data: bytes, pos: int) -> tuple[dict[str, tuple[str, bytes]], int]:
    attrs: dict[str, tuple[str, bytes]] = {}
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        attrs[name] = (kind, data[pos : pos + size])
        pos += size
    return attrs, pos + 1


def _channels(raw: bytes) -> list[tuple[str, np.dtype]]:
    out, pos = [], 0
    while raw[pos] != 0:
        name, pos = _cstring(raw, pos)
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", raw, pos)
        pos += 16
        if pixel_type not in _PIXEL_TYPES:
            raise ExrError(f"channel {name!r} has an unknown pixel type {pixel_type}")
        if (x_sampling, y_sampling) != (1, 1):
            raise ExrError(f"channel {name!r} is subsampled, which this reader does not support")
        out.append((name, _PIXEL_TYPES[pixel_type]))
    return out


def read_exr(data: bytes) -> dict[str, np.ndarray]:
    """Every channel of an uncompressed scanline EXR as a float32 (height, width) array, top row
    first, keyed by its full name (e.g. "ViewLayer.Depth.Z")."""
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ExrError("not an OpenEXR file")
    (version,) = struct.unpack_from("<i", data, 4)
    if version & (_TILED | _DEEP):
        raise ExrError("tiled or deep EXR files are not supported (write scanlines)")
    multipart = bool(version & _MULTIPART)
    try:
        headers, pos = [], 8
        while True:
            header, pos = _header(data, pos)
            headers.append(header)
            if not multipart or data[pos] == 0:
                pos += 1 if multipart else 0
                break
        parts = []
        for header in headers:
            if header.get("compression", ("", b"\0"))[1] != b"\0":
                raise ExrError("the EXR is compressed; write it with codec NONE")
            if header.get("type", ("", b"scanlineimage"))[1].rstrip(b"\0") != b"scanlineimage":
                raise ExrError("only scanline EXR parts are supported")
            x0, y0, x1, y1 = struct.unpack("<4i", header["dataWindow"][1])
            width, height = x1 - x0 + 1, y1 - y0 + 1
            count = struct.unpack("<i", header["chunkCount"][1])[0] if multipart else height
            offsets = np.frombuffer(data, "<u8", count, pos)
            pos += 8 * count
            parts.append((_channels(header["channels"][1]), y0, width, height, offsets))
    except (KeyError, IndexError, struct.error) as exc:
        raise ExrError(f"damaged EXR header ({exc})") from exc
    buffer = np.frombuffer(data, np.uint8)
    out: dict[str, np.ndarray] = {}
    for number, (channels, y0, width, height, offsets) in enumerate(parts):
        if len(offsets) != height:
            raise ExrError("the EXR has more than one scanline per block: it is compressed")
        row_bytes = sum(width * dtype.itemsize for _, dtype in channels)
        lead = 4 if multipart else 0  # a multi-part chunk starts with its part number
        starts = offsets.astype(np.int64)
        if starts.max(initial=0) + lead + 8 + row_bytes > len(data):
            raise ExrError("the EXR file is truncated")
        head = buffer[(starts[:, None] + np.arange(lead + 8)).reshape(-1)].reshape(height, lead + 8)
        ys = head[:, lead : lead + 4].copy().view("<i4")[:, 0] - y0
        sizes = head[:, lead + 4 :].copy().view("<i4")[:, 0]
        if multipart and (head[:, :4].copy().view("<i4")[:, 0] != number).any():
            raise ExrError("an EXR chunk belongs to another part")
        if (sizes != row_bytes).any() or sorted(ys.tolist()) != list(range(height)):
            raise ExrError("unexpected EXR scanline layout (compressed or damaged)")
        rows = np.empty((height, row_bytes), np.uint8)
        for y, start in zip(ys.tolist(), (starts + lead + 8).tolist()):
            rows[y] = buffer[start : start + row_bytes]
        col = 0
        for name, dtype in channels:
            n = width * dtype.itemsize
            out[name] = rows[:, col : col + n].copy().view(dtype).astype(np.float32)
            col += n
    return out
