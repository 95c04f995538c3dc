"""The TypeScript SDK (sdk/typescript): its generated types and the web page's copy of it are what
the generators make from today's code, and its own test suite (`node --test`: the shared vectors,
then the SDK against real `latentbridge serve` processes on the tiny model) passes.

Needs Node >= 20 and `npm ci` in sdk/typescript. A developer without them gets a skip; CI
(LATENTBRIDGE_REQUIRE_WEB_TOOLS=1, set by .ci/run) fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "typescript"


def _node() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "Node.js is not installed"
    elif not (SDK / "node_modules" / "typescript").is_dir():
        problem = "the SDK's dev dependencies are not installed (npm ci in sdk/typescript)"
    if problem is None:
        return node
    if os.environ.get("LATENTBRIDGE_REQUIRE_WEB_TOOLS") == "1":
        raise RuntimeError(f"LATENTBRIDGE_REQUIRE_WEB_TOOLS=1 but {problem}")
    pytest.skip(problem)


def _env() -> dict[str, str]:
    # The scripts and the tests' servers run this interpreter, with this checkout's package first.
    path = os.pathsep.join(p for p in (str(ROOT / "backend"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "LATENTBRIDGE_PYTHON": sys.executable, "PYTHONPATH": path}


def _run(args: list[str], timeout: float) -> None:
    done = subprocess.run(args, cwd=SDK, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"


def test_generated_types_are_fresh():
    _run([_node(), "scripts/generate-types.mjs", "--check"], timeout=120)


def test_the_web_pages_copy_of_the_sdk_is_fresh():
    _run([_node(), "scripts/check-web.mjs"], timeout=120)


def test_node_test_suite_against_the_real_server():
    node = _node()
    _run([node, "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], timeout=120)
    tests = sorted(str(p.relative_to(SDK)) for p in (SDK / "test").glob("*.test.mjs"))
    assert tests, "no Node tests found"
    _run([node, "--test", "--test-concurrency=1", *tests], timeout=300)
