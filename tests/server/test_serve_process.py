"""`latentbridge serve` as a real process: it binds before it says "listening", a taken port is one
error line, SIGTERM (what `systemctl stop` sends) shuts it down gracefully with a log line at each
end, and idle sockets cannot exhaust its file descriptors."""

import json
import resource
import signal
import socket
import time
import urllib.request

from server_helpers import Serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from latentbridge.protocol import WS_PATH


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


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _wait_output(server: Serve, text: str, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in server.lines if text in line]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return [line for line in server.lines if text in line]


def test_socket_level_misbehaviour_is_one_log_line_each(tmp_path):
    """Against the real process: a body cut off, an event stream and a websocket hung up mid-job,
    a non-ASCII bearer, stalled headers. Each: a typed answer or a clean close, one log line, no
    traceback."""
    token = "s3cret"
    auth = f"Authorization: Bearer {token}\r\n".encode()
    server = Serve(tmp_path, "--token", token, "--header-timeout-s", "1")
    try:
        port = server.wait_listening()
        deadline = time.monotonic() + 120
        while b'"state": "ready"' not in _raw(port, b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
                                             b"Connection: close\r\n\r\n"):
            assert time.monotonic() < deadline and server.process.poll() is None, server.output
            time.sleep(0.1)
        # A body cut off mid-way.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
                         b"Content-Type: application/json\r\nContent-Length: 900\r\n\r\n{\"request\": {")
            time.sleep(0.3)
        assert len(_wait_output(server, "went away during POST /api/v1/jobs", 1)) == 1
        # An event stream hung up mid-job.
        body = json.dumps({"request": {"prompt": "x", "steps": 12, "width": 64, "height": 64, "guidance": 1}}).encode()
        accepted = _raw(port, b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
                        b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                        + body)
        job_id = json.loads(accepted.split(b"\r\n\r\n", 1)[1])["job_id"]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth + b"\r\n")
            received = b""
            while b"event: " not in received:  # the headers and the first event may come apart
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
        assert len(_wait_output(server, f"went away during GET /api/v1/jobs/{job_id}/events", 1)) == 1
        # A websocket hung up mid-job, without a close frame.
        ws = connect(f"ws://127.0.0.1:{port}{WS_PATH}", additional_headers={"Authorization": f"Bearer {token}"})
        ws.send(json.dumps({"type": "hello", "client": "tests"}))
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "submit", "request": {"prompt": "x", "steps": 12, "width": 64, "height": 64,
                                                          "guidance": 1}}))
        while True:  # previews arrive as binary frames
            msg = ws.recv(timeout=120)  # after the job above (a loaded machine is slow)
            if isinstance(msg, str) and json.loads(msg).get("type") == "progress":
                break
        ws.socket.close()
        assert len(_wait_output(server, "websocket client 127.0.0.1 went away", 1)) == 1
        # A bearer token that is not ASCII.
        reply = _raw(port, b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xe9t\r\n"
                     b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert len(_wait_output(server, "wrong token from 127.0.0.1", 1)) == 1
        # Headers that never finish: closed at the deadline.
        start = time.monotonic()
        assert _raw(port, b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""
        assert time.monotonic() - start < 5
        assert len(_wait_output(server, "request headers not complete after 1 s", 1)) == 1
        time.sleep(1.0)  # the hung-up job's previews keep coming: still no further lines
        assert len([line for line in server.lines if "went away" in line]) == 3, server.output
        assert "Traceback" not in server.output and " ERROR " not in server.output, server.output
    finally:
        server.stop()
