"""AUTOMATIC1111 sampler and scheduler names, and the /samplers and /schedulers routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ...protocol import InvalidRequest, Sampler, Unsupported
from ..app import capabilities



@dataclass(frozen=True)
class A1111Sampler:
    name: str
    sampler: Sampler
    aliases: tuple[str, ...] = ()
    karras: Sampler | None = None  # the variant chosen by scheduler "Karras"
    options: dict[str, str] = field(default_factory=dict)


SAMPLERS: tuple[A1111Sampler, ...] = (
    A1111Sampler("Euler a", Sampler.euler_a, ("k_euler_a", "k_euler_ancestral")),
    A1111Sampler("Euler", Sampler.euler, ("k_euler",)),
    A1111Sampler("Heun", Sampler.heun, ("k_heun",)),
    A1111Sampler("DPM++ 2M", Sampler.dpmpp_2m, ("k_dpmpp_2m",), karras=Sampler.dpmpp_2m_karras),
    A1111Sampler("DPM++ 2M Karras", Sampler.dpmpp_2m_karras, ("k_dpmpp_2m_ka",), options={"scheduler": "karras"}),
    # diffusers has only the Karras-sigma flavour of DPM++ SDE; A1111 users almost always pick it.
    A1111Sampler("DPM++ SDE", Sampler.dpmpp_sde_karras, ("k_dpmpp_sde",), karras=Sampler.dpmpp_sde_karras,
                 options={"scheduler": "karras"}),
    A1111Sampler("DPM++ SDE Karras", Sampler.dpmpp_sde_karras, ("k_dpmpp_sde_ka",), options={"scheduler": "karras"}),
    A1111Sampler("DDIM", Sampler.ddim, ("ddim",)),
    A1111Sampler("PLMS", Sampler.pndm, ("plms",)),
    A1111Sampler("UniPC", Sampler.unipc, ("unipc",)),
    A1111Sampler("LCM", Sampler.lcm, ("k_lcm",)),
)
_SAMPLER_BY_NAME = {n.lower(): s for s in SAMPLERS for n in (s.name, *s.aliases)}
# Our sampler → the A1111 name the infotext and `parameters` report.
A1111_NAME = {s.sampler: s.name for s in reversed(SAMPLERS)}

# Schedulers (A1111 ≥ 1.9 sends `scheduler` separately). "Automatic"/"Uniform" keep the
# sampler's own schedule; "Karras" picks the Karras variant where diffusers has one.
SCHEDULERS = (
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
    {"name": "uniform", "label": "Uniform", "aliases": None, "default_rho": -1, "need_inner_model": True},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
)
_DEFAULT_SCHEDULERS = {"", "automatic", "uniform"}


def resolve_sampler(sampler_name: str | None, scheduler: str | None) -> Sampler:
    """A1111 sampler (+ scheduler) → our Sampler, or a typed error naming the field."""
    name = (sampler_name or "Euler").strip()
    entry = _SAMPLER_BY_NAME.get(name.lower())
    sched = (scheduler or "").strip().lower()
    if entry is None and name.lower().endswith(" karras"):
        # Old-style "<sampler> Karras" names for samplers listed without the suffix.
        entry = _SAMPLER_BY_NAME.get(name[: -len(" karras")].lower())
        sched = "karras" if entry is not None else sched
    if entry is None:
        names = ", ".join(s.name for s in SAMPLERS)
        raise InvalidRequest(f"sampler {name!r} not found; available: {names}", field="sampler_name")
    if sched in _DEFAULT_SCHEDULERS:
        return entry.sampler
    if sched == "karras":
        if entry.karras is None and entry.options.get("scheduler") != "karras":
            raise Unsupported(f"scheduler 'Karras' is not available with sampler {entry.name!r}", field="scheduler")
        return entry.karras or entry.sampler
    raise Unsupported(f"scheduler {scheduler!r} is not supported; use Automatic or Karras", field="scheduler")



async def samplers(request: web.Request) -> web.Response:
    # Only what the loaded model can use in this installation (see capabilities()).
    usable = set(capabilities(request.app).samplers)
    return web.json_response([{"name": s.name, "aliases": list(s.aliases), "options": s.options}
                              for s in SAMPLERS if s.sampler in usable])


async def schedulers(request: web.Request) -> web.Response:
    return web.json_response(list(SCHEDULERS))
