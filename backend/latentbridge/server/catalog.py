"""Read-only routes a browsing client needs beside the core API (docs/http-api.md): what the
server can do now (the capabilities `hello` reports, which change with the loaded model), the LoRA
files a request may name, and the stored inputs of a job (so "run again" can resend them)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import model_dirs
from ..protocol import ErrorCode, LatentBridgeError
from .app import JOBS_KEY, SETTINGS_KEY, capabilities
from .jsonio import json_response

API = "/api/v1"


async def capabilities_route(request: web.Request) -> web.Response:
    return json_response(capabilities(request.app).model_dump(mode="json"))


async def loras(request: web.Request) -> web.Response:
    names = await asyncio.to_thread(model_dirs.lora_entries, request.app[SETTINGS_KEY])
    return json_response({"loras": [{"name": name} for name in names]})


async def job_input(request: web.Request) -> web.Response:
    job_id, role = request.match_info["job_id"], request.match_info["role"]
    jobs = request.app[JOBS_KEY]
    if jobs.status(job_id) is None:
        raise LatentBridgeError(f"no job {job_id}", field="job_id", code=ErrorCode.unknown_job)
    png = await asyncio.to_thread(jobs.store.input_png, job_id, role)  # the store checks the role's form
    if png is None:
        raise LatentBridgeError(f"job {job_id} has no stored `{role[:50]}` image", field="role",
                                code=ErrorCode.unknown_job)
    return web.Response(body=png, content_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{job_id}-{role}.png"',
                                 "Cache-Control": "private, max-age=31536000, immutable"})


def add_catalog_routes(app: web.Application) -> None:
    app.router.add_get(f"{API}/capabilities", capabilities_route)
    app.router.add_get(f"{API}/loras", loras)
    app.router.add_get(f"{API}/jobs/{{job_id}}/inputs/{{role}}", job_input)
