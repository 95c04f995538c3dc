"""Readers for the two uncompressed files `passes.py` has Blender write (bpy-free, numpy only).

Blender's Python has neither OpenEXR nor OpenImageIO bindings in every build (the `bpy` module
has none), and module-mode "Render Result" has no pixels. So the passes are saved as a
multilayer OpenEXR with compression NONE and 32-bit floats, and the colour as an uncompressed
Targa — both formats simple enough to read exactly with numpy, whatever Blender version wrote
them (single-part files, as Blender ≤ 4.x may write, and multi-part ones, as 4.x/5.x write).
"""

from __future__ import annotations

import struct

import numpy as np

_MAGIC = b"\x76\x2f\x31\x01"
_MULTIPART = 0x1000  # version-field flag bits (OpenEXR file layout spec)
_TILED = 0x200
_DEEP = 0x800
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class RenderFileError(ValueError):
    """A file that is not the uncompressed EXR/TGA these readers expect."""


def _header(data: bytes, pos: int) -> tuple[dict[str, tuple[str, bytes]], int]:
    attrs: dict[str, tuple[str, bytes]] = {}
    while True:
        end = data.index(b"\0", pos)
        name = data[pos:end].decode()
        pos = end + 1
        if not name:
            return attrs, pos
        end = data.index(b"\0", pos)
        kind = data[pos:end].decode()
        size = struct.unpack_from("<i", data, end + 1)[0]
        pos = end + 5
        attrs[name] = (kind, data[pos : pos + size])
        pos += size


def _channels(raw: bytes) -> list[tuple[str, np.dtype]]:
    out, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        name = raw[pos:end].decode()
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", raw, end + 1)
        if pixel_type not in _PIXEL_TYPES or (x_sampling, y_sampling) != (1, 1):
            raise RenderFileError(f"EXR channel {name!r}: unsupported pixel type or subsampling")
        out.append((name, _PIXEL_TYPES[pixel_type]))
        pos = end + 1 + 16
    return out


def read_exr(data: bytes) -> dict[str, np.ndarray]:
    """Every channel of an uncompressed scanline OpenEXR (single- or multi-part) as a
    (height, width) array, top row first, keyed by its full name ("ViewLayer.Depth.Z")."""
    if data[:4] != _MAGIC:
        raise RenderFileError("not an OpenEXR file")
    try:
        return _read_exr(data)
    except (struct.error, IndexError, ValueError, KeyError) as exc:
        if isinstance(exc, RenderFileError):
            raise
        raise RenderFileError(f"truncated or malformed OpenEXR file ({exc})") from exc


def _read_exr(data: bytes) -> dict[str, np.ndarray]:
    flags = struct.unpack_from("<I", data, 4)[0]
    if flags & (_TILED | _DEEP):
        raise RenderFileError("tiled or deep OpenEXR files are not supported")
    multipart = bool(flags & _MULTIPART)
    parts, pos = [], 8
    while True:
        attrs, pos = _header(data, pos)
        parts.append(attrs)
        if not multipart or data[pos] == 0:
            break
    if multipart:
        pos += 1  # the empty header that ends the list
    layouts = []
    for attrs in parts:
        if attrs["compression"][1] != b"\0":
            raise RenderFileError("compressed OpenEXR files are not supported (save with codec NONE)")
        if attrs.get("type", ("", b"scanlineimage"))[1].rstrip(b"\0") != b"scanlineimage":
            raise RenderFileError("only scanline OpenEXR parts are supported")
        x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
        width, height = x1 - x0 + 1, y1 - y0 + 1
        count = struct.unpack("<i", attrs["chunkCount"][1])[0] if "chunkCount" in attrs else height
        offsets = np.frombuffer(data, "<u8", count, pos)
        pos += 8 * count
        layouts.append((attrs, width, height, y0, offsets))
    channels: dict[str, np.ndarray] = {}
    prefix = 4 if multipart else 0  # multi-part chunks start with their part number
    for attrs, width, height, y0, offsets in layouts:
        chans = _channels(attrs["channels"][1])
        row_bytes = sum(width * dtype.itemsize for _, dtype in chans)
        rows = np.empty((height, row_bytes), np.uint8)
        for offset in offsets.tolist():
            y, size = struct.unpack_from("<ii", data, offset + prefix)
            if size != row_bytes or not 0 <= y - y0 < height:
                raise RenderFileError("unexpected OpenEXR chunk (one uncompressed scanline each expected)")
            start = offset + prefix + 8
            rows[y - y0] = np.frombuffer(data, np.uint8, row_bytes, start)
        column = 0
        for name, dtype in chans:  # channels are stored one after another within each scanline
            span = width * dtype.itemsize
            channels[name] = np.ascontiguousarray(rows[:, column : column + span]).view(dtype).reshape(height, width)
            column += span
    return channels


def read_tga(data: bytes) -> np.ndarray:
    """An uncompressed true-colour Targa (what Blender writes as TARGA_RAW) as uint8
    (height, width, 4) RGBA, top row first (opaque alpha for 24-bit files)."""
    if len(data) < 18:
        raise RenderFileError("not a Targa file")
    id_length, colormap_type, image_type = data[0], data[1], data[2]
    width, height, bits, descriptor = struct.unpack_from("<HHBB", data, 12)
    if colormap_type != 0 or image_type != 2 or bits not in (24, 32):
        raise RenderFileError("only uncompressed 24/32-bit true-colour Targa files are supported")
    channels = bits // 8
    start = 18 + id_length
    if len(data) < start + width * height * channels:
        raise RenderFileError("truncated Targa file")
    bgr = np.frombuffer(data, np.uint8, width * height * channels, start).reshape(height, width, channels)
    if not descriptor & 0x20:  # bit 5 clear: the first row stored is the bottom one
        bgr = bgr[::-1]
    if descriptor & 0x10:  # bit 4 set: the first pixel stored is the right one
        bgr = bgr[:, ::-1]
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., :3] = bgr[..., 2::-1]
    rgba[..., 3] = bgr[..., 3] if channels == 4 else 255
    return rgba


def find_pass(channels: dict[str, np.ndarray], *names: str) -> np.ndarray | None:
    """The first channel whose pass is one of `names` ("Object Index" in Blender 5, "IndexOB" in 4),
    from `read_exr`'s "ViewLayer.<pass>.<channel>" keys."""
    for full, values in channels.items():
        parts = full.split(".")
        if len(parts) >= 2 and parts[-2] in names:
            return values
    return None
