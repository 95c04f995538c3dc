"""Seamless (tileable) generation: per-axis circular padding, and a VAE decode that keeps it.

A texture tiles on an axis when every convolution of the UNet *and* of the VAE (decoder and
encoder) sees the image as wrapping around on that axis. `set_seamless` patches each
`nn.Conv2d` to pad circularly on the wrapped axes and with zeros on the others, and makes the
VAE encoder's downsamplers (which pad explicitly with F.pad in diffusers' `Downsample2D`) wrap
the same way. `decode_latents` decodes pipeline latents, optionally in tiles whose layout itself
wraps on the seamless axes, so a large seamless texture stays seamless.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol import Seamless, Unsupported

# Attributes this module sets on patched objects (instance attributes: deleting them restores
# the class behaviour exactly).
_PADS = "_latentbridge_pads"  # conv: (left, right, top, bottom) it pads itself while patched
_AXES = "_latentbridge_axes"  # conv: (wrap_x, wrap_y) it is patched for
_DOWN_PADDING = "_latentbridge_down_padding"  # Downsample2D: its original `padding`


def _conv_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The (left, right, top, bottom) zero padding the conv applies on its own."""
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0, 0, 0)
        # "same": total padding dilation*(k-1) per axis, the extra pixel on the right/bottom.
        th = conv.dilation[0] * (conv.kernel_size[0] - 1)
        tw = conv.dilation[1] * (conv.kernel_size[1] - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = pad
    return (pw, pw, ph, ph)


def _wrapped_conv_forward(self: nn.Conv2d, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    left, right, top, bottom = getattr(self, _PADS)
    wrap_x, wrap_y = getattr(self, _AXES)
    # Non-wrapped axes keep the conv's own padding mode (zeros for every diffusers conv).
    other = "constant" if self.padding_mode == "zeros" else self.padding_mode
    if left or right:
        input = F.pad(input, (left, right, 0, 0), mode="circular" if wrap_x else other)
    if top or bottom:
        input = F.pad(input, (0, 0, top, bottom), mode="circular" if wrap_y else other)
    return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)


def _patch_conv(conv: nn.Conv2d, wrap_x: bool, wrap_y: bool, pads: tuple[int, int, int, int] | None = None) -> None:
    if pads is None:
        # A conv patched before keeps the pads recorded then (its own `padding` is untouched).
        pads = getattr(conv, _PADS, None) or _conv_pads(conv)
    setattr(conv, _PADS, pads)
    setattr(conv, _AXES, (wrap_x, wrap_y))
    conv._conv_forward = types.MethodType(_wrapped_conv_forward, conv)  # type: ignore[method-assign]


def _restore_conv(conv: nn.Conv2d) -> None:
    for name in ("_conv_forward", _PADS, _AXES):
        if name in conv.__dict__:
            delattr(conv, name)


def _explicit_pad_downsamplers(module: nn.Module):
    """diffusers `Downsample2D` modules that pad with F.pad (padding == 0) before a strided conv."""
    for m in module.modules():
        if type(m).__name__ == "Downsample2D" and getattr(m, "use_conv", False) and isinstance(getattr(m, "conv", None), nn.Conv2d):
            if _DOWN_PADDING in m.__dict__ or m.padding == 0:
                yield m


def set_seamless(modules: list[nn.Module], seamless: Seamless) -> None:
    """Make every `nn.Conv2d` in `modules` wrap on the axes `seamless` names.

    Wrapped axes pad circularly, the others with zeros; `Seamless.none` restores the original
    behaviour exactly (the patch lives in instance attributes that are deleted). Idempotent, and
    safe to call again after LoRA layers were added (peft's LoRA conv keeps the original as
    `base_layer` and adds its own `lora_A` conv: both are `nn.Conv2d` and get patched).

    diffusers' `Downsample2D` with padding=0 (the VAE encoder's) pads (0, 1, 0, 1) with F.pad
    before its conv: while patched, its `padding` is set to 1 so it skips that F.pad and its conv
    pads the same (0, 1, 0, 1) itself, circularly on the wrapped axes.
    """
    seamless = Seamless(seamless)
    wrap_x, wrap_y = seamless.wraps_x, seamless.wraps_y
    for module in modules:
        if module is None:
            continue
        down_convs = {}
        for down in _explicit_pad_downsamplers(module):
            down_convs[id(down.conv)] = down
        for m in module.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            down = down_convs.get(id(m))
            if seamless is Seamless.none:
                _restore_conv(m)
                if down is not None and _DOWN_PADDING in down.__dict__:
                    down.padding = down.__dict__.pop(_DOWN_PADDING)
            elif down is not None:
                if _DOWN_PADDING not in down.__dict__:
                    down.__dict__[_DOWN_PADDING] = down.padding
                    down.padding = 1  # any non-zero value: its forward then skips the F.pad
                _patch_conv(m, wrap_x, wrap_y, pads=(0, 1, 0, 1))
            else:
                _patch_conv(m, wrap_x, wrap_y)


# ---------------------------------------------------------------------------------------------
# Decoding


def unscale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Pipeline (scaled) latents → the latent space of `vae` (a VAE or a TAESD), as diffusers' pipelines
    do it before `vae.decode`."""
    cfg = vae.config
    scaling = getattr(cfg, "scaling_factor", 1.0) or 1.0
    mean = getattr(cfg, "latents_mean", None)
    std = getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:  # SDXL-style VAEs with per-channel statistics
        c = latents.shape[1]
        mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1)
        std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1)
        return latents * std_t / scaling + mean_t
    shift = getattr(cfg, "shift_factor", None) or 0.0  # SD3 / Flux
    return latents / scaling + shift


def _axis_tiles(n: int, tile: int, overlap: int, wrap: bool) -> list[tuple[int, int]]:
    """Tile (start, length) pairs in latent units covering an axis of size n.

    Not wrapped: tiles start at 0 and the last ends at n. Wrapped: tiles are windows on a circle
    (indices mod n), evenly spaced, so the layout has no edge on that axis.
    """
    if n <= tile:
        return [(0, n)]
    if wrap:
        count = math.ceil(n / (tile - overlap))
        return [(round(i * n / count), tile) for i in range(count)]
    stride = tile - overlap
    count = math.ceil((n - overlap) / stride)
    starts = [min(i * stride, n - tile) for i in range(count)]
    return [(s, tile) for s in starts]


def _ramp(length: int, ramp: int, rise: bool, fall: bool, device, dtype) -> torch.Tensor:
    """Blend weights along one tile axis: linear ramps (never 0) where a neighbour overlaps."""
    w = torch.ones(length, device=device, dtype=dtype)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        up = (torch.arange(ramp, device=device, dtype=dtype) + 0.5) / ramp
        if rise:
            w[:ramp] = up
        if fall:
            w[length - ramp :] = up.flip(0)
    return w


@torch.no_grad()
def decode_latents(
    vae,
    latents: torch.Tensor,
    seamless: Seamless,
    tile: bool,
    tile_latent: int = 64,
    overlap: int = 16,
) -> torch.Tensor:
    """Decode pipeline-output latents into images in [-1, 1] (NCHW float, the VAE's dtype).

    `latents` are what a diffusers pipeline returns with output_type="latent": SCALED (the
    function divides by `vae.config.scaling_factor`, and applies `latents_mean/std` or
    `shift_factor` when the VAE config has them, as the pipelines do before `vae.decode`). They
    must be 4-D NCHW: Flux callers unpack the packed latents first.

    tile=False decodes in one go. tile=True decodes `tile_latent`-sized tiles overlapping by
    `overlap` latents, blended with linear ramps, so memory stays bounded. On the axes
    `seamless` wraps, the tile layout wraps too (tiles are windows on a circle): the result has
    no seam there. Set the VAE seamless (`set_seamless`) before calling for a seamless texture;
    do not also enable diffusers' own VAE tiling.
    """
    if latents.ndim != 4:
        raise Unsupported(f"decode_latents needs NCHW latents, got shape {tuple(latents.shape)} (unpack Flux latents first)")
    param = next(vae.parameters())
    z = unscale_latents(vae, latents.to(device=param.device, dtype=param.dtype))
    _, _, h, w = z.shape
    seamless = Seamless(seamless)
    if not tile or (h <= tile_latent and w <= tile_latent):
        return vae.decode(z).sample.clamp(-1, 1)

    tile_latent = max(tile_latent, 2)
    overlap = max(0, min(overlap, tile_latent // 2))
    rows = _axis_tiles(h, tile_latent, overlap, seamless.wraps_y)
    cols = _axis_tiles(w, tile_latent, overlap, seamless.wraps_x)
    out = None
    weight_sum = None
    scale = None
    for ys, yl in rows:
        y_idx = torch.arange(ys, ys + yl, device=z.device) % h
        for xs, xl in cols:
            x_idx = torch.arange(xs, xs + xl, device=z.device) % w
            piece = vae.decode(z.index_select(2, y_idx).index_select(3, x_idx)).sample
            if out is None:
                scale = piece.shape[-1] // xl  # VAE upscale factor (8 for SD)
                out = torch.zeros(z.shape[0], piece.shape[1], h * scale, w * scale, device=piece.device, dtype=torch.float32)
                weight_sum = torch.zeros(1, 1, h * scale, w * scale, device=piece.device, dtype=torch.float32)
            ramp_px = overlap * scale
            wy = _ramp(yl * scale, ramp_px, len(rows) > 1 and (seamless.wraps_y or ys > 0),
                       len(rows) > 1 and (seamless.wraps_y or ys + yl < h), piece.device, torch.float32)
            wx = _ramp(xl * scale, ramp_px, len(cols) > 1 and (seamless.wraps_x or xs > 0),
                       len(cols) > 1 and (seamless.wraps_x or xs + xl < w), piece.device, torch.float32)
            weight = wy[:, None] * wx[None, :]
            # Pixel indices of the tile in the output, wrapping around on seamless axes.
            py = (torch.arange(ys * scale, (ys + yl) * scale, device=piece.device)) % (h * scale)
            px = (torch.arange(xs * scale, (xs + xl) * scale, device=piece.device)) % (w * scale)
            rows_view = out.index_select(2, py)
            rows_view[..., px] += piece.float() * weight
            out.index_copy_(2, py, rows_view)
            w_rows = weight_sum.index_select(2, py)
            w_rows[..., px] += weight
            weight_sum.index_copy_(2, py, w_rows)
    return (out / weight_sum).clamp(-1, 1).to(param.dtype)
