"""The server log: one line per job event (accepted, started, finished/failed/cancelled) naming the
job, mode, size, steps, seconds and client; a line per model switch; `--log-format json`."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from server_helpers import finished_status, tiny_request

from latentbridge import logs


async def _job_lines(caplog, job_id: str, until: str) -> list[logging.LogRecord]:
    """The job's log records once its `until` line is written: the worker thread writes the final
    line just after the job's state changes, so a status poll can see the state first."""
    for _ in range(250):
        lines = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
        if any(r.event == until for r in lines):
            return lines
        await asyncio.sleep(0.02)
    return lines


async def test_one_line_per_job_event(client, caplog):
    caplog.set_level(logging.INFO, logger="latentbridge")
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request()})
    job_id = (await resp.json())["job_id"]
    await finished_status(client, job_id)
    lines = await _job_lines(caplog, job_id, until="done")
    assert [r.event for r in lines] == ["accepted", "started", "done"]
    accepted, started, done = (r.getMessage() for r in lines)
    assert job_id in accepted and "txt2img 64x64, 2 steps" in accepted and "client http:127.0.0.1" in accepted
    assert "txt2img 64x64, 2 steps" in started
    assert done.startswith(f"job {job_id} done in ") and done.endswith(" s") and lines[2].seconds >= 0

    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(mode="txt2img", steps=1, model="missing")})
    assert resp.status == 404  # refused at the door: no job, no job line


async def test_failed_and_cancelled_jobs_and_model_switches_are_logged(client, caplog):
    caplog.set_level(logging.INFO, logger="latentbridge")
    # An unknown preprocessor is found only when the job runs: the job fails, naming the field.
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request(controls=[{"type": "canny",
                                                                                     "preprocessor": "magic"}]),
                                                   "images": {"control.0": _png_b64()}})
    failed = (await resp.json())["job_id"]
    assert (await finished_status(client, failed))["state"] == "failed"
    (message,) = [r.getMessage() for r in await _job_lines(caplog, failed, until="failed") if r.event == "failed"]
    assert "invalid_request" in message and "magic" in message

    long = (await (await client.post("/api/v1/jobs", json={"request": tiny_request(steps=150)})).json())["job_id"]
    queued = (await (await client.post("/api/v1/jobs", json={"request": tiny_request(steps=150)})).json())["job_id"]
    for job_id in (queued, long):
        assert (await (await client.post(f"/api/v1/jobs/{job_id}/cancel", json={})).json())["cancelled"]
        assert (await finished_status(client, job_id))["state"] == "cancelled"
    for _ in range(100):
        cancelled = {r.job_id for r in caplog.records if getattr(r, "event", None) == "cancelled"}
        if cancelled == {queued, long}:
            break
        await asyncio.sleep(0.02)
    assert cancelled == {queued, long}

    resp = await client.post("/api/v1/models/load", json={"model": "tiny-sdxl"})
    assert resp.status == 200
    assert any("model switch to tiny-sdxl requested by http:127.0.0.1" in r.getMessage() for r in caplog.records)
    assert any("model tiny-sdxl ready" in r.getMessage() for r in caplog.records)
    await client.post("/api/v1/models/load", json={"model": "tiny"})


def test_json_log_lines_carry_the_fields():
    stream = io.StringIO()
    root, ours = logging.getLogger(), logging.getLogger("latentbridge")
    saved = root.handlers[:], root.level, ours.level  # pytest's capture handlers: put back afterwards
    logs.configure("json")
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    try:
        logging.getLogger("latentbridge.jobs").info("job %s done in %.2f s", "ab" * 16, 1.5,
                                                    extra={"job_id": "ab" * 16, "event": "done", "seconds": 1.5})
        logging.getLogger("aiohttp.access").info("not shown: libraries stay at warning")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ours.setLevel(saved[2])
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == f"job {'ab' * 16} done in 1.50 s" and entry["level"] == "info"
    assert (entry["job_id"], entry["event"], entry["seconds"]) == ("ab" * 16, "done", 1.5)
    assert entry["logger"] == "latentbridge.jobs" and entry["time"].endswith("Z")


def _png_b64() -> str:
    import base64

    from server_helpers import png_bytes

    return base64.b64encode(png_bytes()).decode()
