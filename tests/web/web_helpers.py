"""Helpers for the browser tests and the docs screenshots: a real `latentbridge serve` process on
the tiny model, and Debian's Chromium driven by Playwright (no browser download, ever)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
TOKEN = "correct-horse-battery-staple-0451"  # the token servers of the page tests use
# No GPU, no network beyond the page, no first-run or sync chatter; --no-sandbox for containers.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m latentbridge serve --model tiny` on a free port with its own data folder."""

    def __init__(self, data_dir: Path, *, token: str | None = None, extra: list[str] = ()):
        self.token = token
        self.data_dir = data_dir
        # A free port can be taken by another process before the server binds it: try another.
        for attempt in range(3):
            self._start(extra)
            if self._wait_ready():
                return
            assert attempt < 2, "server did not start:\n" + self.output()

    def _start(self, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"serve-{self.port}.log"
        args = [sys.executable, "-m", "latentbridge", "serve", "--model", "tiny", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--preview-interval-s", "0", *extra]
        if self.token:
            args += ["--token", self.token]
        path = os.pathsep.join(p for p in (str(ROOT / "backend"), os.environ.get("PYTHONPATH")) if p)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path})

    def _wait_ready(self) -> bool:
        """True once the model is ready; False when the process ended first (e.g. its port was taken)."""
        deadline = time.monotonic() + 180
        while not self._ready():
            if self.process.poll() is not None:
                self._log.close()
                return False
            assert time.monotonic() < deadline, "server not ready in time:\n" + self.output()
            time.sleep(0.1)
        return self.process.poll() is None  # ours answered, not another server on a reused port

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers=self.headers())
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def json(self, path: str):
        return json.loads(self.get(path))

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={**self.headers(), "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_finished(self, job_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.json(f"/api/v1/jobs/{job_id}")
            if status["state"] not in ("queued", "running"):
                return status
            assert time.monotonic() < deadline, f"job {job_id} did not finish: {status}"
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return self.json("/api/v1/health")["model"]["state"] == "ready"
        except OSError:
            return False

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def chromium_or_skip() -> str:
    """Debian's Chromium; a developer without it gets a skip, CI (LATENTBRIDGE_REQUIRE_WEB_TOOLS=1,
    set by .ci/run) fails instead."""
    import pytest

    if Path(CHROMIUM).exists() and shutil.which("chromium"):
        return CHROMIUM
    if os.environ.get("LATENTBRIDGE_REQUIRE_WEB_TOOLS") == "1":
        raise RuntimeError(f"LATENTBRIDGE_REQUIRE_WEB_TOOLS=1 but {CHROMIUM} is missing (apt-get install -y chromium)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")


@contextmanager
def browser(executable: str = CHROMIUM):
    """A headless Chromium (a fresh, empty profile per launch)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def tiny_request(**overrides) -> dict:
    request = {"prompt": "bronze", "steps": 2, "width": 64, "height": 64, "seed": 7, "guidance": 1.0}
    request.update(overrides)
    return request
