"""The generation routes: /txt2img and /img2img.

An A1111 call is translated into our `GenerationRequest` and runs as `n_iter` jobs, one after
another, through the same job queue as every other client (compat.run_job). It blocks its HTTP
request until they finish, as A1111 does, without blocking the event loop; `skip` ends the
current batch and goes on with the next, `interrupt` stops the call.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..jsonio import json_response
from ...infotext import SCHEDULE_LABELS, a1111_parameters, effective_schedule, model_label, sampler_name, upscaler_label
from ...model_hash import ADDNET_SHORT, short
from ...protocol import GenerationRequest, InvalidRequest, LatentBridgeError, Mode, Schedule
from ..compat import run_job
from .controlnet import controlnet_key, unit_context
from .controlnet import png as controlnet_png
from .errors import a1111_route, read_json
from .imaging import encode_result
from .models import checkpoint_for, digest, find_checkpoint
from .options import check_values, effective, store
from .payloads import Img2ImgPayload
from .prompts import read_styles, styles_file
from .samplers import engine_resolver
from .state import Task, engine, owner, settings, state
from .translate import Context, Plan, build_plan


@dataclass
class Outcome:
    pngs: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)


async def run_plan(request: web.Request, plan: Plan) -> Outcome:
    task = Task(plan.kind, plan.n_iter)
    tasks = state(request.app).tasks
    tasks.append(task)
    outcome = Outcome()

    def on_progress(event) -> None:
        task.step, task.total = event.step, event.total

    try:
        for iteration in range(plan.n_iter):
            if task.interrupted:
                break
            job_request = plan.request_for(iteration)
            task.job_no, task.step, task.total, task.skipped = iteration, 0, job_request.steps, False
            result = await run_job(request, job_request, plan.init_image, plan.mask, owner=owner(request),
                                   images=plan.controlnet.images if plan.controlnet else None,
                                   on_submit=lambda job_id: setattr(task, "job_id", job_id), on_progress=on_progress)
            outcome.pngs += result.pngs
            outcome.seeds += result.seeds
            outcome.requests += [result.request] * len(result.pngs)
            if result.state == "cancelled" and not task.skipped:
                break  # interrupted (or cancelled by someone else): A1111 stops the call
    finally:
        tasks.remove(task)
    return outcome


async def _context(request: web.Request, payload: dict[str, Any]) -> tuple[Context, dict[str, Any]]:
    """What the translation needs: options with this call's overrides, styles, the checkpoint."""
    app = request.app
    overrides = payload.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise InvalidRequest("override_settings must be an object", field="override_settings")
    check_values(overrides, "override_settings")
    cfg = settings(app)
    checkpoint = None
    wanted = overrides.get("sd_model_checkpoint") or state(app).selected_checkpoint
    if wanted is not None and not isinstance(wanted, str):
        raise InvalidRequest("sd_model_checkpoint must be a string", field="override_settings.sd_model_checkpoint")
    if wanted:
        checkpoint = (await asyncio.to_thread(find_checkpoint, app, wanted)).name
    styles = await asyncio.to_thread(read_styles, styles_file(cfg)) if payload.get("styles") else []
    scripts = payload.get("alwayson_scripts")
    has_units = isinstance(scripts, dict) and controlnet_key(scripts) is not None
    ctx = Context(max_pixels=cfg.max_pixels, max_iterations=cfg.max_queue, options=effective(app, overrides),
                  styles=styles, resolve_sampler=engine_resolver(app), checkpoint=checkpoint,
                  controlnet=await unit_context(app) if has_units else None)
    return ctx, overrides


def _extras(app: web.Application, req: GenerationRequest) -> dict[str, Any]:
    """The infotext fields only the A1111 layer knows: model, VAE and LoRA hashes (blocking)."""
    cfg = settings(app)
    checkpoint = checkpoint_for(app, req.model) if req.model else None
    sha = digest(app, checkpoint) if checkpoint is not None else None
    extra: dict[str, Any] = {"Model hash": short(sha), "Model": checkpoint.model_name if checkpoint else None}
    if req.vae:
        vae_path = next((Path(v["filename"]) for v in engine(app).vaes() if v["model_name"] == req.vae), None)
        extra["VAE hash"] = short(state(app).hashes.digest(vae_path)) if vae_path is not None else None
        extra["VAE"] = Path(req.vae).stem
    lora_hashes = []
    for lora in req.loras:
        path = next((Path(d) / n for d in cfg.lora_dirs for n in (lora.name, lora.name + ".safetensors")
                     if (Path(d) / n).is_file()), None)
        if path is not None:
            lora_hashes.append(f"{Path(lora.name).stem}: {short(state(app).hashes.digest(path, 'addnet'), ADDNET_SHORT)}")
    if lora_hashes:
        extra["Lora hashes"] = ", ".join(lora_hashes)
    return extra


