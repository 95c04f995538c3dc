import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from latentbridge import images as im
from latentbridge.protocol import BadImage, GenerationRequest, InvalidRequest, LoraSpec, OutpaintExtent, TooLarge


def _rgb(w=40, h=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png(image, **kw):
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --- decoding ---------------------------------------------------------------------------------


def test_decode_roundtrip_modes():
    img = _rgb()
    out = im.decode_image(_png(img))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img))
    assert im.decode_image(_png(img.convert("RGBA"))).mode == "RGBA"
    assert im.decode_image(_png(img.convert("L"))).mode == "L"
    assert im.decode_image(_png(img.convert("P"))).mode == "RGB"
    assert im.decode_image(_png(img.convert("1"))).mode == "L"
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(im.decode_image(_png(sixteen))).min() == 255
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    assert im.decode_image(buf.getvalue()).size == img.size


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 64, bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), b"GIF89a"],
    ids=["empty", "zeros", "random", "gif-header-only"],
)
def test_decode_garbage_is_bad_image(data):
    with pytest.raises(BadImage) as info:
        im.decode_image(data)
    assert info.value.code.value == "bad_image"


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_decode_truncated_png_is_bad_image(cut):
    data = _png(_rgb(64, 64))
    with pytest.raises(BadImage):
        im.decode_image(data[: int(len(data) * cut)])


def _bomb(side):
    # A PNG header that claims side x side pixels, followed by almost no data: decoding the
    # pixels would fail as truncated, so TooLarge proves the header alone was checked.
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return header + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _chunk(b"IEND", b"")


def test_decode_oversize_is_refused_from_the_header():
    with pytest.raises(TooLarge) as info:
        im.decode_image(_bomb(5000), max_pixels=4096 * 4096)
    assert "5000x5000" in info.value.message
    with pytest.raises(BadImage):  # same data under the limit: it is the truncated data that fails
        im.decode_image(_bomb(5000), max_pixels=5000 * 5000)
    with pytest.raises(TooLarge):  # beyond PIL's own bomb limit, even without max_pixels
        im.decode_image(_bomb(40000))
    with pytest.raises(TooLarge):
        im.decode_image(_png(_rgb(100, 100)), max_pixels=100 * 99)
    assert im.decode_image(_png(_rgb(100, 100)), max_pixels=100 * 100).size == (100, 100)


# --- PNG metadata -----------------------------------------------------------------------------


def _request(**kw):
    base = dict(
        mode="img2img", prompt="weathered bronze, verdigris\nsecond line", negative_prompt="blurry",
        seed=7, steps=4, guidance=7.5, strength=0.6, width=64, height=64, sampler="dpmpp_2m_karras",
        batch_size=2, seamless="xy", model="tiny", loras=[LoraSpec(name="a.safetensors", weight=0.8)],
    )
    base.update(kw)
    return GenerationRequest(**base)


def test_png_request_roundtrip_bytes_and_path(tmp_path):
    req = _request(batch_size=1)
    data = im.encode_png(_rgb(), req)
    assert im.read_png_request(data) == req
    path = tmp_path / "r.png"
    path.write_bytes(data)
    assert im.read_png_request(path) == req
    assert im.read_png_request(str(path)) == req
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(_rgb()))


def test_png_with_seed_describes_that_one_image():
    req = _request()
    back = im.read_png_request(im.encode_png(_rgb(), req, seed=8))
    assert back == req.model_copy(update={"seed": 8, "batch_size": 1})


def test_png_without_metadata():
    assert im.read_png_request(_png(_rgb())) is None
    assert im.read_png_text(_png(_rgb())) == {}
    buf = io.BytesIO()
    _rgb().save(buf, format="JPEG")
    assert im.read_png_request(buf.getvalue()) is None


