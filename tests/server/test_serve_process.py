"""`latentbridge serve` as a real process: it binds before it says "listening", a taken port is one
error line, SIGTERM (what `systemctl stop` sends) shuts it down gracefully with a log line at each
end, and idle sockets cannot exhaust its file descriptors."""

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from latentbridge.protocol import WS_PATH


class Serve:
    """`python -m latentbridge serve --model tiny --port 0 ...`, its output collected by a thread
    (a full pipe would block the server's logging)."""

    def __init__(self, tmp_path, *args: str, nofile: int | None = None, port: str = "0"):
        def limit_files():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "latentbridge", "serve", "--model", "tiny", "--port", port,
             "--data-dir", str(tmp_path / "data"), *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=limit_files, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(r"listening on http://127\.0\.0\.1:(\d+) ", line):
                    self.port = int(match.group(1))
                    return self.port
            assert self.process.poll() is None, self.output
            time.sleep(0.02)
        raise AssertionError(f"no `listening` line in {timeout} s:\n{self.output}")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not _ready(f"http://127.0.0.1:{self.port}"):
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/v1/health", timeout=1) as response:
            return json.loads(response.read())["model"]["state"] == "ready"
    except OSError:
        return False


def test_listening_after_bind_and_sigterm_closes_with_going_away_and_logs(tmp_path):
    server = Serve(tmp_path)
    try:
        port = server.wait_listening()  # --port 0: the real port is known only once bound
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # accepting as soon as it says so
        server.wait_ready()
        with connect(f"ws://127.0.0.1:{port}{WS_PATH}") as ws:
            ws.send(json.dumps({"type": "hello", "client": "tests"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            server.process.send_signal(signal.SIGTERM)
            try:
                while True:
                    ws.recv(timeout=20)
            except ConnectionClosed:
                pass
            assert ws.close_code == 1001  # GOING_AWAY
        assert server.process.wait(30) == 0
        server._reader.join(5)
        assert "shutting down (SIGTERM)" in server.output and "Latent Bridge stopped" in server.output
        assert "Traceback" not in server.output
    finally:
        server.stop()


def test_a_taken_port_is_one_error_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Serve(tmp_path, port=str(port))
        try:
            assert server.process.wait(60) == 1
            server._reader.join(5)
        finally:
            server.stop()
    lines = [line for line in server.lines if line.strip()]
    assert len(lines) == 1, server.output
    assert lines[0] == (f"error: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
                        "latentbridge, or another server); stop it or pass --port")


def test_idle_sockets_cannot_exhaust_descriptors(tmp_path):
    """500 idle connections (half of them mid-headers, from 25 addresses) against a server whose
    open-file limit is 256: a normal client is still served within a second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 700:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
    server = Serve(tmp_path, nofile=256)
    idle: list[socket.socket] = []
    try:
        port = server.wait_listening()
        server.wait_ready()
        for i in range(500):
            sock = socket.socket()
            sock.bind((f"127.0.3.{1 + i % 25}", 0))
            sock.connect(("127.0.0.1", port))
            if i % 2:
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            idle.append(sock)
        timings = []
        for _ in range(5):
            start = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as response:
                assert response.status == 200
            timings.append(time.monotonic() - start)
        print(f"\nidle-connection figure: 500 idle sockets at RLIMIT_NOFILE 256, a normal request took "
              f"{max(timings) * 1000:.1f} ms at most (of 5), {min(timings) * 1000:.1f} ms at least")
        assert max(timings) < 1.0, timings
        assert "Too many open files" not in server.output and "Traceback" not in server.output, server.output
        assert "serving at most" in server.output  # the cap was lowered to fit the limit, and said so
    finally:
        for sock in idle:
            sock.close()
        server.stop()
