"""The network thread against a scripted websocket server (no bpy): handshake, uploads before
submit, latest-wins previews, wrong token, server down, dropped connection + re-attach."""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.sync.server import serve

import lb_blender

wire = lb_blender.source_module("wire")
connection = lb_blender.source_module("connection")

HELLO = json.loads((lb_blender.ROOT / "tests" / "vectors" / "server" / "hello.json").read_text())


class FakeServer:
    """Runs `script(ws, server)` for each connection after the hello handshake."""

    def __init__(self, script: Callable, require_token: str | None = None, known_jobs: set[str] | None = None,
                 loras: object = None):
        self.script = script
        self.require_token = require_token
        self.known_jobs = known_jobs  # None: HTTP job lookups are not answered (426, as a bare ws server)
        self.loras = loras
        self.received: list[list[object]] = []  # frames per connection, hello included
        self.connections = 0
        self._server = serve(self._handle, "127.0.0.1", 0, process_request=self._check_auth)
        self.port = self._server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _check_auth(self, conn, request):
        if self.require_token and request.headers.get("Authorization") != f"Bearer {self.require_token}":
            return Response(401, "Unauthorized", Headers(), b'{"code":"unauthorized"}')
        if request.path.startswith("/api/v1/jobs/") and self.known_jobs is not None:
            job_id = request.path.rsplit("/", 1)[1]
            if job_id in self.known_jobs:
                return Response(200, "OK", Headers({"Content-Type": "application/json"}), json.dumps({"type": "status", "job_id": job_id, "state": "running"}).encode())
            return Response(404, "Not Found", Headers({"Content-Type": "application/json"}), json.dumps({"code": "unknown_job", "message": f"no job {job_id}"}).encode())
        if request.path == "/api/v1/loras" and self.loras is not None:
            return Response(200, "OK", Headers({"Content-Type": "application/json"}), json.dumps(self.loras).encode())
        return None

    def _handle(self, ws):
        self.connections += 1
        frames: list[object] = []
        self.received.append(frames)
        frames.append(json.loads(ws.recv()))
        ws.send(json.dumps(HELLO))
        self.script(ws, self, frames)

    def close(self):
        self._server.shutdown()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def drain_until(conn, predicate, timeout=5.0):
    items = []

    def check():
        items.extend(conn.poll())
        return predicate(items)

    assert wait_for(check, timeout), f"never saw it; got {[(i.kind, i.event.get('type')) for i in items]}"
    return items


@pytest.fixture
def make_conn():
    made = []

    def make(url, token="", **kw):
        conn = connection.Connection(url, token, backoff_min_s=0.05, backoff_max_s=0.2, open_timeout_s=2.0, **kw)
        conn.start()
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.stop()


def test_handshake_then_uploads_before_submit(make_conn):
    def script(ws, server, frames):
        for _ in range(3):
            frames.append(ws.recv())
        ws.send(json.dumps({"type": "accepted", "job_id": "j1", "client_ref": json.loads(frames[-1])["client_ref"], "position": 0}))
        ws.recv()  # keep the connection open until the client closes it

    server = FakeServer(script)
    try:
        conn = make_conn(server.url, token="t0k")
        ref = conn.submit({"mode": "inpaint", "prompt": "door"}, {"init": (b"\x89PNG-init", "png"), "mask": (b"\x89PNG-mask", "png")})
        items = drain_until(conn, lambda its: any(i.event.get("type") == "accepted" for i in its))
        assert conn.state == connection.CONNECTED
        assert conn.server_hello["server"] == HELLO["server"]
        hello, init, mask, submit = server.received[0]
        assert hello == {"type": "hello", "protocol": 1, "client": "blender", "token": "t0k"}
        assert wire.decode_binary(init) == ({"kind": "upload", "format": "png", "upload_id": f"{ref}-init", "index": 0}, b"\x89PNG-init")
        assert wire.decode_binary(mask)[1] == b"\x89PNG-mask"
        submit = json.loads(submit)
        assert submit["images"] == {"init": f"{ref}-init", "mask": f"{ref}-mask"}
        assert submit["client_ref"] == ref
        assert [i.event["state"] for i in items if i.kind == "state"][-1] == connection.CONNECTED
    finally:
        server.close()


def test_previews_are_latest_wins(make_conn):
    sent = threading.Event()

    def script(ws, server, frames):
        for step in range(1, 21):
            header = {"kind": "preview", "format": "jpeg", "job_id": "j1", "step": step, "total": 20}
            ws.send(wire.encode_binary(header, bytes([step])))
        ws.send(json.dumps({"type": "done", "job_id": "j1", "count": 0, "elapsed_s": 0.1}))
        sent.set()
        ws.recv()

    server = FakeServer(script)
    try:
        conn = make_conn(server.url)
        assert sent.wait(5)
        assert wait_for(lambda: _has_done(conn))
        items = conn.poll()
        previews = [i for i in items if i.kind == "preview"]
        assert len(previews) == 1 and previews[0].header["step"] == 20 and previews[0].data == bytes([20])
        assert items[-1].event["type"] == "done"
    finally:
        server.close()


def _has_done(conn) -> bool:
    with conn._lock:
        return any(i.event.get("type") == "done" for i in conn._incoming)


def test_wrong_token_is_reported_and_not_retried(make_conn):
    server = FakeServer(lambda ws, server, frames: None, require_token="right")
    try:
        conn = make_conn(server.url, token="wrong")
        assert wait_for(lambda: conn.state == connection.UNAUTHORIZED)
        assert "token" in conn.status and "preferences" in conn.status
        time.sleep(0.3)
        assert conn.attempts == 1  # a wrong token does not fix itself: no hammering the server
    finally:
        server.close()


