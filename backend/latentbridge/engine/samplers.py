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

# Flow-matching families (SD3, Flux) sample with their own flow-matching Euler scheduler only.
FLOW_FAMILIES = {"sd3", "flux"}
_FLOW_SAMPLERS = {Sampler.euler, Sampler.euler_a}


def available_samplers() -> list[Sampler]:
    """Samplers usable in this installation (the SDE one needs the optional `torchsde`)."""
    return [s for s in Sampler if s is not Sampler.dpmpp_sde_karras or _has_torchsde()]


def _has_torchsde() -> bool:
    return importlib.util.find_spec("torchsde") is not None


def make_scheduler(sampler: Sampler, base_scheduler, family: str):
    """A new scheduler for one request, configured from the model's own `base_scheduler`."""
    import diffusers

    sampler = Sampler(sampler)
    if family in FLOW_FAMILIES:
        if sampler not in _FLOW_SAMPLERS:
            raise Unsupported(
                f"sampler {sampler.value!r} is not available for {family} (flow matching): use 'euler'",
                field="sampler",
            )
        return type(base_scheduler).from_config(base_scheduler.config)
    if sampler is Sampler.dpmpp_sde_karras and not _has_torchsde():
        raise Unsupported("sampler 'dpmpp_sde_karras' needs the torchsde package: pip install torchsde", field="sampler")
    class_name, overrides = _SCHEDULERS[sampler]
    cls = getattr(diffusers, class_name)
    config = dict(base_scheduler.config)
    # A model trained for v-prediction keeps it; ancestral/karras choices come from the sampler.
    config.pop("use_karras_sigmas", None)
    return cls.from_config(config, **overrides)