def test_png_bad_metadata_and_files(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("latentbridge", "{not json")
    with pytest.raises(BadImage):
        im.read_png_request(_png(_rgb(), pnginfo=info))
    info = PngImagePlugin.PngInfo()
    info.add_text("latentbridge", '{"steps": 0}')
    with pytest.raises(InvalidRequest) as err:
        im.read_png_request(_png(_rgb(), pnginfo=info))
    assert err.value.field == "steps"
    with pytest.raises(BadImage):
        im.read_png_request(tmp_path / "missing.png")
    with pytest.raises(BadImage):
        im.read_png_request(b"not an image")


def test_a1111_parameters_text():
    text = im.a1111_parameters(_request(), 8)
    prompt1, prompt2, negative, fields = text.split("\n")
    # LoRAs travel in the prompt as A1111 writes them (<lora:name:weight>).
    assert (prompt1, prompt2) == ("weathered bronze, verdigris", "second line <lora:a:0.8>")
    assert negative == "Negative prompt: blurry"
    assert fields.startswith("Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 8, "
                             "Size: 64x64, Model: tiny, ")
    assert "Denoising strength: 0.6" in fields
    txt = im.a1111_parameters(GenerationRequest(prompt="cat", seed=1, width=512, height=512), 1)
    assert txt == "cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Version: latentbridge"
    assert im.read_png_text(im.encode_png(_rgb(), _request(), seed=9))["parameters"] == im.a1111_parameters(
        _request(seed=9, batch_size=1), 9
    )


def test_encode_preview_caps_size_and_formats():
    img = _rgb(400, 100)
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF"), ("png", b"\x89PNG")):
        data = im.encode_preview(img, 128, fmt)
        assert data.startswith(magic)
        assert Image.open(io.BytesIO(data)).size == (128, 32)
    assert Image.open(io.BytesIO(im.encode_preview(_rgb(20, 10), 128))).size == (20, 10)
    assert im.encode_preview(img.convert("RGBA"), 64).startswith(b"\xff\xd8")
    with pytest.raises(InvalidRequest):
        im.encode_preview(img, 128, "bmp")


# --- masks ------------------------------------------------------------------------------------


def _square_mask(size=(64, 64), box=(16, 16, 32, 32)):
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def test_prepare_mask_resize_invert_blur():
    m = _square_mask()
    out = im.prepare_mask(m, (128, 128), blur=0, invert=False)
    assert out.mode == "L" and out.size == (128, 128)
    a = np.asarray(out)
    assert a[48, 48] == 255 and a[0, 0] == 0
    inv = np.asarray(im.prepare_mask(m, (64, 64), blur=0, invert=True))
    assert np.array_equal(inv, 255 - np.asarray(m))
    soft = np.asarray(im.prepare_mask(m, (64, 64), blur=4, invert=False))
    # Feathered: a ramp across the edge instead of a step, the centre and far corner unchanged.
    assert 0 < soft[24, 15] < 255 and 0 < soft[24, 16] < 255
    assert soft[24, 24] > 200 and soft[0, 0] == 0
    assert im.prepare_mask(m.convert("RGB"), (64, 64), 0, False).mode == "L"


def test_prepare_mask_alpha_rule():
    # A stroke layer on transparency: alpha is the mask, whatever the colour under it.
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (8, 8, 16, 16))  # black but opaque stroke
    a = np.asarray(im.prepare_mask(rgba, (32, 32), 0, False))
    assert a[10, 10] == 255 and a[0, 0] == 0
    # Fully opaque RGBA: alpha carries nothing, the luminance is used.
    opaque = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (8, 8, 16, 16))
    a = np.asarray(im.prepare_mask(opaque, (32, 32), 0, False))
    assert a[10, 10] == 255 and a[0, 0] == 0
    la = Image.merge("LA", [Image.new("L", (8, 8), 255), Image.new("L", (8, 8), 0)])
    assert np.asarray(im.prepare_mask(la, (8, 8), 0, False)).max() == 0


