"""Samplers and schedules: A1111's set on diffusers' schedulers, each reproducible to the bit on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import pixels, small_request

from latentbridge.engine import samplers
from latentbridge.protocol import GenerationRequest, Sampler, Schedule, Unsupported


def _twice(engine, **fields):
    request = small_request(guidance=1.0, steps=3, **fields)
    first = pixels(engine.generate(request).images[0])
    second = pixels(engine.generate(request).images[0])
    return first, second


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_with_a_schedule_it_takes_is_bit_identical_for_a_seed(engine, sampler):
    schedules = samplers.schedules_for(sampler, "sd1")
    # Every sampler: its own schedule and the last one it takes (a sigma or spacing variant).
    for schedule in {schedules[0], schedules[-1]}:
        first, second = _twice(engine, sampler=sampler.value, schedule=schedule.value)
        assert np.array_equal(first, second), f"{sampler.value} / {schedule.value} is not reproducible"


@pytest.mark.parametrize("schedule", list(Schedule))
def test_every_schedule_is_reproducible_and_changes_the_steps(engine, schedule):
    first, second = _twice(engine, sampler="euler", schedule=schedule.value)
    assert np.array_equal(first, second)
    own_spacing = Schedule(engine.model.scheduler.config.timestep_spacing)  # the tiny model's is linspace
    if schedule not in (Schedule.default, own_spacing):
        default, _ = _twice(engine, sampler="euler", schedule="default")
        assert not np.array_equal(first, default), f"schedule {schedule.value} changed nothing"


def test_schedules_set_the_scheduler_options_diffusers_documents(engine):
    base = engine.model.scheduler
    made = {s: samplers.make_scheduler(Sampler.dpmpp_2m, base, "sd1", schedule=s) for s in Schedule}
    assert made[Schedule.karras].config.use_karras_sigmas is True
    assert made[Schedule.exponential].config.use_exponential_sigmas is True
    assert made[Schedule.beta].config.use_beta_sigmas is True
    assert made[Schedule.trailing].config.timestep_spacing == "trailing"
    assert made[Schedule.linspace].config.timestep_spacing == "linspace"
    assert made[Schedule.default].config.timestep_spacing == base.config.timestep_spacing
    assert not made[Schedule.default].config.use_karras_sigmas
    sde = samplers.make_scheduler(Sampler.dpmpp_3m_sde, base, "sd1")
    assert (type(sde).__name__, sde.config.algorithm_type, sde.config.solver_order) == \
        ("DPMSolverMultistepScheduler", "sde-dpmsolver++", 3)
    heun = samplers.make_scheduler(Sampler.dpmpp_2m_sde_heun, base, "sd1")
    assert heun.config.solver_type == "heun"
    assert type(samplers.make_scheduler(Sampler.dpm2_a, base, "sd1")).__name__ == "KDPM2AncestralDiscreteScheduler"
    assert type(samplers.make_scheduler(Sampler.lms, base, "sd1")).__name__ == "LMSDiscreteScheduler"


def test_the_older_karras_names_are_their_base_sampler_with_the_karras_schedule(engine):
    old, _ = _twice(engine, sampler="dpmpp_2m_karras")
    new, _ = _twice(engine, sampler="dpmpp_2m", schedule="karras")
    assert np.array_equal(old, new)
    assert samplers.solver(Sampler.dpmpp_sde_karras) == (Sampler.dpmpp_sde, Schedule.karras)
    assert samplers.schedules_for(Sampler.dpmpp_2m_karras) == [Schedule.default, Schedule.karras]
    with pytest.raises(ValueError, match="implies schedule karras"):
        GenerationRequest(sampler="dpmpp_2m_karras", schedule="beta")


def test_a_schedule_a_sampler_does_not_take_is_a_clear_unsupported(engine):
    assert Schedule.karras not in samplers.schedules_for(Sampler.euler_a)  # diffusers has no Karras Euler a
    with pytest.raises(Unsupported) as info:
        engine.generate(small_request(sampler="euler_a", schedule="karras"))
    assert info.value.field == "schedule" and "euler_a" in info.value.message
    with pytest.raises(Unsupported) as info:
        engine.generate(small_request(sampler="lcm", schedule="exponential"))
    assert info.value.field == "schedule"


def test_flow_models_take_euler_with_sigma_schedules_only():
    assert samplers.family_samplers("flux") == [Sampler.euler, Sampler.euler_a]
    assert Schedule.karras in samplers.schedules_for(Sampler.euler, "sd3")
    assert Schedule.trailing not in samplers.schedules_for(Sampler.euler, "flux")
    with pytest.raises(Unsupported):
        samplers.check_sampler(Sampler.dpmpp_2m, Schedule.default, "flux")


def test_clip_skip_takes_an_earlier_text_encoder_layer(engine, sdxl_engine):
    for model in (engine, sdxl_engine):
        last, _ = _twice(model, sampler="euler")
        skipped, again = _twice(model, sampler="euler", clip_skip=2)
        assert np.array_equal(skipped, again) and not np.array_equal(skipped, last)
        assert not hasattr(model.model.base.text_encoder, "text_model") or \
            type(model.model.base.text_encoder).__name__ != "CLIPTextModel"  # no alias left behind


def test_clip_skip_beyond_the_text_encoders_layers_is_refused_naming_the_field(engine, sdxl_engine):
    from latentbridge.protocol import InvalidRequest

    for model in (engine, sdxl_engine):
        layers = min(getattr(model.model.base, name).config.num_hidden_layers
                     for name in ("text_encoder", "text_encoder_2") if getattr(model.model.base, name, None) is not None)
        model.generate(small_request(guidance=1.0, steps=1, clip_skip=layers))  # the first layer's output: fine
        with pytest.raises(InvalidRequest) as refused:
            model.generate(small_request(guidance=1.0, steps=1, clip_skip=layers + 1))
        assert refused.value.field == "clip_skip" and str(layers) in str(refused.value)
