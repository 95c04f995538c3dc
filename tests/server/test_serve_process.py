"""`latentbridge serve` as a real process: it starts on the tiny model offline, and SIGTERM (what
`systemctl stop` sends) shuts it down gracefully: connections closed with GOING_AWAY, exit 0."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from latentbridge.protocol import WS_PATH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/v1/health", timeout=1) as response:
            return json.loads(response.read())["model"]["state"] == "ready"
    except OSError:
        return False


def test_serve_starts_offline_and_sigterm_closes_with_going_away(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "latentbridge", "serve", "--model", "tiny", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.1)
        with connect(f"ws://127.0.0.1:{port}{WS_PATH}") as ws:
            ws.send(json.dumps({"type": "hello", "client": "tests"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            process.send_signal(signal.SIGTERM)
            try:
                while True:
                    ws.recv(timeout=20)
            except ConnectionClosed:
                pass
            assert ws.close_code == 1001  # GOING_AWAY
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
