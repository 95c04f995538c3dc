"""AUTOMATIC1111's names for our samplers, schedules and upscalers, and its infotext: the
"parameters" text A1111 writes into every PNG ("prompt / Negative prompt: ... / Steps: 20, Sampler:
..."), written and read back here. Torch-free and HTTP-free: the PNG writer (images.py), the CLI
and the A1111-compatible routes all use this one table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import KARRAS_SAMPLERS, LATENT_UPSCALERS, GenerationRequest, Mode, Sampler, Schedule


@dataclass(frozen=True)
class A1111Sampler:
    name: str
    sampler: Sampler
    aliases: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)  # as A1111's /samplers lists them
    automatic: tuple[Schedule, ...] = (Schedule.default,)  # what "Automatic" means: first one the solver takes


_UNIFORM = (Schedule.linspace, Schedule.default)  # A1111's k-diffusion default: timesteps spread evenly
_T = "True"

# In A1111's order (k-diffusion samplers, then the timestep ones, then LCM).
SAMPLERS: tuple[A1111Sampler, ...] = (
    A1111Sampler("DPM++ 2M", Sampler.dpmpp_2m, ("k_dpmpp_2m",), {"scheduler": "karras"}, (Schedule.karras,)),
    A1111Sampler("DPM++ SDE", Sampler.dpmpp_sde, ("k_dpmpp_sde",),
                 {"scheduler": "karras", "second_order": _T, "brownian_noise": _T}, (Schedule.karras,)),
    A1111Sampler("DPM++ 2M SDE", Sampler.dpmpp_2m_sde, ("k_dpmpp_2m_sde",),
                 {"scheduler": "exponential", "brownian_noise": _T}, (Schedule.exponential,)),
    A1111Sampler("DPM++ 2M SDE Heun", Sampler.dpmpp_2m_sde_heun, ("k_dpmpp_2m_sde_heun",),
                 {"scheduler": "exponential", "brownian_noise": _T, "solver_type": "heun"}, (Schedule.exponential,)),
    A1111Sampler("DPM++ 2S a", Sampler.dpmpp_2s_a, ("k_dpmpp_2s_a",), {"uses_ensd": _T, "second_order": _T}, _UNIFORM),
    A1111Sampler("DPM++ 3M SDE", Sampler.dpmpp_3m_sde, ("k_dpmpp_3m_sde",),
                 {"scheduler": "exponential", "discard_next_to_last_sigma": _T, "brownian_noise": _T},
                 (Schedule.exponential,)),
    A1111Sampler("Euler a", Sampler.euler_a, ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": _T}, _UNIFORM),
    A1111Sampler("Euler", Sampler.euler, ("k_euler",), {}, _UNIFORM),
    A1111Sampler("LMS", Sampler.lms, ("k_lms",), {}, _UNIFORM),
    A1111Sampler("Heun", Sampler.heun, ("k_heun",), {"second_order": _T}, _UNIFORM),
    A1111Sampler("DPM2", Sampler.dpm2, ("k_dpm_2",),
                 {"scheduler": "karras", "discard_next_to_last_sigma": _T, "second_order": _T}, (Schedule.karras,)),
    A1111Sampler("DPM2 a", Sampler.dpm2_a, ("k_dpm_2_a",),
                 {"scheduler": "karras", "discard_next_to_last_sigma": _T, "uses_ensd": _T, "second_order": _T},
                 (Schedule.karras,)),
    A1111Sampler("DDIM", Sampler.ddim, ("ddim",)),
    A1111Sampler("PLMS", Sampler.pndm, ("plms",)),
    A1111Sampler("UniPC", Sampler.unipc, ("unipc",)),
    A1111Sampler("LCM", Sampler.lcm, ("k_lcm",), {}, _UNIFORM),
    A1111Sampler("TCD", Sampler.tcd, ("tcd",), {}, _UNIFORM),  # as Forge names it
)
_BY_SAMPLER = {s.sampler: s for s in SAMPLERS}


@dataclass(frozen=True)
class A1111Scheduler:
    name: str
    label: str
    schedule: Schedule | None  # None: "Automatic" (the sampler's own) or one diffusers cannot do
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1
    need_inner_model: bool = False
    supported: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "aliases": list(self.aliases) if self.aliases else None,
                "default_rho": self.default_rho, "need_inner_model": self.need_inner_model}


# A1111 >= 1.9's schedulers, mapped onto diffusers' spacing / sigma options (as diffusers documents).
SCHEDULERS: tuple[A1111Scheduler, ...] = (
    A1111Scheduler("automatic", "Automatic", None),
    A1111Scheduler("uniform", "Uniform", Schedule.linspace, need_inner_model=True),
    A1111Scheduler("karras", "Karras", Schedule.karras, default_rho=7.0),
    A1111Scheduler("exponential", "Exponential", Schedule.exponential),
    A1111Scheduler("polyexponential", "Polyexponential", None, default_rho=1.0, supported=False),
    A1111Scheduler("sgm_uniform", "SGM Uniform", Schedule.trailing, ("SGMUniform",), need_inner_model=True),
    A1111Scheduler("kl_optimal", "KL Optimal", None, supported=False),
    A1111Scheduler("align_your_steps", "Align Your Steps", None, supported=False),
    A1111Scheduler("simple", "Simple", Schedule.trailing, need_inner_model=True),
    A1111Scheduler("normal", "Normal", Schedule.linspace, need_inner_model=True),
    A1111Scheduler("ddim", "DDIM", Schedule.leading, need_inner_model=True),
    A1111Scheduler("beta", "Beta", Schedule.beta, need_inner_model=True),
    A1111Scheduler("turbo", "Turbo", None, need_inner_model=True, supported=False),
    A1111Scheduler("align_your_steps_GITS", "Align Your Steps GITS", None, supported=False),
    A1111Scheduler("align_your_steps_11", "Align Your Steps 11", None, supported=False),
    A1111Scheduler("align_your_steps_32", "Align Your Steps 32", None, supported=False),
)
AUTOMATIC = SCHEDULERS[0]
# Our schedule → the A1111 label written in infotexts (the first scheduler mapped to it).
SCHEDULE_LABELS: dict[Schedule, str] = {Schedule.default: "Automatic"}
for _s in SCHEDULERS:
    if _s.schedule is not None:
        SCHEDULE_LABELS.setdefault(_s.schedule, _s.label)


def find_scheduler(name: str | None) -> A1111Scheduler | None:
    """A1111 scheduler by name, label or alias (any case); None when unknown."""
    key = (name or "").strip().lower()
    if key in ("", "automatic"):
        return AUTOMATIC
    for s in SCHEDULERS:
        if key in (s.name.lower(), s.label.lower(), *(a.lower() for a in s.aliases or ())):
            return s
    return None


def find_sampler(name: str) -> A1111Sampler | None:
    key = name.strip().lower()
    return next((s for s in SAMPLERS if key in (s.name.lower(), *(a.lower() for a in s.aliases))), None)


def split_sampler_name(name: str | None, scheduler: str | None) -> tuple[str, A1111Scheduler | None]:
    """A1111's reading of "DPM++ 2M Karras": the sampler name, and the scheduler its suffix names
    (which wins over `scheduler`). An unknown `scheduler` name is None (A1111 then uses Automatic)."""
    text = (name or "").strip()
    found = find_scheduler(scheduler)
    for s in SCHEDULERS[1:]:
        for option in (s.label, *(s.aliases or ())):
            if text.lower().endswith(" " + option.lower()) and find_sampler(text) is None:
                return text[: -len(option) - 1].strip(), s
    return text, found


def sampler_name(sampler: Sampler) -> str:
    base = KARRAS_SAMPLERS.get(sampler, sampler)
    entry = _BY_SAMPLER.get(base)
    return entry.name if entry else base.value


def effective_schedule(sampler: Sampler, schedule: Schedule) -> Schedule:
    return Schedule.karras if sampler in KARRAS_SAMPLERS else schedule


# ---------------------------------------------------------------------------------------------
# Upscaler names

_LATENT_NAMES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                 "Latent (nearest)", "Latent (nearest-exact)")
LATENT_UPSCALE_MODES: dict[str, str] = dict(zip(_LATENT_NAMES, LATENT_UPSCALERS))  # A1111 → ours
_BUILTIN_NAMES = {"lanczos": "Lanczos", "nearest": "Nearest"}


def upscaler_label(name: str) -> str:
    """Our hires upscaler name as A1111 writes it."""
    for label, ours in LATENT_UPSCALE_MODES.items():
        if ours == name:
            return label
    return _BUILTIN_NAMES.get(name.lower(), name)


# ---------------------------------------------------------------------------------------------
# Writing


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def quote(value: Any) -> str:
    """A1111's quoting: values with a comma, colon or newline become JSON strings."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return text if text.startswith('"') and text.endswith('"') else json.dumps(text, ensure_ascii=False)


