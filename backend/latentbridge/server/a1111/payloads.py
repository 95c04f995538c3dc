"""The A1111 request bodies as pydantic models. Every field is optional with A1111's default;
unknown fields are ignored, as A1111 ignores them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ...protocol import LatentBridgeError, parse_object

class Txt2ImgPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    enable_hr: bool = False
    script_name: str | None = None
    script_args: list[Any] = []
    alwayson_scripts: dict[str, Any] = {}
    send_images: bool = True
    save_images: bool = False
    force_task_id: str | None = None
    infotext: str | None = None


class Img2ImgPayload(Txt2ImgPayload):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    denoising_strength: float | None = 0.75
    include_init_images: bool = False


# Our request's field → the A1111 field a client should fix.
_FIELD_NAMES = {
    "guidance": "cfg_scale",
    "strength": "denoising_strength",
    "sampler": "sampler_name",
    "seamless": "tiling",
    "mask.blur": "mask_blur",
    "mask.padding": "inpaint_full_res_padding",
    "model": "override_settings.sd_model_checkpoint",
}


def _a1111_field(exc: LatentBridgeError) -> LatentBridgeError:
    if exc.field in _FIELD_NAMES:
        exc.message = exc.message.replace(exc.field, _FIELD_NAMES[exc.field], 1)
        exc.field = _FIELD_NAMES[exc.field]
    return exc


def parse_payload(model: type[Txt2ImgPayload], data: Any) -> Txt2ImgPayload:
    return parse_object(model, data, what="request body", field="body")
