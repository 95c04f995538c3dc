"""Few-step presets (Turbo, LCM, Lightning, Hyper-SD, TCD) and the request a live session renders.

A preset is the scheduler and guidance its distilled model or LoRA was trained for; the LoRA
itself (LCM-LoRA, Lightning, Hyper-SD, TCD) is named in `request.loras` like any LoRA (docs/live.md
lists the public ones). Sources: the model cards and diffusers' docs of each method:
- SD-Turbo / SDXL-Turbo: Euler with trailing timesteps, 1-4 steps, guidance 0 (no CFG).
- LCM checkpoints and LCM-LoRA: LCMScheduler, 2-8 steps, guidance 1 (no CFG).
- SDXL-Lightning: Euler with trailing timesteps, as many steps as the LoRA was distilled for, guidance 0.
- Hyper-SD N-step LoRAs: DDIM with trailing timesteps, guidance 0.
- TCD LoRAs: TCDScheduler (gamma 0.3), 2-8 steps, guidance 0.

`steps` of a preset (and of `LiveOptions.steps`) counts the denoising steps a frame RUNS: img2img
runs `int(request.steps * strength)` of the schedule, so `request.steps` is set to the smallest
count that runs that many at the session's strength.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import (GenerationRequest, InvalidRequest, LiveOptions, LivePreset, Mode, Sampler, Schedule, Seamless,
                        Unsupported)
from .generate import steps_run


@dataclass(frozen=True)
class Preset:
    sampler: Sampler
    schedule: Schedule
    guidance: float
    steps: int  # denoising steps a frame runs by default


PRESETS: dict[LivePreset, Preset] = {
    LivePreset.turbo: Preset(Sampler.euler, Schedule.trailing, 0.0, 1),
    LivePreset.lcm: Preset(Sampler.lcm, Schedule.default, 1.0, 4),
    LivePreset.lightning: Preset(Sampler.euler, Schedule.trailing, 0.0, 4),
    LivePreset.hyper: Preset(Sampler.ddim, Schedule.trailing, 0.0, 4),
    LivePreset.tcd: Preset(Sampler.tcd, Schedule.default, 0.0, 4),
}


def schedule_steps(run: int, strength: float, family: str, max_steps: int) -> int:
    """The smallest `request.steps` that runs `run` steps at `strength` (img2img's rounding),
    at most `max_steps`."""
    steps = run
    while steps < max_steps and steps_run(family, steps, strength) < run:
        steps += 1
    return steps


def check_live_request(request: GenerationRequest) -> None:
    """What a live session can render: img2img of each frame, or txt2img steered by control units
    whose maps come with each frame. Raises a typed error naming the field."""
    if request.mode is Mode.txt2img and not request.controls:
        raise Unsupported("a live session renders its frames: use mode img2img, or txt2img with control units "
                          "(their maps come with each frame)", field="request.mode")
    if request.mode not in (Mode.img2img, Mode.txt2img):
        raise Unsupported(f"mode {request.mode.value} is not available in live sessions (img2img, or txt2img with "
                          "control units)", field="request.mode")
    if request.batch_size != 1:
        raise Unsupported("a live session renders one image per frame: batch_size must be 1", field="request.batch_size")
    if request.hires is not None:
        raise Unsupported("hires (a second pass) is not available in live sessions", field="request.hires")
    if request.reference is not None:
        raise Unsupported("reference images are not available in live sessions", field="request.reference")
    if request.seamless is not Seamless.none:
        raise Unsupported("seamless tiling is not available in live sessions", field="request.seamless")


def live_request(request: GenerationRequest, options: LiveOptions, family: str, max_steps: int) -> GenerationRequest:
    """The request every frame of a session renders: the preset's sampler, schedule and guidance,
    and the schedule length that runs the wanted steps. The seed must already be set."""
    check_live_request(request)
    if options.decoder == "taesd" and request.vae is not None:
        raise InvalidRequest("request.vae has no effect when live.decoder is taesd (the tiny autoencoder decodes): "
                             "leave it out, or use live.decoder vae", field="request.vae")
    preset = PRESETS.get(options.preset)
    updates: dict = {}
    if preset is not None:
        updates.update(sampler=preset.sampler, schedule=preset.schedule, guidance=preset.guidance)
    run = options.steps or (preset.steps if preset is not None else None)
    if run is not None:
        strength = request.strength if request.mode is Mode.img2img else 1.0
        updates["steps"] = schedule_steps(run, strength, family, max_steps)
    return request.model_copy(update=updates)