def test_mask_crop_box():
    m = _square_mask((200, 100), (50, 40, 60, 50))  # 10x10 mask
    assert im.mask_crop_box(Image.new("L", (64, 64), 0), 8, 1.0) is None
    assert im.mask_crop_box(m, 0, 1.0, multiple=1) == (50, 40, 60, 50)
    assert im.mask_crop_box(m, 5, 1.0, multiple=1) == (45, 35, 65, 55)
    left, top, right, bottom = im.mask_crop_box(m, 5, 2.0, multiple=8)  # wide working size
    assert (right - left, bottom - top) == (48, 24)
    assert left <= 45 and right >= 65 and top <= 35 and bottom >= 55
    # Clamped at the image edge, shifted inside rather than cut.
    corner = _square_mask((200, 100), (0, 0, 4, 4))
    assert im.mask_crop_box(corner, 10, 1.0) == (0, 0, 16, 16)
    # Bigger than the image: the whole image.
    assert im.mask_crop_box(m, 500, 1.0) == (0, 0, 200, 100)
    with pytest.raises(InvalidRequest):
        im.mask_crop_box(m, 0, 0.0)


def test_mask_crop_box_always_contains_the_mask():
    rng = np.random.default_rng(3)
    for _ in range(200):
        w, h = rng.integers(8, 120, 2)
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = rng.integers(x0 + 1, w + 1), rng.integers(y0 + 1, h + 1)
        pad, aspect = int(rng.integers(0, 40)), float(rng.choice([0.5, 1.0, 1.5, 3.0]))
        box = im.mask_crop_box(_square_mask((w, h), (x0, y0, x1, y1)), pad, aspect)
        left, top, right, bottom = box
        assert 0 <= left <= x0 and x1 <= right <= w and 0 <= top <= y0 and y1 <= bottom <= h


def test_composite_exact_outside_mask():
    orig, gen = _rgb(64, 48, 1), _rgb(64, 48, 2)
    mask = im.prepare_mask(_square_mask((64, 48), (10, 10, 40, 30)), (64, 48), 6, False)
    out = np.asarray(im.composite(orig, gen, mask))
    m = np.asarray(mask)
    assert np.array_equal(out[m == 0], np.asarray(orig)[m == 0])
    assert np.array_equal(out[m == 255], np.asarray(gen)[m == 255])
    mid = (m > 0) & (m < 255)
    assert mid.any()
    # A different-size generated image is resized to the original's size.
    assert im.composite(orig, gen.resize((32, 24)), mask).size == (64, 48)


# --- outpainting ------------------------------------------------------------------------------


@pytest.mark.parametrize("extent", [dict(right=128), dict(left=8, top=16, right=24, bottom=40), dict(top=64)])
@pytest.mark.parametrize("feather", [0, 16])
def test_extend_canvas(extent, feather):
    img = _rgb(40, 30)
    ext = OutpaintExtent(**extent)
    canvas, mask = im.extend_canvas(img, ext, feather)
    size = (40 + ext.left + ext.right, 30 + ext.top + ext.bottom)
    assert canvas.size == mask.size == size and canvas.mode == "RGB" and mask.mode == "L"
    c, m = np.asarray(canvas), np.asarray(mask)
    inside = (slice(ext.top, ext.top + 30), slice(ext.left, ext.left + 40))
    assert np.array_equal(c[inside], np.asarray(img))
    assert (m[inside] == 0).all()
    new = np.ones(m.shape, bool)
    new[inside] = False
    assert (m[new] > 0).all()
    assert m.max() == 255
    if feather:
        assert (m[new] < 255).any()  # a ramp at the seam
    else:
        assert (m[new] == 255).all()
    # Deterministic, so a request regenerates the same image.
    again, _ = im.extend_canvas(img, ext, feather)
    assert np.array_equal(np.asarray(again), c)
    # The composite of anything over the canvas keeps the original region exactly.
    out = np.asarray(im.composite(canvas, _rgb(*size, seed=5), mask))
    assert np.array_equal(out[inside], np.asarray(img))


def test_extend_canvas_fill_follows_the_edge_colour():
    img = Image.new("RGB", (32, 32), (200, 40, 40))
    canvas, _ = im.extend_canvas(img, OutpaintExtent(right=64), 8)
    fill = np.asarray(canvas, dtype=np.float32)[:, 40:]
    assert abs(fill[..., 0].mean() - 200) < 10 and abs(fill[..., 1].mean() - 40) < 10
    assert fill.std() > 1  # some noise for diffusion to work from
