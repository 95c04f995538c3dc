"""Step previews: latents → a small RGB image.

Decoders:
- "latent2rgb" (default): a per-family linear map from latent channels to RGB (+ bias), applied
  to the (predicted clean) latent in the pipeline's scaled latent space; ~0.1 ms at 512 px.
- "taesd": diffusers `AutoencoderTiny` (TAESD), which decodes the scaled latents directly.
- "vae": the full VAE decode (slow; for checking previews against the final image).
- "none": no previews.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..protocol import Seamless, Unsupported
from .seamless import decode_latents, unscale_latents

# Rows = latent channels, columns = R, G, B (public coefficients, as ComfyUI's latent formats
# publish them), applied to the scaled latent; then clamp to [-1, 1].
SD1_FACTORS = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
SDXL_FACTORS = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_BIAS = [0.1084, -0.0175, -0.0011]
SD3_FACTORS = [
    [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458], [0.0856, 0.0339, 0.0902],
    [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309], [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358],
    [-0.0194, 0.0020, 0.0669], [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
    [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293], [-0.1448, -0.1463, -0.1189],
]
SD3_BIAS = [0.2394, 0.2135, 0.1925]
FLUX_FACTORS = [
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
]
FLUX_BIAS = [-0.0329, -0.0718, -0.0851]

# family name (as the engine reports it, lower case) → (factors, bias)
_FAMILY_FACTORS: dict[str, tuple[list[list[float]], list[float] | None]] = {
    "sd1": (SD1_FACTORS, None),
    "sd2": (SD1_FACTORS, None),
    "tiny": (SD1_FACTORS, None),
    "sdxl": (SDXL_FACTORS, SDXL_BIAS),
    "sd3": (SD3_FACTORS, SD3_BIAS),
    "flux": (FLUX_FACTORS, FLUX_BIAS),
}
DECODERS = ("latent2rgb", "taesd", "vae", "none")


def _family_key(family: str) -> str:
    f = "".join(ch for ch in (family or "").lower() if ch.isalnum())
    for key in ("sdxl", "sd3", "flux", "sd2", "sd1"):
        if f.startswith(key):
            return key
    if f.startswith("sd15") or f.startswith("sd14"):
        return "sd1"
    return f


def unpack_flux_latents(latents: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Flux's packed latents (B, (h/2)*(w/2), C*4) → NCHW (B, C, h, w), h, w in latent pixels.

    Without a size the latent grid is assumed square.
    """
    b, seq, packed = latents.shape
    if height is None or width is None:
        side = math.isqrt(seq)
        if side * side != seq:
            raise Unsupported("cannot unpack non-square Flux latents without the image size")
        gh = gw = side
    else:
        gh, gw = height // 16, width // 16  # 8x VAE, then 2x2 patches
        if gh * gw != seq:
            raise Unsupported(f"Flux latents of length {seq} do not match the size {width}x{height}")
    c = packed // 4
    x = latents.view(b, gh, gw, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, gh * 2, gw * 2)


class LatentPreviewer:
    """Turns the latents of a step into a preview image (first item of the batch)."""

    def __init__(self, family: str, decoder: str = "latent2rgb", taesd=None, vae=None, *, image_size: tuple[int, int] | None = None):
        """`image_size` (width, height in pixels) is only needed to unpack non-square Flux latents."""
        if decoder not in DECODERS:
            raise Unsupported(f"unknown preview decoder {decoder!r}: use one of {', '.join(DECODERS)}")
        if decoder == "taesd" and taesd is None:
            raise Unsupported("preview decoder 'taesd' needs a TAESD model (set `taesd` in the settings)")
        if decoder == "vae" and vae is None:
            raise Unsupported("preview decoder 'vae' needs the pipeline's VAE")
        self.family = family
        self.decoder = decoder
        self.taesd = taesd
        self.vae = vae
        self.image_size = image_size
        factors, bias = _FAMILY_FACTORS.get(_family_key(family), (None, None))
        self._factors = torch.tensor(factors, dtype=torch.float32) if factors is not None else None
        self._bias = torch.tensor(bias, dtype=torch.float32) if bias is not None else None

    def _nchw(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents[:1]
        if x.ndim == 3:  # Flux: packed sequence
            w, h = self.image_size if self.image_size else (None, None)
            x = unpack_flux_latents(x, h, w)
        if x.ndim != 4:
            raise Unsupported(f"cannot preview latents of shape {tuple(latents.shape)}")
        return x

    def _latent2rgb(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) → (h, w, 3) in [-1, 1]."""
        x = x[0].float()
        c = x.shape[0]
        if self._factors is not None and self._factors.shape[0] == c:
            rgb = torch.einsum("chw,cr->hwr", x, self._factors.to(x.device))
            if self._bias is not None:
                rgb = rgb + self._bias.to(x.device)
            return rgb
        # Unknown family/channel count: the first three channels, each normalised to [-1, 1].
        first = x[: min(3, c)]
        if first.shape[0] < 3:
            first = torch.cat([first] + [first[-1:]] * (3 - first.shape[0]))
        lo = first.amin(dim=(1, 2), keepdim=True)
        hi = first.amax(dim=(1, 2), keepdim=True)
        return ((first - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1).permute(1, 2, 0)

    def _taesd_decode(self, x: torch.Tensor) -> torch.Tensor:
        """TAESD decodes the latents the way a pipeline would with it as its VAE: divided by its
        own `scaling_factor` (1.0 for SD1/SDXL's TAESD, which read the pipeline's scaled latents)
        plus its `shift_factor` (TAESD3 / TAEF1 carry SD3's / Flux's constants)."""
        channels = getattr(self.taesd.config, "latent_channels", x.shape[1])
        if channels != x.shape[1]:
            raise Unsupported(
                f"the TAESD preview decoder takes {channels}-channel latents but this model makes {x.shape[1]} "
                "(SD1/2: taesd, SDXL: taesdxl, SD3: taesd3, Flux: taef1)",
                field="preview",
            )
        param = next(self.taesd.parameters())
        return self.taesd.decode(unscale_latents(self.taesd, x.to(param.device, param.dtype))).sample

    @torch.no_grad()
    def to_image(self, latents: torch.Tensor, max_size: int) -> Image.Image | None:
        """Preview of the first latent of the batch, longest side ≤ max_size; None for "none"."""
        if self.decoder == "none":
            return None
        x = self._nchw(latents)
        if self.decoder == "latent2rgb":
            rgb = self._latent2rgb(x)
            full = (x.shape[-1] * 8, x.shape[-2] * 8)  # the image the latent stands for
        else:
            if self.decoder == "taesd":
                out = self._taesd_decode(x)
            else:
                out = decode_latents(self.vae, x, Seamless.none, tile=False)
            rgb = out[0].float().permute(1, 2, 0)
            full = (rgb.shape[1], rgb.shape[0])
        arr = ((rgb.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()
        image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
        scale = min(1.0, max_size / max(full))
        size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return image