def model_label(model: str | None) -> str | None:
    """A model as A1111 names it in infotexts: a file's or folder's name without the extension."""
    if not model:
        return None
    path = Path(model)
    if path.is_absolute():
        return path.stem if path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin") else path.name
    return model


def a1111_parameters(request: GenerationRequest, seed: int | None, extra: dict[str, Any] | None = None) -> str:
    """AUTOMATIC1111's `parameters` text for a result, so other tools can read our PNGs.

    "prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ..."
    The negative-prompt line is left out when empty, as A1111 does. `extra` adds or replaces fields
    (the A1111 routes add the model, VAE and LoRA hashes); a None value removes one.
    """
    # LoRAs travel in the prompt as A1111 writes them, so A1111 applies them when the text is pasted.
    lines = [request.prompt + "".join(f" <lora:{Path(lo.name).stem}:{_number(lo.weight)}>" for lo in request.loras)]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    schedule = effective_schedule(request.sampler, request.schedule)
    fields: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": sampler_name(request.sampler),
        "Schedule type": SCHEDULE_LABELS[schedule] if schedule is not Schedule.default else None,
        "CFG scale": _number(request.guidance),
        "Seed": seed if seed is not None else (request.seed if request.seed is not None else -1),
        "Size": f"{request.width}x{request.height}",
        "Model hash": None,
        "Model": model_label(request.model),
        "VAE hash": None,
        "VAE": Path(request.vae).name if request.vae else None,
        "Denoising strength": _number(request.strength) if request.mode is not Mode.txt2img else None,
        "Mask blur": request.mask.blur if request.mode is Mode.inpaint else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
    }
    if request.mode is Mode.outpaint:
        o = request.outpaint
        fields["Outpaint"] = f"{o.left},{o.top},{o.right},{o.bottom}"
    if request.seamless.value != "none":
        fields["Tiling"] = request.seamless.value
    hires = request.hires
    if hires is not None:
        fields["Denoising strength"] = _number(hires.strength)
        if hires.width or hires.height:
            fields["Hires resize"] = f"{hires.width}x{hires.height}"
        else:
            fields["Hires upscale"] = _number(hires.scale)
        if hires.steps:
            fields["Hires steps"] = hires.steps
        fields["Hires upscaler"] = upscaler_label(hires.upscaler)
        if hires.prompt is not None and hires.prompt != request.prompt:
            fields["Hires prompt"] = hires.prompt
        if hires.negative_prompt is not None and hires.negative_prompt != request.negative_prompt:
            fields["Hires negative prompt"] = hires.negative_prompt
        if hires.sampler is not None:
            fields["Hires sampler"] = sampler_name(hires.sampler)
        if hires.schedule is not None:
            fields["Hires schedule type"] = SCHEDULE_LABELS[effective_schedule(hires.sampler or request.sampler, hires.schedule)]
    if request.batch_size > 1:
        fields["Batch size"] = request.batch_size
    for key, value in (extra or {}).items():
        fields[key] = value
    fields["Version"] = "latentbridge"
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading (A1111's parse_generation_parameters)

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# What A1111 fills in when an infotext leaves a field out.
_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full",
    "VAE Decoder": "Full", "FP8 weight": "Disable", "Refiner switch by sampling steps": False,
}


def parse_parameters(text: str) -> dict[str, Any]:
    """An infotext as A1111's /png-info `parameters`: "Prompt", "Negative prompt", each field (values
    stay strings; "Size: 512x768" becomes "Size-1" and "Size-2"), and A1111's defaults for the rest."""
    res: dict[str, Any] = {}
    prompt, negative, in_negative = [], [], False
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    for key, value in _PARAM.findall(last):
        value = value.strip()
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        size = _SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    res["Prompt"], res["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    for key, value in _DEFAULTS.items():
        res.setdefault(key, value)
    # "DPM++ 2M Karras" is sampler "DPM++ 2M" with schedule type "Karras" (A1111 >= 1.9).
    if "Sampler" in res:
        name, scheduler = split_sampler_name(res["Sampler"], None)
        if scheduler is not None and scheduler is not AUTOMATIC and res["Schedule type"] == "Automatic":
            res["Sampler"], res["Schedule type"] = name, scheduler.label
    return res
