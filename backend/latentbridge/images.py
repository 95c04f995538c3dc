"""Image helpers shared by the engine, the server and the CLI (PIL + numpy only, no torch).

- decoding untrusted bytes safely (size checked from the header before any pixel is decoded),
- PNG results with their metadata (`latentbridge` = request JSON, `parameters` = A1111 text),
- masks: resize, feather, invert, crop-to-mask box, exact compositing,
- the outpaint canvas: extended image + its mask.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, PngImagePlugin

from .infotext import a1111_parameters  # the A1111 `parameters` text (re-exported: images.a1111_parameters)
from .protocol import BadImage, GenerationRequest, InvalidRequest, OutpaintExtent, TooLarge, parse_request

REQUEST_CHUNK = "latentbridge"  # PNG text chunk holding the request as JSON
PARAMETERS_CHUNK = "parameters"  # PNG text chunk A1111 and the tools that read its files use

# ---------------------------------------------------------------------------------------------
# Decoding

# The only formats ever decoded from bytes we did not make. Pillow would otherwise try all of its
# plugins, EPS/PS among them (it runs Ghostscript on them) and other rarely audited decoders.
DECODE_FORMATS = ("PNG", "JPEG", "WEBP")
FORMATS_TEXT = "PNG, JPEG or WebP"


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except Image.UnidentifiedImageError:
        raise BadImage(f"not a readable image (only {FORMATS_TEXT} images are decoded)") from None


def decode_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode PNG, JPEG or WebP bytes (no other format) into a loaded image in mode RGB, RGBA or L.

    Raises BadImage for empty, truncated, corrupt or unknown data and TooLarge when the image has
    more than `max_pixels` pixels. The size comes from the header, so an oversized image (a
    decompression bomb) is refused before its pixels are decoded. EXIF orientation is applied.
    """
    if not data:
        raise BadImage("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own bomb limit; our max_pixels check is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(data)
    except Image.DecompressionBombError:
        raise TooLarge("image too large: its header claims more pixels than any limit allows") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a readable image ({_reason(exc)})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadImage(f"image has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise TooLarge(f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise BadImage(f"image data is corrupt or truncated ({_reason(exc)})") from None
    return _normalise_mode(image)


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _reason(exc: Exception) -> str:
    """The library's reason, without internals: Pillow names the buffer it read from
    (`cannot identify image file <_io.BytesIO object at 0x7f…>`), which means nothing to a user."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a PNG, JPEG or WebP image"
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, RGBA or L: the modes the rest of the code handles. Alpha is kept where there is one."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping (PIL's convert clips).
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    has_alpha = mode in ("LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


# ---------------------------------------------------------------------------------------------
# Encoding and PNG metadata


def encode_png(image: Image.Image, request: GenerationRequest | None = None, seed: int | None = None) -> bytes:
    """PNG bytes, with the request embedded when given.

    Text chunks: `latentbridge` = the request as JSON, `parameters` = the A1111 text. With `seed`
    the embedded request describes this one image: its seed is `seed` and its batch size 1, so
    reading it back regenerates exactly this image even when it was image i of a batch (made with
    seed + i). Without `seed` the request is embedded as given.
    """
    info = None
    if request is not None:
        embedded = image_request(request, seed)
        info = PngImagePlugin.PngInfo()
        info.add_itxt(REQUEST_CHUNK, embedded.model_dump_json(exclude_none=False))
        info.add_itxt(PARAMETERS_CHUNK, a1111_parameters(embedded, embedded.seed))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    # compress_level 4: ~3x faster than the default 6 for a few % larger files.
    image.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def image_request(request: GenerationRequest, seed: int | None) -> GenerationRequest:
    """The request that regenerates one image: `seed` filled in, batch size 1 (see encode_png)."""
    if seed is None:
        return request
    return request.model_copy(update={"seed": seed, "batch_size": 1})


def encode_preview(image: Image.Image, max_size: int, format: str = "jpeg") -> bytes:
    """Small preview bytes whose longest side is at most `max_size`: jpeg, webp, png, or `rgb`
    (raw 8-bit RGB rows, top first, width*height*3 bytes; `preview_image` reads any of them)."""
    fmt = format.lower()
    if fmt not in ("jpeg", "jpg", "webp", "png", "rgb"):
        raise InvalidRequest(f"unknown preview format {format!r}: use jpeg, webp, png or rgb", field="format")
    if max_size < 1:
        raise InvalidRequest("preview max_size must be at least 1", field="max_size")
    image = image.convert("RGB") if fmt in ("jpeg", "jpg", "rgb") or image.mode not in ("RGB", "RGBA", "L") else image
    if max(image.size) > max_size:
        scale = max_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if fmt == "rgb":
        return image.tobytes()
    buf = io.BytesIO()
    if fmt in ("jpeg", "jpg"):
        image.save(buf, format="JPEG", quality=80)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=80, method=0)  # method 0: fastest
    else:
        image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def preview_image(data: bytes, format: str, size: tuple[int, int]) -> Image.Image:
    """A preview's bytes back as an image (`size` is needed for raw `rgb` previews)."""
    if format == "rgb":
        return Image.frombytes("RGB", size, data)
    with _open(data) as image:
        image.load()
        return image


def _open_for_metadata(data_or_path: bytes | str | os.PathLike) -> Image.Image:
    try:
        if isinstance(data_or_path, (bytes, bytearray, memoryview)):
            if not data_or_path:
                raise BadImage("image is empty (0 bytes)")
            return _open(bytes(data_or_path))
        return _open(Path(data_or_path).read_bytes())
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage(f"no such file: {data_or_path}") from None
    except IsADirectoryError:
        raise BadImage(f"is a directory, not an image: {data_or_path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a readable image ({_reason(exc)})") from None


def read_png_text(data_or_path: bytes | str | os.PathLike) -> dict[str, str]:
    """All text chunks of a PNG (bytes or a path) as a dict; {} for other formats or none."""
    image = _open_for_metadata(data_or_path)
    if image.format != "PNG":
        return {}
    try:
        # `.text` reads to the end of the file: chunks after the image data count too.
        text = image.text  # type: ignore[attr-defined]
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"PNG is corrupt or truncated ({_reason(exc)})") from None
    return {str(k): str(v) for k, v in text.items()}


def read_png_request(data_or_path: bytes | str | os.PathLike) -> GenerationRequest | None:
    """The request embedded in a result PNG, or None when it carries none.

    Raises BadImage when the chunk is not JSON and InvalidRequest (naming the field) when it is
    JSON but not a valid request.
    """
    raw = read_png_text(data_or_path).get(REQUEST_CHUNK)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadImage(f"the `{REQUEST_CHUNK}` text chunk is not valid JSON") from None
    return parse_request(data)


# ---------------------------------------------------------------------------------------------
# Masks


def check_mask_size(init_image: Image.Image | None, mask: Image.Image | None) -> None:
    """A mask must match its init image pixel for pixel: stretching one would repaint the wrong
    place. The server and the local engine refuse a mismatch with this same error."""
    if mask is not None and init_image is not None and mask.size != init_image.size:
        raise BadImage(f"mask is {mask.width}x{mask.height} but the init image is "
                       f"{init_image.width}x{init_image.height}: they must be the same size", field="mask")


def mask_channel(mask: Image.Image) -> Image.Image:
    """The mask as mode L, white = repaint.

    Rule for images with an alpha channel: when the alpha channel is not fully opaque, the mask is
    the alpha itself (a stroke layer painted on transparency: painted = repaint, transparent =
    keep). A fully opaque image (or one without alpha) uses its luminance. Use `invert` for the
    opposite convention (transparent = repaint, as in OpenAI's edit API).
    """
    if mask.mode == "P":
        mask = mask.convert("RGBA" if "transparency" in mask.info else "RGB")
    if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = mask.getchannel("A")
        lo, _hi = alpha.getextrema()
        if lo < 255:
            return alpha
    return mask.convert("L") if mask.mode != "L" else mask


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """A mode-L mask (white = repaint) at `size`, inverted if asked, feathered by a Gaussian blur.

    See `mask_channel` for how alpha channels are read. The blur radius is in pixels of `size`.
    """
    if blur < 0:
        raise InvalidRequest("mask blur must be >= 0", field="mask.blur")
    out = mask_channel(mask)
    if out.size != tuple(size):
        out = out.resize(tuple(size), Image.Resampling.BILINEAR)
    if invert:
        out = ImageOps.invert(out)
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(radius=blur))
    return out


