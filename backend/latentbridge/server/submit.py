"""Turning a remote client's request + image bytes into a queued job (shared by ws, REST, A1111)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import images
from ..jobs import Job
from ..protocol import GenerationRequest, LatentBridgeError
from .app import ENGINE_KEY, JOBS_KEY, SETTINGS_KEY
from .security import check_lora_names, resolve_control_name, resolve_model_name


async def decode_upload(app: web.Application, data: bytes, field: str, *, as_mask: bool = False):
    """Decode untrusted image bytes off the event loop; errors name `field`."""
    settings = app[SETTINGS_KEY]

    def work():
        image = images.decode_image(data, max_pixels=settings.max_pixels)
        return images.mask_channel(image) if as_mask else image

    try:
        return await asyncio.to_thread(work)
    except LatentBridgeError as exc:
        exc.field = field
        raise


def resolve_remote_request(app: web.Application, request: GenerationRequest) -> GenerationRequest:
    """Remote clients may only name models inside the model folders, plain LoRA file names, and
    ControlNets / IP-Adapters that are built in, configured or inside the ControlNet folders."""
    settings = app[SETTINGS_KEY]
    check_lora_names([lora.name for lora in request.loras])
    for i, unit in enumerate(request.controls):
        if unit.model is not None:
            resolve_control_name(unit.model, settings, f"controls.{i}.model")
    if request.reference is not None and request.reference.model is not None:
        resolve_control_name(request.reference.model, settings, "reference.model", what="IP-Adapter")
    if request.model is None:
        return request
    loaded = app[ENGINE_KEY].status.name
    return request.model_copy(update={"model": resolve_model_name(request.model, settings, loaded)})


async def submit_job(app: web.Application, request: GenerationRequest, init_bytes: bytes | None,
                     mask_bytes: bytes | None, *, owner: str, priority: str = "normal",
                     fields: tuple[str, str] = ("init_image", "mask"), images: dict[str, bytes] | None = None,
                     image_field: str = "images") -> Job:
    """`images` holds the other uploads by role (control.0, reference.0, ...); errors about them
    name `<image_field>.<role>`."""
    request = resolve_remote_request(app, request)
    init_image = await decode_upload(app, init_bytes, fields[0]) if init_bytes is not None else None
    mask = await decode_upload(app, mask_bytes, fields[1], as_mask=True) if mask_bytes is not None else None
    others = {role: await decode_upload(app, data, f"{image_field}.{role}") for role, data in (images or {}).items()}
    jobs = app[JOBS_KEY]
    try:
        return await jobs.submit(request, init_image, mask, owner=owner, priority=priority, images=others)
    except LatentBridgeError as exc:
        if exc.code.value == "queue_full":
            exc.retry_after_s = jobs.retry_after_s()  # type: ignore[attr-defined]
        raise