def test_server_down_is_reported_quickly_and_retried(make_conn, unused_tcp_port):
    start = time.monotonic()
    conn = make_conn(f"http://127.0.0.1:{unused_tcp_port}")
    assert wait_for(lambda: conn.state == connection.RETRYING, timeout=3)
    assert time.monotonic() - start < 3
    assert "No Latent Bridge server at http://127.0.0.1:" in conn.status and len(conn.status) < 100  # short
    assert conn.retry_in() is not None  # the panel counts down to the next attempt
    assert wait_for(lambda: conn.attempts >= 3, timeout=3)  # keeps trying with backoff
    conn.stop()
    assert not conn.alive


def test_dropped_connection_reconnects_and_reattaches(make_conn):
    def script(ws, server, frames):
        if server.connections == 1:
            frames.append(json.loads(ws.recv()))  # submit
            ws.send(json.dumps({"type": "accepted", "job_id": "job-7", "client_ref": frames[-1]["client_ref"], "position": 0}))
            ws.send(json.dumps({"type": "started", "job_id": "job-7", "seed": 3}))
            time.sleep(0.05)
            return  # closing the socket mid-job, as a killed server would
        frames.append(json.loads(ws.recv()))  # the re-attach
        ws.send(json.dumps({"type": "status", "job_id": "job-7", "state": "running", "step": 2, "total": 4}))
        ws.recv()

    server = FakeServer(script)
    try:
        conn = make_conn(server.url)
        conn.submit({"prompt": "x"})
        items = drain_until(conn, lambda its: any(i.event.get("type") == "status" for i in its))
        states = [i.event["state"] for i in items if i.kind == "state"]
        assert connection.RETRYING in states and states[-1] == connection.CONNECTED
        dropped = next(i.event["status"] for i in items if i.kind == "state" and i.event["state"] == connection.RETRYING)
        assert "dropped" in dropped and "re-attached" in dropped
        assert server.connections == 2
        assert server.received[1][1] == {"type": "attach", "job_id": "job-7"}
    finally:
        server.close()


def test_server_that_restarted_without_the_job_reports_it_lost(make_conn):
    """Before: the job was re-attached, the server's job-less `unknown_job` error was taken for a
    refused submit (or dropped), and the job stayed running for good."""
    def script(ws, server, frames):
        if server.connections == 1:
            frames.append(json.loads(ws.recv()))  # submit
            ws.send(json.dumps({"type": "accepted", "job_id": "job-9", "client_ref": frames[-1]["client_ref"], "position": 0}))
            ws.send(json.dumps({"type": "started", "job_id": "job-9", "seed": 3}))
            time.sleep(0.05)
            return  # the server dies with the job
        try:
            frames.append(json.loads(ws.recv(timeout=2)))  # an attach, if any, answered as today's server does
            ws.send(json.dumps({"type": "error", "job_id": None, "code": "unknown_job", "message": "no job job-9", "field": "job_id"}))
        except TimeoutError:
            pass
        ws.recv()

    server = FakeServer(script, known_jobs=set())
    try:
        conn = make_conn(server.url)
        conn.submit({"prompt": "x"})
        items = drain_until(conn, lambda its: any(i.kind == connection.LOST for i in its))
        lost = next(i for i in items if i.kind == connection.LOST)
        assert lost.event["job_id"] == "job-9" and "restarted" in lost.event["message"]
        assert not any(i.kind == "event" and i.event.get("code") == "unknown_job" for i in items)
        assert server.connections == 2
    finally:
        server.close()


def test_unknown_job_answer_to_a_cancel_finds_the_lost_job(make_conn):
    def script(ws, server, frames):
        frames.append(json.loads(ws.recv()))  # the cancel
        ws.send(json.dumps({"type": "error", "job_id": None, "code": "unknown_job", "message": "no job job-4", "field": "job_id"}))
        ws.recv()

    server = FakeServer(script, known_jobs={"job-other"})
    try:
        conn = make_conn(server.url)
        conn.cancel("job-4")
        items = drain_until(conn, lambda its: any(i.kind == connection.LOST for i in its))
        assert [i.event["job_id"] for i in items if i.kind == connection.LOST] == ["job-4"]
    finally:
        server.close()


def test_lora_list_fills_the_picker_or_says_the_server_has_none(make_conn):
    server = FakeServer(lambda ws, server, frames: ws.recv(), loras={"loras": [{"name": "ink.safetensors", "path": "/l/ink.safetensors"}, {"name": "ink.safetensors"}]})
    try:
        conn = make_conn(server.url)
        items = drain_until(conn, lambda its: any(i.kind == "loras" for i in its))
        assert next(i for i in items if i.kind == "loras").event["loras"] == [{"name": "ink.safetensors", "path": "/l/ink.safetensors"}]
    finally:
        server.close()
    server = FakeServer(lambda ws, server, frames: ws.recv())  # no LoRA route
    try:
        conn = make_conn(server.url)
        items = drain_until(conn, lambda its: any(i.kind == "loras" for i in its))
        event = next(i for i in items if i.kind == "loras").event
        assert event["loras"] == [] and "does not list LoRAs" in event["error"]
    finally:
        server.close()
    assert connection.lora_entries(["a", {"name": "b", "path": "p"}, {"x": 1}]) == [{"name": "a", "path": ""}, {"name": "b", "path": "p"}]