def _grow_axis(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to `length` around its centre, shifted to stay inside [0, limit)."""
    length = min(length, limit)
    extra = length - (hi - lo)
    if extra <= 0:
        return lo, hi
    new_lo = lo - extra // 2
    new_lo = max(0, min(new_lo, limit - length))
    return new_lo, new_lo + length


def mask_crop_box(
    mask: Image.Image, padding: int, target_aspect: float, multiple: int = 8
) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) to crop for "only masked" inpainting, or None if empty.

    The bounding box of mask > 0, grown by `padding` on every side, then grown (never shrunk) to
    the aspect ratio `target_aspect` (width / height) of the working resolution and to a multiple
    of `multiple` pixels per side, all clamped to the image. When the image is too small for the
    aspect or the multiple, the box is as close as the image allows. It always contains the mask.
    """
    if target_aspect <= 0 or not math.isfinite(target_aspect):
        raise InvalidRequest("crop aspect ratio must be positive", field="target_aspect")
    m = mask_channel(mask)
    bbox = m.point(lambda v: 255 if v > 0 else 0).getbbox()
    if bbox is None:
        return None
    W, H = m.size
    left, top, right, bottom = bbox
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(W, right + padding), min(H, bottom + padding)
    w, h = right - left, bottom - top
    step = max(1, multiple)
    for _ in range(4):  # rounding one side to the multiple can break the aspect: settle both
        if w / h < target_aspect:
            w = math.ceil(h * target_aspect)
        else:
            h = math.ceil(w / target_aspect)
        w, h = math.ceil(w / step) * step, math.ceil(h / step) * step
    left, right = _grow_axis(left, right, w, W)
    top, bottom = _grow_axis(top, bottom, h, H)
    return left, top, right, bottom


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Blend `generated` over `original` by `mask` (L): 0 → the original pixel exactly, 255 →
    the generated pixel, in between a linear mix. `generated` and `mask` are resized to the
    original's size when they differ. The result is RGBA when the original has alpha, else RGB."""
    mode = "RGBA" if original.mode in ("RGBA", "LA", "PA") else "RGB"
    base = original.convert(mode)
    gen = generated.convert(mode)
    if gen.size != base.size:
        gen = gen.resize(base.size, Image.Resampling.LANCZOS)
    m = mask_channel(mask)
    if m.size != base.size:
        m = m.resize(base.size, Image.Resampling.BILINEAR)
    a = np.asarray(m, dtype=np.float32)[..., None] / 255.0
    o = np.asarray(base, dtype=np.float32)
    g = np.asarray(gen, dtype=np.float32)
    # o*(1-a) + g*a is exact for a in {0, 1}: integer pixel values are exact in float32.
    out = np.rint(o * (1.0 - a) + g * a)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode)