def build_info(app: web.Application, plan: Plan, outcome: Outcome) -> dict[str, Any]:
    """The `info` object (sent as a JSON string), shaped as A1111's `Processed.js()`. Blocking."""
    req = outcome.requests[0] if outcome.requests else plan.request
    seeds = outcome.seeds or [req.seed or 0]
    requests = outcome.requests or [req]
    extra = _extras(app, req)
    schedule = effective_schedule(req.sampler, req.schedule)
    generation_params: dict[str, Any] = {}
    if schedule is not Schedule.default:
        generation_params["Schedule type"] = SCHEDULE_LABELS[schedule]
    if req.hires is not None:
        generation_params.update({"Denoising strength": req.hires.strength, "Hires upscaler": upscaler_label(req.hires.upscaler)})
        if req.hires.width or req.hires.height:
            generation_params["Hires resize"] = f"{req.hires.width}x{req.hires.height}"
        else:
            generation_params["Hires upscale"] = req.hires.scale
        if req.hires.steps:
            generation_params["Hires steps"] = req.hires.steps
    if req.loras and "Lora hashes" in extra:
        generation_params["Lora hashes"] = extra["Lora hashes"]
    if plan.controlnet is not None:
        extra.update(plan.controlnet.infotext_fields())  # the extension's "ControlNet <i>" fields
        generation_params.update(plan.controlnet.infotext_fields())
    return {
        "prompt": req.prompt,
        "all_prompts": [r.prompt for r in requests],
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [r.negative_prompt for r in requests],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": plan.payload.subseed if plan.payload.subseed != -1 else seeds[0],
        "all_subseeds": seeds,
        "subseed_strength": plan.payload.subseed_strength,
        "width": req.width,
        "height": req.height,
        "sampler_name": sampler_name(req.sampler),
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": bool(plan.payload.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": extra["Model"] or model_label(req.model),
        "sd_model_hash": extra["Model hash"],
        "sd_vae_name": extra.get("VAE"),
        "sd_vae_hash": extra.get("VAE hash"),
        "seed_resize_from_w": plan.payload.seed_resize_from_w,
        "seed_resize_from_h": plan.payload.seed_resize_from_h,
        "denoising_strength": req.strength if req.mode is not Mode.txt2img else plan.payload.denoising_strength,
        "extra_generation_params": generation_params,
        "index_of_first_image": 0,
        "infotexts": [a1111_parameters(r, s, extra) for r, s in zip(requests, seeds)],
        "styles": plan.payload.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": req.clip_skip,
        "is_using_inpainting_conditioning": req.mode is Mode.inpaint,
        "version": "latentbridge",
    }


async def _generate(request: web.Request, kind: str) -> web.Response:
    app = request.app
    data = await read_json(request)
    ctx, overrides = await _context(request, data if isinstance(data, dict) else {})
    plan = await asyncio.to_thread(build_plan, kind, data, ctx)
    try:
        if plan.controlnet is not None:
            await plan.controlnet.make_maps(request, plan.request.width, plan.request.height, plan.request.seed)
        outcome = await run_plan(request, plan)
    except LatentBridgeError as exc:
        raise plan.controlnet.rename(exc) if plan.controlnet is not None else exc
    if not plan.payload.override_settings_restore_afterwards and overrides:
        # A1111 keeps the call's settings afterwards when asked: the checkpoint becomes the selected one.
        if ctx.checkpoint:
            state(app).selected_checkpoint = ctx.checkpoint
        await store(app, overrides)
    info = await asyncio.to_thread(build_info, app, plan, outcome)
    encoded = await asyncio.to_thread(
        lambda: [encode_result(png, text, plan.options) for png, text in zip(outcome.pngs, info["infotexts"])])
    if plan.controlnet is not None and outcome.pngs and not plan.options.get("control_net_no_detectmap"):
        # As the extension does: the detected maps after the images (unit option save_detected_map).
        encoded += await asyncio.to_thread(
            lambda: [encode_result(controlnet_png(m), None, plan.options) for m in plan.controlnet.maps])
    parameters = plan.payload.model_dump(mode="json")
    if isinstance(plan.payload, Img2ImgPayload) and not plan.payload.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    parameters.pop("include_init_images", None)
    return json_response({
        "images": encoded if plan.payload.send_images else [],
        "parameters": parameters,
        "info": json.dumps(info),
    })


@a1111_route
async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, "txt2img")


@a1111_route
async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, "img2img")
