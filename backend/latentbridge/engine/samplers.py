"""Sampler names → diffusers schedulers, made fresh for every request.

Schedulers hold per-run state and are not thread-safe, so the engine never reuses one between
calls: each request gets a new instance built from the loaded model's own scheduler config (which
carries its training schedule: betas, prediction type, timestep spacing).
"""

from __future__ import annotations

import importlib.util

from ..protocol import Sampler, Unsupported

# sampler → (diffusers class name, config overrides). Names follow A1111/k-diffusion usage.
_SCHEDULERS: dict[Sampler, tuple[str, dict]] = {
    Sampler.euler: ("EulerDiscreteScheduler", {}),
    Sampler.euler_a: ("EulerAncestralDiscreteScheduler", {}),
    Sampler.dpmpp_2m: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    Sampler.dpmpp_2m_karras: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    Sampler.dpmpp_sde_karras: ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    Sampler.ddim: ("DDIMScheduler", {}),
    Sampler.unipc: ("UniPCMultistepScheduler", {}),
    Sampler.lcm: ("LCMScheduler", {}),
    Sampler.heun: ("HeunDiscreteScheduler", {}),
    Sampler.pndm: ("PNDMScheduler", {"skip_prk_steps": True}),
}

# Flow-matching families (SD3, Flux) sample with diffusers' flow-matching Euler scheduler:
# "euler" is its deterministic form, "euler_a" its stochastic one (re-noises each step, like an
# ancestral sampler). The DDPM-style solvers above assume a noise schedule these models lack, and
# diffusers' other flow schedulers do not take the custom sigmas / shift the SD3 and Flux
# pipelines pass them.
FLOW_FAMILIES = {"sd3", "flux"}
FLOW_SAMPLERS = (Sampler.euler, Sampler.euler_a)


def available_samplers() -> list[Sampler]:
    """Samplers usable in this installation (the SDE one needs `torchsde`, a dependency that a
    hand-made environment may lack)."""
    return [s for s in Sampler if s is not Sampler.dpmpp_sde_karras or _has_torchsde()]


def _has_torchsde() -> bool:
    return importlib.util.find_spec("torchsde") is not None


def family_samplers(family: str) -> list[Sampler]:
    """Samplers a model of `family` can use in this installation."""
    if family in FLOW_FAMILIES:
        return list(FLOW_SAMPLERS)
    return available_samplers()


def make_scheduler(sampler: Sampler, base_scheduler, family: str, seed: int = 0):
    """A new scheduler for one request, configured from the model's own `base_scheduler`.
    `seed` seeds the SDE sampler's Brownian noise, which would otherwise come from a random seed."""
    import diffusers

    sampler = Sampler(sampler)
    if family in FLOW_FAMILIES:
        if sampler not in FLOW_SAMPLERS:
            raise Unsupported(
                f"sampler {sampler.value!r} is not available for {family} (flow matching): use 'euler' or 'euler_a'",
                field="sampler",
            )
        # The model's own config carries its shift (and Flux's resolution-dependent shift).
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            base_scheduler.config, stochastic_sampling=sampler is Sampler.euler_a
        )
    if sampler is Sampler.dpmpp_sde_karras and not _has_torchsde():
        raise Unsupported("sampler 'dpmpp_sde_karras' needs the torchsde package: pip install torchsde", field="sampler")
    class_name, overrides = _SCHEDULERS[sampler]
    cls = getattr(diffusers, class_name)
    config = dict(base_scheduler.config)
    # A model trained for v-prediction keeps it; ancestral/karras choices come from the sampler.
    config.pop("use_karras_sigmas", None)
    if sampler is Sampler.dpmpp_sde_karras:
        overrides = {**overrides, "noise_sampler_seed": seed}
    return cls.from_config(config, **overrides)
