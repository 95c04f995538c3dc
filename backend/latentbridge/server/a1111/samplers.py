"""A1111 sampler and scheduler names → our (Sampler, Schedule); the /samplers and /schedulers routes.

Names follow A1111 >= 1.9: a sampler plus a separate `scheduler`, with the older "<sampler>
<Scheduler>" spellings ("DPM++ 2M Karras") still read. "Automatic" means what it means in A1111:
the sampler's own choice (Karras for DPM++ 2M, exponential for the SDE ones, evenly spread
timesteps for Euler and friends). A sampler we cannot run answers A1111's own 404 "Sampler not
found"; /samplers lists exactly the ones the loaded model can use.
"""

from __future__ import annotations

from aiohttp import web

from ..jsonio import json_response
from ...infotext import AUTOMATIC, SAMPLERS, SCHEDULERS, A1111Sampler, find_sampler, split_sampler_name
from ...protocol import Sampler, Schedule, Unsupported
from ..app import ENGINE_KEY, capabilities
from .errors import A1111Error, a1111_route

DEFAULT_SAMPLER = "Euler"  # A1111's API default `sampler_index`


def resolve_sampler(sampler_name: str | None, scheduler: str | None, *, usable: list[Sampler] | None = None,
                    schedules=None, field: str = "sampler_name") -> tuple[Sampler, Schedule]:
    """A1111 sampler (+ scheduler) → our (Sampler, Schedule), or A1111's errors naming the field.

    `usable` are the samplers the loaded model can run (all when None); `schedules(sampler)` the
    schedules each takes (all when None)."""
    name, scheduler_entry = split_sampler_name(sampler_name or DEFAULT_SAMPLER, scheduler)
    entry = find_sampler(name)
    if entry is None or (usable is not None and entry.sampler not in usable):
        raise A1111Error("Sampler not found", status=404, field=field,
                         message=f"sampler {name!r} not found; GET /sdapi/v1/samplers lists the ones this server has")
    scheduler_field = "hr_scheduler" if field.startswith("hr_") else "scheduler"
    if scheduler_entry is None:
        scheduler_entry = AUTOMATIC  # A1111 treats an unknown scheduler name as Automatic
    takes = schedules(entry.sampler) if schedules is not None else list(Schedule)
    if scheduler_entry is AUTOMATIC:
        return entry.sampler, next((s for s in entry.automatic if s in takes), Schedule.default)
    if not scheduler_entry.supported:
        raise Unsupported(f"scheduler {scheduler_entry.label!r} is not available here (no diffusers equivalent); "
                          f"GET /sdapi/v1/schedulers lists the ones that are", field=scheduler_field)
    if scheduler_entry.schedule not in takes:
        raise Unsupported(f"scheduler {scheduler_entry.label!r} is not available with sampler {entry.name!r}",
                          field=scheduler_field)
    return entry.sampler, scheduler_entry.schedule


def engine_resolver(app: web.Application):
    """resolve_sampler bound to what the loaded model can do."""
    engine = app[ENGINE_KEY]
    usable = list(capabilities(app).samplers)
    return lambda name, scheduler, field="sampler_name": resolve_sampler(
        name, scheduler, usable=usable, schedules=engine.usable_schedules, field=field)


def _item(entry: A1111Sampler) -> dict:
    return {"name": entry.name, "aliases": list(entry.aliases), "options": dict(entry.options)}


@a1111_route
async def samplers(request: web.Request) -> web.Response:
    usable = set(capabilities(request.app).samplers)
    return json_response([_item(s) for s in SAMPLERS if s.sampler in usable])


@a1111_route
async def schedulers(request: web.Request) -> web.Response:
    """The schedulers that work here: Automatic, and those some usable sampler takes."""
    engine = request.app[ENGINE_KEY]
    takes = {schedule for sampler in capabilities(request.app).samplers for schedule in engine.usable_schedules(sampler)}
    return json_response([s.as_json() for s in SCHEDULERS
                              if s is AUTOMATIC or (s.supported and s.schedule in takes)])


__all__ = ["resolve_sampler", "engine_resolver", "samplers", "schedulers", "SCHEDULERS"]