# ---------------------------------------------------------------------------------------------
# Outpainting


def extend_canvas(image: Image.Image, extent: OutpaintExtent, feather: int) -> tuple[Image.Image, Image.Image]:
    """The outpaint canvas and its mask.

    Canvas: (W + left + right) x (H + top + bottom), the original at (left, top); the new area
    holds the edge pixels stretched outward, blurred, plus low-amplitude noise (so diffusion has
    texture to start from). The noise comes from a fixed seed, so the same request gives the same
    canvas. Mask (L): 0 on every original pixel, rising linearly with the distance from the
    original over `feather` pixels to 255 (255 right away when feather is 0). `composite(canvas,
    generated, mask)` therefore keeps the original region exactly and fades the seam.
    """
    if feather < 0:
        raise InvalidRequest("feather must be >= 0", field="feather")
    rgb = image.convert("RGB")
    W, H = rgb.size
    l, t, r, b = extent.left, extent.top, extent.right, extent.bottom
    src = np.asarray(rgb, dtype=np.uint8)
    stretched = np.pad(src, ((t, b), (l, r), (0, 0)), mode="edge")
    NW, NH = W + l + r, H + t + b

    # Distance of every canvas pixel from the original rectangle (0 inside it).
    ys = np.arange(NH, dtype=np.float32)[:, None]
    xs = np.arange(NW, dtype=np.float32)[None, :]
    dy = np.maximum(np.maximum(t - ys, ys - (t + H - 1)), 0.0)
    dx = np.maximum(np.maximum(l - xs, xs - (l + W - 1)), 0.0)
    dist = np.sqrt(dx * dx + dy * dy)
    new_area = dist > 0
    ramp = np.clip(dist / feather, 0.0, 1.0) if feather > 0 else new_area.astype(np.float32)

    # Blur scaled to the extension so long stretched streaks soften into colour fields.
    radius = max(4.0, min(64.0, max(l, t, r, b) / 4.0))
    blurred = np.asarray(Image.fromarray(stretched).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0.0, 12.0, size=blurred.shape).astype(np.float32)
    # Noise fades in with the mask so the seam (low mask) stays smooth in the final composite.
    fill = np.clip(blurred + noise * ramp[..., None], 0, 255)
    canvas = np.where(new_area[..., None], np.rint(fill), stretched).astype(np.uint8)
    canvas[t : t + H, l : l + W] = src  # exact original pixels

    mask = np.rint(ramp * 255.0).astype(np.uint8)
    mask[t : t + H, l : l + W] = 0
    return Image.fromarray(canvas, "RGB"), Image.fromarray(mask, "L")
