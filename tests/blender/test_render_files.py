"""The uncompressed OpenEXR / Targa readers (no bpy) against files written here by the spec:
single- and multi-part EXR, float/half/uint channels, a data window, both Targa row orders."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import lb_blender

rf = lb_blender.source_module("render_files")


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _header(channels: dict[str, np.ndarray], window: tuple[int, int, int, int], part: str | None, compression: int = 0) -> bytes:
    types = {np.dtype("<u4"): 0, np.dtype("<f2"): 1, np.dtype("<f4"): 2}
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", types[a.dtype], 0, 1, 1) for n, a in sorted(channels.items())) + b"\0"
    out = _attr("channels", "chlist", chlist)
    out += _attr("compression", "compression", bytes([compression]))
    out += _attr("dataWindow", "box2i", struct.pack("<iiii", *window))
    out += _attr("displayWindow", "box2i", struct.pack("<iiii", *window))
    out += _attr("lineOrder", "lineOrder", b"\0")
    out += _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
    if part is not None:
        height = window[3] - window[1] + 1
        out += _attr("name", "string", part.encode())
        out += _attr("type", "string", b"scanlineimage")
        out += _attr("chunkCount", "int", struct.pack("<i", height))
    return out + b"\0"


def write_exr(parts: list[dict[str, np.ndarray]], origin: tuple[int, int] = (0, 0), compression: int = 0) -> bytes:
    """An uncompressed scanline OpenEXR, multi-part when given several parts."""
    multipart = len(parts) > 1
    x0, y0 = origin
    heads, windows = [], []
    for n, channels in enumerate(parts):
        h, w = next(iter(channels.values())).shape
        window = (x0, y0, x0 + w - 1, y0 + h - 1)
        windows.append((h, w))
        heads.append(_header(channels, window, f"part{n}" if multipart else None, compression))
    data = bytearray(b"\x76\x2f\x31\x01" + struct.pack("<I", 2 | (0x1000 if multipart else 0)))
    data += b"".join(heads) + (b"\0" if multipart else b"")
    table_at = len(data)
    data += bytes(8 * sum(h for h, _ in windows))
    offsets = []
    for n, channels in enumerate(parts):
        h, _w = windows[n]
        for y in range(h):
            row = b"".join(channels[name][y].tobytes() for name in sorted(channels))
            offsets.append(len(data))
            data += (struct.pack("<i", n) if multipart else b"") + struct.pack("<ii", y0 + y, len(row)) + row
    data[table_at : table_at + 8 * len(offsets)] = np.array(offsets, "<u8").tobytes()
    return bytes(data)


def test_single_part_exr_round_trips_every_pixel_type():
    rng = np.random.default_rng(0)
    channels = {
        "A.Depth.Z": rng.random((5, 7)).astype("<f4") * 100,
        "A.Normal.X": rng.random((5, 7)).astype("<f2"),
        "A.ID.X": rng.integers(0, 1000, (5, 7)).astype("<u4"),
    }
    out = rf.read_exr(write_exr([channels], origin=(3, -2)))
    assert set(out) == set(channels)
    for name, values in channels.items():
        assert out[name].dtype == values.dtype and (out[name] == values).all()


def test_multi_part_exr_reads_every_part():
    a = {"L.Combined.R": np.arange(12, dtype="<f4").reshape(3, 4), "L.Combined.G": np.ones((3, 4), "<f4")}
    b = {"L.Depth.Z": np.full((3, 4), 1e10, "<f4")}
    out = rf.read_exr(write_exr([a, b]))
    assert (out["L.Combined.R"] == a["L.Combined.R"]).all() and (out["L.Depth.Z"] == 1e10).all()
    assert out["L.Combined.R"][0, 0] == 0 and out["L.Combined.R"][2, 3] == 11  # top row first


def test_exr_errors_are_typed():
    good = write_exr([{"Z": np.zeros((2, 2), "<f4")}])
    with pytest.raises(rf.RenderFileError, match="not an OpenEXR"):
        rf.read_exr(b"\x89PNG....")
    with pytest.raises(rf.RenderFileError, match="compressed"):
        rf.read_exr(write_exr([{"Z": np.zeros((2, 2), "<f4")}], compression=3))
    with pytest.raises(rf.RenderFileError):
        rf.read_exr(good[: len(good) - 5])


def _tga(rgba: np.ndarray, top_down: bool, bits: int = 32) -> bytes:
    h, w = rgba.shape[:2]
    descriptor = (8 if bits == 32 else 0) | (0x20 if top_down else 0)
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, w, h, bits, descriptor)
    bgr = rgba[..., [2, 1, 0, 3]] if bits == 32 else rgba[..., [2, 1, 0]]
    rows = bgr if top_down else bgr[::-1]
    return header + rows.tobytes()


@pytest.mark.parametrize("top_down", [False, True])
@pytest.mark.parametrize("bits", [24, 32])
def test_tga_reads_both_row_orders(top_down, bits):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    out = rf.read_tga(_tga(rgba, top_down, bits))
    assert (out[..., :3] == rgba[..., :3]).all()
    assert (out[..., 3] == (rgba[..., 3] if bits == 32 else 255)).all()


def test_tga_errors_are_typed():
    with pytest.raises(rf.RenderFileError):
        rf.read_tga(b"short")
    rle = bytearray(_tga(np.zeros((2, 2, 4), np.uint8), True))
    rle[2] = 10
    with pytest.raises(rf.RenderFileError, match="uncompressed"):
        rf.read_tga(bytes(rle))
    with pytest.raises(rf.RenderFileError, match="truncated"):
        rf.read_tga(_tga(np.zeros((4, 4, 4), np.uint8), True)[:-3])
