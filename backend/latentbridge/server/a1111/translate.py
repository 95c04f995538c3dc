"""A1111 payloads → our `GenerationRequest` (plus the decoded init image and mask).

What cannot be honoured either changes nothing visible (ignored, as A1111 ignores unknown
fields) or is refused with A1111's error for it (a script or always-on script it does not have:
422 naming it) or a typed 422 naming the field, rather than silently making another picture.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image, ImageOps
from pydantic import ValidationError

from ...infotext import LATENT_UPSCALE_MODES
from ...protocol import (
    MAX_SEED,
    ErrorCode,
    GenerationRequest,
    LatentBridgeError,
    InvalidRequest,
    Mode,
    Seamless,
    Unsupported,
    error_from_validation,
)
from .controlnet import ControlNetPlan, controlnet_key
from .controlnet_units import UnitContext
from .errors import A1111Error, a1111_field, parse_body
from .imaging import _threshold, apply_inpainting_fill, binary_mask, decode_b64_image, fit_image
from .payloads import Img2ImgPayload, Txt2ImgPayload
from .prompts import Style, apply_styles, extract_networks

_NO_CHECKPOINT = (None, "", "None", "none", "Use same checkpoint")
_SAME_SAMPLER = (None, "", "Use same sampler")
_SAME_SCHEDULER = (None, "", "Use same scheduler")


@dataclass
class Context:
    """What a translation needs from the server, gathered on the event loop beforehand."""

    max_pixels: int
    max_iterations: int
    options: dict[str, Any]  # A1111 options with this call's override_settings on top
    styles: list[Style]
    resolve_sampler: Callable[..., tuple]  # samplers.engine_resolver(app)
    checkpoint: str | None = None  # the model this call uses (None: the loaded one)
    controlnet: UnitContext | None = None  # the ControlNet models and modules, when the call has units


@dataclass
class Plan:
    """What one A1111 call runs: `n_iter` jobs of `request` (the seed advancing by batch_size)."""

    kind: str  # "txt2img" / "img2img"
    payload: Txt2ImgPayload
    request: GenerationRequest
    n_iter: int
    options: dict[str, Any] = field(default_factory=dict)
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    controlnet: ControlNetPlan | None = None  # sd-webui-controlnet's units, as our controls / reference

    def request_for(self, iteration: int) -> GenerationRequest:
        seed = ((self.request.seed or 0) + iteration * self.request.batch_size) % (MAX_SEED + 1)
        return self.request.with_seed(seed)


def vae_option(value: Any) -> str | None:
    """A1111's `sd_vae` → our request's `vae` ("Automatic" / "None": the model's own)."""
    if value in (None, "", "Automatic", "None", "automatic", "none"):
        return None
    if not isinstance(value, str):
        raise InvalidRequest("sd_vae must be a string", field="override_settings.sd_vae")
    return value


def hires_upscaler(name: str | None) -> str:
    """A1111's `hr_upscaler` → ours: its latent modes by name, None / "None" → Lanczos, built-ins
    and upscaler models by name (unknown names are the engine's typed error)."""
    if name in (None, ""):
        return LATENT_UPSCALE_MODES["Latent"]  # A1111's latent_upscale_default_mode
    if name in LATENT_UPSCALE_MODES:
        return LATENT_UPSCALE_MODES[name]
    if name.strip().lower() == "none":
        return "lanczos"
    return name.strip()


def _refuse_unsupported(payload: Txt2ImgPayload, options: dict[str, Any]) -> None:
    if payload.script_name:
        raise A1111Error(f"Script '{payload.script_name}' not found", status=422, field="script_name")
    for name in payload.alwayson_scripts or {}:
        if name != controlnet_key(payload.alwayson_scripts):
            raise A1111Error(f"always on script {name} not found", status=422, field="alwayson_scripts")
    restore = payload.restore_faces if payload.restore_faces is not None else options.get("face_restoration")
    if restore:
        raise Unsupported("face restoration is not available here (GET /sdapi/v1/face-restorers lists none)",
                          field="restore_faces")
    if payload.subseed_strength:
        raise Unsupported("variation seeds (subseed_strength > 0) are not supported", field="subseed_strength")
    if payload.refiner_checkpoint not in _NO_CHECKPOINT and (payload.refiner_switch_at or 0) < 1:
        raise Unsupported("a refiner checkpoint is not supported", field="refiner_checkpoint")


def _hires(payload: Txt2ImgPayload, width: int, height: int, resolve_sampler, checkpoint: str | None) -> tuple:
    """(first-pass width, height, our `hires` fields) of an `enable_hr` payload."""
    if payload.hr_checkpoint_name not in _NO_CHECKPOINT and payload.hr_checkpoint_name != checkpoint:
        raise Unsupported("a different checkpoint for the second pass is not supported", field="hr_checkpoint_name")
    hires: dict[str, Any] = {
        "scale": payload.hr_scale,
        "width": payload.hr_resize_x,
        "height": payload.hr_resize_y,
        "upscaler": hires_upscaler(payload.hr_upscaler),
        "steps": payload.hr_second_pass_steps,
        "strength": payload.denoising_strength if payload.denoising_strength is not None else 0.75,
        "prompt": payload.hr_prompt or None,
        "negative_prompt": payload.hr_negative_prompt or None,
    }
    if payload.firstphase_width or payload.firstphase_height:
        # The pre-1.0 API: width/height are the final size, firstphase_* the first pass.
        hires.update(width=width, height=height)
        width = (payload.firstphase_width or 512) // 8 * 8
        height = (payload.firstphase_height or 512) // 8 * 8
    if payload.hr_sampler_name not in _SAME_SAMPLER or payload.hr_scheduler not in _SAME_SCHEDULER:
        name = payload.hr_sampler_name if payload.hr_sampler_name not in _SAME_SAMPLER else \
            (payload.sampler_name or payload.sampler_index)
        scheduler = payload.hr_scheduler if payload.hr_scheduler not in _SAME_SCHEDULER else payload.scheduler
        hires["sampler"], hires["schedule"] = resolve_sampler(name, scheduler, field="hr_sampler_name")
    return width, height, hires


def build_plan(kind: str, data: Any, ctx: Context) -> Plan:
    """Validate an A1111 payload and translate it. Blocking (decodes images): run it in a thread."""
    payload = parse_body(Img2ImgPayload if kind == "img2img" else Txt2ImgPayload, data)
    options = ctx.options
    _refuse_unsupported(payload, options)
    if not 1 <= payload.n_iter <= ctx.max_iterations:
        raise InvalidRequest(f"n_iter must be between 1 and {ctx.max_iterations}", field="n_iter")
    if payload.seed < -1 or payload.seed > MAX_SEED:
        raise InvalidRequest(f"seed must be -1 (random) or 0..{MAX_SEED}", field="seed")
    seed = secrets.randbelow(MAX_SEED + 1) if payload.seed == -1 else payload.seed
    # A1111 works in latent units: sizes round down to a multiple of 8.
    width, height = payload.width - payload.width % 8, payload.height - payload.height % 8
    prompt, negative = apply_styles(payload.prompt, payload.negative_prompt, payload.styles, ctx.styles)
    prompt, loras = extract_networks(prompt)
    negative, _ = extract_networks(negative, field="negative_prompt")
    sampler, schedule = ctx.resolve_sampler(payload.sampler_name or payload.sampler_index, payload.scheduler)
    tiling = payload.tiling if payload.tiling is not None else bool(options.get("tiling"))
    clip_skip = options.get("CLIP_stop_at_last_layers", 1)
    if not isinstance(clip_skip, int) or isinstance(clip_skip, bool):
        raise InvalidRequest("CLIP_stop_at_last_layers must be an integer", field="override_settings.CLIP_stop_at_last_layers")

    fields: dict[str, Any] = {
        "mode": Mode.txt2img,
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "steps": payload.steps,
        "guidance": payload.cfg_scale,
        "width": width,
        "height": height,
        "sampler": sampler,
        "schedule": schedule,
        "clip_skip": clip_skip,
        "batch_size": payload.batch_size,
        "seamless": Seamless.xy if tiling else Seamless.none,
        "model": ctx.checkpoint,
        "vae": vae_option(options.get("sd_vae")),
        "loras": [] if payload.disable_extra_networks else loras,
    }
    if kind == "txt2img" and payload.enable_hr:
        fields["width"], fields["height"], fields["hires"] = _hires(payload, width, height, ctx.resolve_sampler,
                                                                    ctx.checkpoint)
    init_image = mask = None
    if isinstance(payload, Img2ImgPayload):
        init_image, mask = _img2img(payload, fields, width, height, ctx, options)
    controlnet = _controlnet(payload, ctx, init_image)
    if controlnet is not None:
        fields["controls"], fields["reference"] = controlnet.controls, controlnet.reference
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        error = error_from_validation(exc)
        raise (controlnet.rename(error) if controlnet is not None else a1111_field(error)) from None
    return Plan(kind, payload, request, payload.n_iter, options, init_image, mask, controlnet)


def _controlnet(payload: Txt2ImgPayload, ctx: Context, init_image: Image.Image | None) -> ControlNetPlan | None:
    key = controlnet_key(payload.alwayson_scripts or {})
    if key is None:
        return None
    script = payload.alwayson_scripts[key]
    if not isinstance(script, dict):
        raise InvalidRequest(f"alwayson_scripts.{key} must be an object with `args`", field=f"alwayson_scripts.{key}")
    if ctx.controlnet is None:  # generation._context gathers it for every call that names the script
        raise LatentBridgeError("the ControlNet models were not gathered for this call", code=ErrorCode.internal)
    plan = ControlNetPlan.build(key, script.get("args"), ctx.controlnet, init_image)
    return plan if plan.units else None


def _img2img(payload: Img2ImgPayload, fields: dict[str, Any], width: int, height: int, ctx: Context,
             options: dict[str, Any]) -> tuple[Image.Image, Image.Image | None]:
    if not payload.init_images:
        raise A1111Error("Init image not found", status=404, field="init_images",
                         message="img2img needs at least one image in init_images")
    if payload.inpainting_fill not in (0, 1, 2, 3):
        raise InvalidRequest("inpainting_fill must be 0, 1, 2 or 3", field="inpainting_fill")
    if payload.resize_mode not in (0, 1, 2, 3):
        raise InvalidRequest("resize_mode must be 0, 1, 2 or 3", field="resize_mode")
    if payload.initial_noise_multiplier not in (None, 1, 1.0):
        raise Unsupported("initial_noise_multiplier other than 1 is not supported", field="initial_noise_multiplier")
    init_image = decode_b64_image(payload.init_images[0], "init_images", ctx.max_pixels)
    init_image = fit_image(init_image.convert("RGB"), width, height, payload.resize_mode)
    strength = payload.denoising_strength if payload.denoising_strength is not None else 0.75
    fields["mode"], fields["strength"] = Mode.img2img, strength
    if options.get("img2img_fix_steps") and strength > 0:
        # A1111: "do exactly the amount of steps the slider specifies" (more steps, cut by strength)
        fields["steps"] = int(payload.steps / min(strength, 0.999))
    if not payload.mask:
        return init_image, None
    mask = binary_mask(decode_b64_image(payload.mask, "mask", ctx.max_pixels))
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
    return init_image, mask
