"""Images as A1111 sends them: base64 (with or without a data-URL prefix) in, PIL out; A1111's
mask, resize and inpainting-fill conventions."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

from ... import images as image_utils
from ...protocol import InvalidRequest, LatentBridgeError
from ..compat import b64_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286  # where A1111 puts the infotext of a JPEG or WebP

def decode_b64_image(value: str, field_name: str, max_pixels: int | None) -> Image.Image:
    """A base64 image from an A1111 body (blocking: run it off the event loop)."""
    try:
        return image_utils.decode_image(b64_bytes(value, field_name), max_pixels=max_pixels)
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


# ---------------------------------------------------------------------------------------------
# Images out, as A1111's `samples_format` says; infotext in and out of image metadata


def set_png_text(png: bytes, key: str, value: str | None) -> bytes:
    """`png` with its text chunk `key` replaced by `value` (removed when None), pixels untouched."""
    if not png.startswith(PNG_SIGNATURE):
        raise InvalidRequest("not a PNG", field="image")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind = png[pos + 4:pos + 8]
        end = pos + 12 + length
        data = png[pos + 8:pos + 8 + length]
        if not (kind in (b"tEXt", b"iTXt", b"zTXt") and data.split(b"\0", 1)[0] == key.encode("latin-1")):
            chunks.append(png[pos:end])
        if kind == b"IHDR" and value is not None:
            chunks.append(_itxt_chunk(key, value))
        pos = end
    return PNG_SIGNATURE + b"".join(chunks)


def _itxt_chunk(key: str, value: str) -> bytes:
    data = key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")
    return struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(">I", zlib.crc32(b"iTXt" + data) & 0xFFFFFFFF)


def encode_result(png: bytes, parameters: str | None, options: dict) -> str:
    """One result as A1111 returns it: base64 in `samples_format` (png, jpg/jpeg or webp) with the
    infotext in the PNG's `parameters` chunk or the JPEG/WebP's EXIF UserComment, as A1111 writes."""
    fmt = str(options.get("samples_format", "png")).lower()
    text = parameters if options.get("enable_pnginfo", True) else None
    if fmt == "png":
        return base64.b64encode(set_png_text(png, image_utils.PARAMETERS_CHUNK, text)).decode("ascii")
    if fmt not in ("jpg", "jpeg", "webp"):
        raise InvalidRequest(f"samples_format {fmt!r} is not supported: png, jpg or webp", field="samples_format")
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
    exif = Image.Exif()
    if text is not None:
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
    out = io.BytesIO()
    quality = int(options.get("jpeg_quality", 80))
    if fmt == "webp":
        image.save(out, format="WEBP", quality=quality, lossless=bool(options.get("webp_lossless", False)),
                   exif=exif.tobytes())
    else:
        image.save(out, format="JPEG", quality=quality, exif=exif.tobytes())
    return base64.b64encode(out.getvalue()).decode("ascii")


def read_infotext(image: Image.Image) -> tuple[str | None, dict[str, str]]:
    """A1111's read_info_from_image: the infotext (PNG `parameters`, or EXIF UserComment) and the
    image's other text items."""
    items = {str(k): v for k, v in image.info.items() if isinstance(v, str)}
    text = items.pop(image_utils.PARAMETERS_CHUNK, None)
    if text is None:
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
        if isinstance(comment, bytes) and comment:
            text = _user_comment(comment)
    return text, items


def _user_comment(raw: bytes) -> str:
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        # piexif writes UTF-16 big-endian; some writers little-endian: pick the one that decodes to text
        big, little = body.decode("utf-16-be", "replace"), body.decode("utf-16-le", "replace")
        return big if sum(c.isprintable() or c in "\n\t" for c in big) >= sum(c.isprintable() or c in "\n\t" for c in little) else little
    return body.decode("utf-8", "replace") if prefix.startswith((b"ASCII", b"\0\0\0")) else raw.decode("utf-8", "replace")

