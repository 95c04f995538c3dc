"""Upscalers: built-in resampling (Lanczos, Nearest) and model upscalers loaded with spandrel.

Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ... every architecture spandrel knows from
its state dict) come from `--upscaler-dirs`, as .safetensors files; pickle files (.pth/.pt/.ckpt)
only with --allow-pickle. spandrel is an optional extra (`pip install "latentbridge[upscalers]"`,
with torchvision from the same index as torch); without it the built-ins still work and a model
upscaler answers a typed error naming the extra.

A model runs in tiles with overlapping, feathered borders, so an image of any size fits in memory;
it runs as many passes as needed to reach the size (then Lanczos to the exact size), as A1111
does. With `seamless` the image is treated as wrapping around on those axes, so an upscaled
tileable texture stays tileable.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..model_dirs import SAFE_WEIGHTS, weight_files
from ..protocol import Cancelled, ErrorCode, InvalidRequest, LatentBridgeError, Seamless, Unsupported
from ..settings import Settings

log = logging.getLogger(__name__)

# Built-in upscalers by their A1111 names (matched case-insensitively).
RESAMPLERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
MAX_MODEL_PASSES = 3  # a 2x model reaches 8x at most, as in A1111
WRAP_MARGIN = 16  # context pixels borrowed from the opposite edge on a wrapped axis
EXTRA_HINT = ('model upscalers need spandrel: pip install "latentbridge[upscalers]" '
              "(install torchvision from the same index as torch first)")


@dataclass(frozen=True)
class UpscalerFile:
    name: str  # the file's stem: what clients send
    path: Path

    @property
    def guessed_scale(self) -> float:
        """The scale its name announces ("4x-UltraSharp", "RealESRGAN_x2plus"), else 4 (A1111's default)."""
        found = re.search(r"(?<![a-z0-9])([1-8])x|x([1-8])(?![0-9])", self.path.stem.lower())
        return float(found.group(1) or found.group(2)) if found else 4.0


def upscaler_files(settings: Settings) -> list[UpscalerFile]:
    """The model files in the upscaler folders (recursively; pickle files only when allowed; the
    first file of a name wins)."""
    found: dict[str, UpscalerFile] = {}
    for path in weight_files(settings.upscaler_dirs, settings.allow_pickle):
        found.setdefault(path.stem, UpscalerFile(path.stem, path))
    return list(found.values())


def find_upscaler(name: str, settings: Settings) -> UpscalerFile:
    """An upscaler model by name (its file stem, or its file name)."""
    for entry in upscaler_files(settings):
        if name in (entry.name, entry.path.name):
            return entry
    where = ", ".join(str(d) for d in settings.upscaler_dirs) or "no --upscaler-dirs configured"
    raise InvalidRequest(f"upscaler {name!r} not found: use Lanczos, Nearest or a model in the upscaler folders "
                         f"({where})", field="upscaler")


def is_builtin(name: str) -> bool:
    return name.strip().lower() in RESAMPLERS


# ---------------------------------------------------------------------------------------------
# Resampling that wraps


def resize(image: Image.Image, size: tuple[int, int], resample=Image.Resampling.LANCZOS,
           seamless: Seamless = Seamless.none) -> Image.Image:
    """`image` resized to `size`; on wrapped axes the filter reads across the opposite edge."""
    if image.size == tuple(size):
        return image
    if seamless is Seamless.none:
        return image.resize(size, resample)
    mx = WRAP_MARGIN if seamless.wraps_x else 0
    my = WRAP_MARGIN if seamless.wraps_y else 0
    padded = _wrap_pad(image, mx, my)
    # `box` resamples exactly the original region of the padded image: its neighbours are wrapped.
    return padded.resize(size, resample, box=(mx, my, mx + image.width, my + image.height))


def _wrap_pad(image: Image.Image, mx: int, my: int) -> Image.Image:
    a = np.asarray(image)
    mx, my = min(mx, image.width), min(my, image.height)
    pad = ((my, my), (mx, mx)) + ((0, 0),) * (a.ndim - 2)
    return Image.fromarray(np.pad(a, pad, mode="wrap"), image.mode)


# ---------------------------------------------------------------------------------------------
# Model upscalers


class Upscalers:
    """Upscaling by name. The last model used stays loaded (they are small: tens of MB)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[str, float], object] | None = None  # ((path, mtime), descriptor)

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int], *, device: torch.device,
                seamless: Seamless = Seamless.none, tile: int = 192, overlap: int = 8, cancel=None) -> Image.Image:
        """`image` upscaled to `size` by the upscaler called `name` ("None" = Lanczos to size)."""
        image = image.convert("RGB")
        key = name.strip().lower()
        if key in ("", "none"):
            return resize(image, size, Image.Resampling.LANCZOS, seamless)
        if key in RESAMPLERS:
            return resize(image, size, RESAMPLERS[key], seamless)
        descriptor = self.model(find_upscaler(name, self.settings), device)
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= size[0] and image.height >= size[1]:
                break
            before = image.size
            image = run_tiled(descriptor, image, tile=tile, overlap=overlap, seamless=seamless, cancel=cancel)
            if image.size == before:
                break
        return resize(image, size, Image.Resampling.LANCZOS, seamless)

    def scale_of(self, entry: UpscalerFile, device: torch.device | None = None) -> int:
        return int(self.model(entry, device or torch.device("cpu")).scale)

    def model(self, entry: UpscalerFile, device: torch.device):
        """The spandrel model of `entry`, on `device` (loaded once, then reused)."""
        if entry.path.suffix.lower() not in SAFE_WEIGHTS and not self.settings.allow_pickle:
            # upscaler_files never lists these; a path that got here some other way is refused too.
            raise Unsupported(f"{entry.path.name} is a pickle file, which can run code when loaded: convert it to "
                              ".safetensors, or start with --allow-pickle if you trust it", field="upscaler")
        key = (str(entry.path), entry.path.stat().st_mtime)
        with self._lock:
            if self._loaded is None or self._loaded[0] != key:
                self._loaded = None  # free the previous model before loading the next
                self._loaded = (key, _load(entry.path))
            descriptor = self._loaded[1]
        dtype = torch.float16 if device.type == "cuda" and descriptor.supports_half else torch.float32
        return descriptor.to(device, dtype).eval()


def spandrel_available() -> bool:
    try:
        import spandrel  # it imports torchvision, which may be missing or broken
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        return False
    return spandrel is not None


def _load(path: Path):
    try:
        import spandrel
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing inside spandrel
        raise Unsupported(f"{EXTRA_HINT} ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                          field="upscaler") from None
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        raise Unsupported(f"{path.name} is not an upscaler architecture spandrel knows", field="upscaler") from None
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise LatentBridgeError(f"could not load upscaler {path.name}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                                field="upscaler", code=ErrorCode.invalid_request) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise Unsupported(f"{path.name} is a {descriptor.purpose} model, not an upscaler", field="upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise Unsupported(f"{path.name} works on {descriptor.input_channels}-channel images, not RGB", field="upscaler")
    log.info("upscaler %s loaded (%s, x%d)", path.name, descriptor.architecture.name, descriptor.scale)
    return descriptor


def run_tiled(descriptor, image: Image.Image, *, tile: int = 192, overlap: int = 8,
              seamless: Seamless = Seamless.none, cancel=None) -> Image.Image:
    """One pass of the model over `image`, in tiles of `tile` px (0: whole image) that overlap by
    `overlap` px and are blended with linear ramps where they meet."""
    mx = WRAP_MARGIN if seamless.wraps_x else 0
    my = WRAP_MARGIN if seamless.wraps_y else 0
    source = _wrap_pad(image, mx, my) if mx or my else image
    param = next(descriptor.model.parameters())
    pixels = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    _, _, height, width = pixels.shape
    scale = int(descriptor.scale)
    out = torch.zeros(1, 3, height * scale, width * scale, dtype=torch.float32)
    weight = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
    tile = max(tile, 2 * overlap + 16) if tile > 0 else 0
    for top, bottom in _spans(height, tile, overlap):
        for left, right in _spans(width, tile, overlap):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            piece = pixels[:, :, top:bottom, left:right].to(param.device, param.dtype)
            result = descriptor(piece).float().cpu()
            ramp = _ramp(bottom - top, top > 0, bottom < height, overlap)[:, None] * \
                _ramp(right - left, left > 0, right < width, overlap)[None, :]
            ramp = torch.nn.functional.interpolate(ramp[None, None], scale_factor=scale, mode="nearest")
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] += result * ramp
            weight[:, :, top * scale:bottom * scale, left * scale:right * scale] += ramp
    out = out / weight.clamp_min(1e-8)
    out = out[:, :, my * scale:(height - my) * scale, mx * scale:(width - mx) * scale]
    array = (out[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of the tiles along one axis: `tile` long, overlapping by `overlap`, the last one
    flush with the end."""
    if tile <= 0 or length <= tile:
        return [(0, length)]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return [(s, s + tile) for s in dict.fromkeys(starts)]


def _ramp(length: int, fade_in: bool, fade_out: bool, overlap: int) -> torch.Tensor:
    """1 inside, rising linearly over `overlap` px on the sides where a neighbouring tile overlaps."""
    ramp = torch.ones(length)
    n = min(overlap, length // 2)
    if n > 0:
        edge = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
        if fade_in:
            ramp[:n] = edge
        if fade_out:
            ramp[-n:] = edge.flip(0)
    return ramp
