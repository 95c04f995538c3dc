"""Helpers of the end-to-end tests (and bench/bench_addon_ticks.py): a real backend process,
the add-on pointed at it, and the drain loop. A module of its own, not the conftest: several test
folders have a `conftest`, and importing by that name picks whichever was loaded last."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender"))
import lb_blender  # noqa: E402

# The backend runs on Python 3.11; the add-on's tests also run on Blender lines built for 3.13
# (bpy 5.1+), where this names the 3.11 interpreter that has the backend installed.
SERVER_PYTHON = os.environ.get("LATENTBRIDGE_SERVER_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str, token: str = "") -> dict | None:
    request = urllib.request.Request(url + "/api/v1/health", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


class ServerProcess:
    """`python -m latentbridge serve --model tiny` on a free port, waited for until ready."""

    def __init__(self, data_dir: Path, port: int | None = None, token: str = "e2e-s3cret"):
        self.data_dir, self.port, self.token = data_dir, port or free_port(), token
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.extra_args: list[str] = []

    def start(self, timeout: float = 180.0) -> "ServerProcess":
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cmd = [SERVER_PYTHON, "-m", "latentbridge", "serve", "--model", "tiny", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data_dir), "--token", self.token, *self.extra_args]
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")
        self.process = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            state = health(self.url, self.token)
            if state and state.get("model", {}).get("state") == "ready":
                return self
            if state and state.get("model", {}).get("state") == "failed":
                raise RuntimeError(f"server model failed: {state['model'].get('error')}")
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close()

    def _close(self) -> None:
        self.process = None
        if getattr(self, "log", None) is not None and not self.log.closed:
            self.log.close()


def point_prefs_at(url: str, token: str = "") -> None:
    import bpy

    prefs = bpy.context.preferences.addons[lb_blender.ADDON_MODULE].preferences
    prefs.server_url, prefs.token = url, token


def pump(controller, until, timeout: float = 60.0, what: str = "condition") -> float:
    """Drive the add-on's drain step (timers never fire in module mode) until `until()`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        controller.drain()
        if until():
            return time.monotonic() - start
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; status {controller.conn_status!r}, messages {controller.messages[-3:]}")
