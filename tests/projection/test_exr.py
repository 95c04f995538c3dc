"""The add-on's EXR reader (render_files.read_exr), on files written here to the OpenEXR layout (single- and
multi-part, FLOAT and HALF) and on the errors it must give."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import synthetic as syn

exr = syn.lb_blender.source_module("render_files")
MAGIC = 20000630  # OpenEXR's magic number


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _header(names, types, width, height, *, compression=0, part_name=None, chunks=None) -> bytes:
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", t, 0, 1, 1) for n, t in zip(names, types)) + b"\0"
    box = struct.pack("<4i", 0, 0, width - 1, height - 1)
    out = _attr("channels", "chlist", chlist) + _attr("compression", "compression", bytes([compression]))
    if chunks is not None:
        out += _attr("chunkCount", "int", struct.pack("<i", chunks))
    out += _attr("dataWindow", "box2i", box) + _attr("displayWindow", "box2i", box) + _attr("lineOrder", "lineOrder", b"\0")
    if part_name is not None:
        out += _attr("name", "string", part_name.encode()) + _attr("type", "string", b"scanlineimage")
    return out + b"\0"


def _rows(arrays, types) -> list[bytes]:
    height = arrays[0].shape[0]
    dtypes = {1: "<f2", 2: "<f4", 0: "<u4"}
    return [b"".join(a[y].astype(dtypes[t]).tobytes() for a, t in zip(arrays, types)) for y in range(height)]


def write_exr(parts, *, multipart=False, reverse=False, compression=0) -> bytes:
    """parts: [(part name, {channel: (array, pixel type)})]; rows written in reverse order when asked."""
    headers, bodies = b"", []
    for i, (part, chans) in enumerate(parts):
        names = sorted(chans)
        arrays = [np.asarray(chans[n][0]) for n in names]
        types = [chans[n][1] for n in names]
        h, w = arrays[0].shape
        headers += _header(names, types, w, h, compression=compression, part_name=part if multipart else None, chunks=h if multipart else None)
        bodies.append((i, _rows(arrays, types)))
    if multipart:
        headers += b"\0"
    start = 8 + len(headers) + 8 * sum(len(r) for _, r in bodies)
    offsets, chunks, pos = [], b"", start
    for i, rows in bodies:
        order = list(range(len(rows)))[::-1] if reverse else list(range(len(rows)))
        part_offsets = [0] * len(rows)
        for y in order:
            chunk = (struct.pack("<i", i) if multipart else b"") + struct.pack("<ii", y, len(rows[y])) + rows[y]
            part_offsets[y] = pos
            chunks += chunk
            pos += len(chunk)
        offsets += part_offsets
    version = 2 | (0x1000 | 0x400 if multipart else 0)
    return struct.pack("<ii", MAGIC, version) + headers + struct.pack(f"<{len(offsets)}Q", *offsets) + chunks


def _data(h=5, w=7):
    rng = np.random.default_rng(2)
    return rng.normal(size=(h, w)).astype(np.float32), rng.normal(size=(h, w)).astype(np.float32)


def test_single_part_float_and_half():
    a, b = _data()
    data = write_exr([("", {"R": (a, 2), "Z": (b, 1)})])
    out = exr.read_exr(data)
    np.testing.assert_array_equal(out["R"], a)
    np.testing.assert_array_equal(out["Z"], b.astype(np.float16).astype(np.float32))


def test_multi_part_as_blender_writes_it_rows_in_any_order():
    a, b = _data()
    c = np.arange(35, dtype=np.uint32).reshape(5, 7)
    parts = [("ViewLayer.Combined", {"ViewLayer.Combined.R": (a, 2), "ViewLayer.Combined.G": (b, 2)}),
             ("ViewLayer.Depth", {"ViewLayer.Depth.Z": (c, 0)})]
    out = exr.read_exr(write_exr(parts, multipart=True, reverse=True))
    np.testing.assert_array_equal(out["ViewLayer.Combined.R"], a)
    np.testing.assert_array_equal(out["ViewLayer.Combined.G"], b)
    np.testing.assert_array_equal(out["ViewLayer.Depth.Z"], c.astype(np.float32))


def test_unreadable_files_are_clear_errors():
    a, _ = _data()
    with pytest.raises(exr.RenderFileError, match="not an OpenEXR"):
        exr.read_exr(b"\x89PNG....")
    with pytest.raises(exr.RenderFileError, match="compressed"):
        exr.read_exr(write_exr([("", {"R": (a, 2)})], compression=3))
    data = write_exr([("", {"R": (a, 2)})])
    with pytest.raises(exr.RenderFileError, match="truncated"):
        exr.read_exr(data[:-10])
    tiled = data[:4] + struct.pack("<i", 2 | 0x200) + data[8:]
    with pytest.raises(exr.RenderFileError, match="tiled"):
        exr.read_exr(tiled)
    with pytest.raises(exr.RenderFileError, match="truncated or malformed"):
        exr.read_exr(data[:40])
