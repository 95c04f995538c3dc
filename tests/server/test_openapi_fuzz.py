"""The published API is what the server does: schemathesis against /api/v1/openapi.json of a real
`latentbridge serve` (a bounded run; bench/fuzz_api.py runs thousands), and garbled websocket
frames. 0 server errors, 0 responses that break the schema, no schema-valid body refused (beyond
the documented pixel budget), every websocket frame answered or cleanly closed, no traceback."""

from __future__ import annotations

import pytest
from api_fuzz import health_ok, run_schemathesis, run_ws_fuzz, start_server

pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("fuzz"))
    yield server
    server.stop()


def test_schemathesis_finds_nothing(fuzz_server, tmp_path):
    run = run_schemathesis(fuzz_server.port, max_examples=12, seed=20261201, report_dir=tmp_path)
    print(f"\nschemathesis: {run.cases} cases, {len(run.failures)} failures")
    assert run.cases >= 200, run.output[-3000:]
    assert not run.failures, "\n".join(run.failures) + "\n" + run.output[-6000:]
    tracebacks = [i for i, line in enumerate(fuzz_server.lines) if "Traceback" in line]
    assert not tracebacks, "\n".join(fuzz_server.lines[tracebacks[0] - 5:tracebacks[0] + 40])


def test_garbled_websocket_frames_are_answered_or_closed_cleanly(fuzz_server):
    run = run_ws_fuzz(fuzz_server.port, examples=150, seed=20261201)
    print(f"\nwebsocket fuzz: {run.connections} connections, {run.frames} frames, {len(run.failures)} failures")
    assert run.frames >= 150
    assert not run.failures, "\n".join(run.failures[:20])
    assert health_ok(fuzz_server.port)
    assert "Traceback" not in fuzz_server.output and " ERROR " not in fuzz_server.output, fuzz_server.output[-5000:]
