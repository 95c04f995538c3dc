"""The hires fix: generate at the base size, upscale, then repaint at the large size (img2img).

The first pass fixes the composition at the size the model was trained for; the second adds
detail at the final size, so a large image does not fall apart into repeated subjects. Upscaling
works on the latents (torch's interpolation: the second pass must then denoise enough, as in
A1111) or on the decoded image (Lanczos, Nearest, or an upscaler model). With `seamless` every
step wraps: both passes, the latent interpolation and the image upscalers, so a large texture
made this way still tiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from ..protocol import LATENT_UPSCALERS, HiresOptions, Seamless
from .generate import Pass, _Run, at_least_one_step, decode, first_pass, sample, steps_run

# Our latent upscaler names → (torch mode, antialias), as A1111's "Latent (...)" modes.
LATENT_MODES = {
    "latent": ("bilinear", False),
    "latent-antialiased": ("bilinear", True),
    "latent-bicubic": ("bicubic", False),
    "latent-bicubic-antialiased": ("bicubic", True),
    "latent-nearest": ("nearest", False),
    "latent-nearest-exact": ("nearest-exact", False),
}
assert set(LATENT_MODES) == set(LATENT_UPSCALERS)


def second_pass(run: _Run) -> tuple[Pass, float]:
    """The second pass's settings (the request's where hires leaves them out) and its strength."""
    r, h = run.request, run.request.hires
    steps = h.steps or r.steps
    strength = at_least_one_step(run.model.family, steps, h.strength)
    step = Pass(h.prompt if h.prompt is not None else r.prompt,
                h.negative_prompt if h.negative_prompt is not None else r.negative_prompt,
                h.sampler or r.sampler, h.schedule if h.schedule is not None else r.schedule, steps)
    return step, strength


def hires_txt2img(run: _Run) -> list[Image.Image]:
    r, h = run.request, run.request.hires
    second, strength = second_pass(run)
    expected = steps_run(run.model.family, second.steps, strength)
    # Progress counts both passes: the first reports the second's steps as still to come.
    base_kind = "inpaint" if run.model.inpaint_native else "text2image"
    base_kwargs = {}
    if run.model.inpaint_native:
        base_kwargs = dict(image=Image.new("RGB", (r.width, r.height), (127, 127, 127)),
                           mask_image=Image.new("L", (r.width, r.height), 255), strength=1.0)
    latents = sample(run, base_kind, r.width, r.height, first_pass(r, later=expected), **base_kwargs)
    run.check_cancel()
    target = h.target_size(r.width, r.height)
    final = h.final_size(r.width, r.height)
    if h.upscaler in LATENT_MODES and not run.model.inpaint_native:
        large = upscale_latents(latents, target, h.upscaler, r.seamless, run.model.vae_scale)
        large = _crop_latents(large, final, run.model.vae_scale)
        return _second(run, second, strength, final, image=large)
    # Image upscalers (and dedicated inpainting models, whose pipelines take pictures only).
    pictures = decode(run, latents, r.width, r.height)
    run.check_cancel()
    name = "lanczos" if h.upscaler in LATENT_MODES else h.upscaler
    scale = run.model.vae_scale
    large = [_crop_image(run.upscale(p, name, (target[0] - target[0] % scale, target[1] - target[1] % scale)), final)
             for p in pictures]
    return _second(run, second, strength, final, image=large if len(large) > 1 else large[0])


def _second(run: _Run, step: Pass, strength: float, size: tuple[int, int], image) -> list[Image.Image]:
    if run.model.inpaint_native:
        pictures = image if isinstance(image, list) else [image]
        full = Image.new("L", size, 255)
        return decode(run, sample(run, "inpaint", *size, step, image=pictures if len(pictures) > 1 else pictures[0],
                                  mask_image=full, strength=strength), *size)
    return decode(run, sample(run, "image2image", *size, step, image=image, strength=strength), *size)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str, seamless: Seamless = Seamless.none,
                    vae_scale: int = 8) -> torch.Tensor:
    """(B, C, h, w) latents interpolated to the latent size of `size` pixels. On a wrapped axis the
    latents are tiled three times first, so the interpolation reads across the opposite edge."""
    mode, antialias = LATENT_MODES[upscaler]
    out_h, out_w = size[1] // vae_scale, size[0] // vae_scale
    reps_y, reps_x = (3 if seamless.wraps_y else 1), (3 if seamless.wraps_x else 1)
    x = latents.repeat(1, 1, reps_y, reps_x) if reps_x * reps_y > 1 else latents
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    up = F.interpolate(x.float(), size=(out_h * reps_y, out_w * reps_x), mode=mode, **kwargs).to(latents.dtype)
    if reps_y > 1:
        up = up[:, :, out_h:2 * out_h]
    if reps_x > 1:
        up = up[:, :, :, out_w:2 * out_w]
    return up


def _crop_latents(latents: torch.Tensor, final: tuple[int, int], vae_scale: int) -> torch.Tensor:
    """Centre crop to the final size (A1111 truncates the overflow of a cover-upscale the same way)."""
    fh, fw = final[1] // vae_scale, final[0] // vae_scale
    h, w = latents.shape[-2:]
    top, left = (h - fh) // 2, (w - fw) // 2
    return latents[:, :, top:top + fh, left:left + fw]


def _crop_image(image: Image.Image, final: tuple[int, int]) -> Image.Image:
    if image.size == final:
        return image
    left = ((image.width - final[0]) // 2) // 8 * 8
    top = ((image.height - final[1]) // 2) // 8 * 8
    return image.crop((left, top, left + final[0], top + final[1]))


__all__ = ["HiresOptions", "hires_txt2img", "upscale_latents", "LATENT_MODES"]
