"""Sampler and schedule names → diffusers schedulers, made fresh for every request.

Schedulers hold per-run state and are not thread-safe, so the engine never reuses one between
calls: each request gets a new instance built from the loaded model's own scheduler config (which
carries its training schedule: betas, prediction type, timestep spacing), with the sampler's solver
settings and the requested schedule on top.

Every sampler here is reproducible: its random draws (ancestral and SDE noise) come from the
request's seeded generators, never from torch's global RNG.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

from ..protocol import KARRAS_SAMPLERS, Sampler, Schedule, Unsupported

# sampler → (diffusers class name, solver settings). Names follow A1111/k-diffusion usage; the
# mapping is the one diffusers documents for A1111's samplers.
_SOLVERS: dict[Sampler, tuple[str, dict]] = {
    Sampler.euler: ("EulerDiscreteScheduler", {}),
    Sampler.euler_a: ("EulerAncestralDiscreteScheduler", {}),
    Sampler.lms: ("LMSDiscreteScheduler", {}),
    Sampler.heun: ("HeunDiscreteScheduler", {}),
    Sampler.dpm2: ("KDPM2DiscreteScheduler", {}),
    Sampler.dpm2_a: ("KDPM2AncestralDiscreteScheduler", {}),
    # diffusers has no ancestral single-step DPM++; its single-step 2nd-order solver is the closest.
    Sampler.dpmpp_2s_a: ("DPMSolverSinglestepScheduler",
                         {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True}),
    Sampler.dpmpp_sde: ("DPMSolverSDEScheduler", {}),
    Sampler.dpmpp_2m: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    Sampler.dpmpp_2m_sde: ("DPMSolverMultistepScheduler",
                           {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}),
    Sampler.dpmpp_2m_sde_heun: ("DPMSolverMultistepScheduler",
                                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}),
    Sampler.dpmpp_3m_sde: ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    Sampler.ddim: ("DDIMScheduler", {}),
    Sampler.pndm: ("PNDMScheduler", {"skip_prk_steps": True}),
    Sampler.unipc: ("UniPCMultistepScheduler", {}),
    Sampler.lcm: ("LCMScheduler", {}),
    # Trajectory Consistency Distillation (TCD LoRAs; Hyper-SD's one-step LoRA): stochastic with the
    # scheduler's default gamma (eta 0.3), drawn from the request's generators.
    Sampler.tcd: ("TCDScheduler", {}),
}

# schedule → the scheduler config it sets (only on schedulers that have those options).
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_SCHEDULE_CONFIG: dict[Schedule, dict] = {
    Schedule.karras: {"use_karras_sigmas": True},
    Schedule.exponential: {"use_exponential_sigmas": True},
    Schedule.beta: {"use_beta_sigmas": True},
    Schedule.linspace: {"timestep_spacing": "linspace"},
    Schedule.leading: {"timestep_spacing": "leading"},
    Schedule.trailing: {"timestep_spacing": "trailing"},
}

# Flow-matching families (SD3, Flux) sample with diffusers' flow-matching Euler scheduler:
# "euler" is its deterministic form, "euler_a" its stochastic one (re-noises each step, like an
# ancestral sampler). The DDPM-style solvers above assume a noise schedule these models lack, and
# diffusers' other flow schedulers do not take the custom sigmas / shift the SD3 and Flux
# pipelines pass them.
FLOW_FAMILIES = {"sd3", "flux"}
FLOW_SAMPLERS = (Sampler.euler, Sampler.euler_a)
_FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def solver(sampler: Sampler, schedule: Schedule = Schedule.default) -> tuple[Sampler, Schedule]:
    """The canonical (sampler, schedule): the older `*_karras` names become their base + karras."""
    sampler, schedule = Sampler(sampler), Schedule(schedule)
    if sampler in KARRAS_SAMPLERS:
        return KARRAS_SAMPLERS[sampler], Schedule.karras
    return sampler, schedule


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _has_torchsde() -> bool:
    return _has("torchsde")


def _needs_torchsde(sampler: Sampler) -> bool:
    return solver(sampler)[0] is Sampler.dpmpp_sde


def available_samplers() -> list[Sampler]:
    """Samplers usable in this installation (the DPM++ SDE one needs `torchsde`, a dependency that
    a hand-made environment may lack)."""
    return [s for s in Sampler if not _needs_torchsde(s) or _has_torchsde()]


def family_samplers(family: str) -> list[Sampler]:
    """Samplers a model of `family` can use in this installation."""
    if family in FLOW_FAMILIES:
        return list(FLOW_SAMPLERS)
    return available_samplers()


@functools.cache
def _options(class_name: str) -> frozenset[str]:
    import diffusers

    return frozenset(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def _class_name(sampler: Sampler, family: str) -> str:
    return _FLOW_SCHEDULER if family in FLOW_FAMILIES else _SOLVERS[solver(sampler)[0]][0]


def schedules_for(sampler: Sampler, family: str | None = None) -> list[Schedule]:
    """The schedules `sampler` takes (for a model of `family`; SD-style when None)."""
    if Sampler(sampler) in KARRAS_SAMPLERS:
        return [Schedule.default, Schedule.karras]  # the older names carry theirs
    options = _options(_class_name(Sampler(sampler), family or "sd1"))
    found = [Schedule.default]
    for schedule, config in _SCHEDULE_CONFIG.items():
        if not set(config) <= options:
            continue
        if schedule is Schedule.beta and not _has("scipy"):
            continue
        found.append(schedule)
    return found


def check_sampler(sampler: Sampler, schedule: Schedule, family: str, field: str = "sampler") -> None:
    """Raise Unsupported (naming the field) when the model family cannot use this combination."""
    if family in FLOW_FAMILIES and Sampler(sampler) not in FLOW_SAMPLERS:
        raise Unsupported(
            f"sampler {Sampler(sampler).value!r} is not available for {family} (flow matching): use 'euler' or 'euler_a'",
            field=field,
        )
    if _needs_torchsde(sampler) and not _has_torchsde():
        raise Unsupported(f"sampler {Sampler(sampler).value!r} needs the torchsde package: pip install torchsde", field=field)
    base, effective = solver(sampler, schedule)
    if effective not in schedules_for(base, family):
        usable = ", ".join(s.value for s in schedules_for(base, family))
        schedule_field = field.rsplit(".", 1)[0] + ".schedule" if "." in field else "schedule"
        raise Unsupported(f"schedule {effective.value!r} is not available with sampler {base.value!r} (usable: {usable})",
                          field=schedule_field)


def make_scheduler(sampler: Sampler, base_scheduler, family: str, seed: int = 0,
                   schedule: Schedule = Schedule.default):
    """A new scheduler for one request, configured from the model's own `base_scheduler`.
    `seed` seeds the SDE sampler's Brownian noise, which would otherwise come from a random seed."""
    import diffusers

    check_sampler(sampler, schedule, family)
    base, schedule = solver(sampler, schedule)
    config = dict(base_scheduler.config)
    # The schedule is the request's: the model's own sigma choices would otherwise linger.
    for flag in _SIGMA_FLAGS:
        config.pop(flag, None)
    overrides = dict(_SCHEDULE_CONFIG.get(schedule, {}))
    if family in FLOW_FAMILIES:
        # The model's own config carries its shift (and Flux's resolution-dependent shift).
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            config, stochastic_sampling=base is Sampler.euler_a, **overrides
        )
    class_name, solver_config = _SOLVERS[base]
    overrides = {**solver_config, **overrides}
    if base is Sampler.dpmpp_sde:
        overrides["noise_sampler_seed"] = seed
    return getattr(diffusers, class_name).from_config(config, **overrides)
