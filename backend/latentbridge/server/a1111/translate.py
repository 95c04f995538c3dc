"""A1111 payloads → our `GenerationRequest` (plus the decoded init image and mask)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps
from pydantic import ValidationError

from ...protocol import (
    MAX_SEED,
    GenerationRequest,
    InvalidRequest,
    Mode,
    Seamless,
    Unsupported,
    error_from_validation,
)
from .imaging import _threshold, apply_inpainting_fill, binary_mask, decode_b64_image, fit_image
from .payloads import Img2ImgPayload, Txt2ImgPayload, _a1111_field, parse_payload
from .samplers import resolve_sampler

@dataclass
class Plan:
    """What one A1111 call runs: `n_iter` jobs of `request` (seed advancing by batch_size)."""

    kind: str  # "txt2img" / "img2img"
    payload: Txt2ImgPayload
    request: GenerationRequest
    n_iter: int
    init_image: Image.Image | None = None
    mask: Image.Image | None = None

    def request_for(self, iteration: int) -> GenerationRequest:
        seed = ((self.request.seed or 0) + iteration * self.request.batch_size) % (MAX_SEED + 1)
        return self.request.with_seed(seed)


def _checkpoint_name(value: Any) -> str | None:
    """`override_settings.sd_model_checkpoint` as A1111 titles it ("name.safetensors [hash]")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest("sd_model_checkpoint must be a string", field="override_settings.sd_model_checkpoint")
    name = value.strip()
    if name.endswith("]") and " [" in name:
        name = name[: name.rindex(" [")]
    return name


def build_plan(kind: str, data: Any, *, max_pixels: int | None, max_iterations: int,
               loaded_model: str | None = None) -> Plan:
    """Validate an A1111 payload and translate it. Blocking (decodes images): run in a thread."""
    payload = parse_payload(Img2ImgPayload if kind == "img2img" else Txt2ImgPayload, data)
    if payload.enable_hr:
        raise Unsupported("hires fix (enable_hr) is not supported", field="enable_hr")
    if payload.script_name:
        raise Unsupported(f"script {payload.script_name!r} not found", field="script_name")
    if payload.alwayson_scripts:
        name = next(iter(payload.alwayson_scripts))
        raise Unsupported(f"always on script {name!r} not found", field="alwayson_scripts")
    if not 1 <= payload.n_iter <= max_iterations:
        raise InvalidRequest(f"n_iter must be between 1 and {max_iterations}", field="n_iter")
    if payload.seed < -1 or payload.seed > MAX_SEED:
        raise InvalidRequest(f"seed must be -1 (random) or 0..{MAX_SEED}", field="seed")
    seed = secrets.randbelow(MAX_SEED + 1) if payload.seed == -1 else payload.seed
    checkpoint = _checkpoint_name((payload.override_settings or {}).get("sd_model_checkpoint"))
    # A1111 works in latent units: sizes round down to a multiple of 8.
    width, height = payload.width - payload.width % 8, payload.height - payload.height % 8

    fields: dict[str, Any] = {
        "mode": Mode.txt2img,
        "prompt": payload.prompt,
        "negative_prompt": payload.negative_prompt,
        "seed": seed,
        "steps": payload.steps,
        "guidance": payload.cfg_scale,
        "width": width,
        "height": height,
        "sampler": resolve_sampler(payload.sampler_name or payload.sampler_index, payload.scheduler),
        "batch_size": payload.batch_size,
        "seamless": Seamless.xy if payload.tiling else Seamless.none,
        "model": checkpoint if checkpoint != loaded_model else None,
    }
    init_image = mask = None
    if isinstance(payload, Img2ImgPayload):
        if not payload.init_images:
            raise InvalidRequest("img2img needs at least one image in init_images", field="init_images")
        if payload.inpainting_fill not in (0, 1, 2, 3):
            raise InvalidRequest("inpainting_fill must be 0, 1, 2 or 3", field="inpainting_fill")
        if payload.resize_mode not in (0, 1, 2, 3):
            raise InvalidRequest("resize_mode must be 0, 1, 2 or 3", field="resize_mode")
        init_image = decode_b64_image(payload.init_images[0], "init_images", max_pixels)
        init_image = fit_image(init_image.convert("RGB"), width, height, payload.resize_mode)
        fields["mode"] = Mode.img2img
        fields["strength"] = payload.denoising_strength if payload.denoising_strength is not None else 0.75
        if payload.mask:
            mask = binary_mask(decode_b64_image(payload.mask, "mask", max_pixels))
            mask = _threshold(fit_image(mask, width, height, payload.resize_mode))
            blur = payload.mask_blur if payload.mask_blur is not None else max(payload.mask_blur_x, payload.mask_blur_y)
            fields["mode"] = Mode.inpaint
            fields["mask"] = {
                "blur": blur,
                "invert": bool(payload.inpainting_mask_invert),
                "only_masked": bool(payload.inpaint_full_res),
                "padding": payload.inpaint_full_res_padding,
            }
            # The fill is applied where the model will repaint (after any inversion).
            repaint = ImageOps.invert(mask) if payload.inpainting_mask_invert else mask
            init_image = apply_inpainting_fill(init_image, repaint, payload.inpainting_fill)
            if payload.inpainting_fill == 2:
                fields["strength"] = 1.0
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        raise _a1111_field(error_from_validation(exc)) from None
    return Plan(kind, payload, request, payload.n_iter, init_image, mask)
