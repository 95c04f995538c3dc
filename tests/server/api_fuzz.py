"""Fuzzing the real `latentbridge serve`: schemathesis against its OpenAPI document, and garbled
websocket frames drawn by hypothesis. Shared by tests/server/test_openapi_fuzz.py (a bounded run
in CI) and bench/fuzz_api.py (the long run whose figures are reported).

The server runs with small limits (128 px, 3 steps, batch 2) so the jobs the fuzzers submit cost
milliseconds on the tiny model; the OpenAPI document publishes those limits, so schemathesis
generates only requests this server accepts (see server/openapi.py).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from server_helpers import Serve

from latentbridge.protocol import WS_PATH

HERE = Path(__file__).resolve().parent
MAX_PIXELS = 128 * 128 * 2
FUZZ_SERVE_ARGS = ["--max-width", "128", "--max-height", "128", "--max-steps", "3", "--max-batch", "2",
                   "--max-pixels", str(MAX_PIXELS), "--max-queue", "100000", "--retention-jobs", "100000"]
# Checks: all of schemathesis' own, with positive_data_acceptance replaced by our
# valid_bodies_accepted (the same rule plus the documented pixel budget, see schemathesis_hooks.py).
SCHEMATHESIS_ARGS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance", "--workers", "1",
                     "--request-timeout", "60", "--suppress-health-check", "all", "--output-truncate", "false"]


def start_server(tmp_path: Path) -> Serve:
    server = Serve(tmp_path, *FUZZ_SERVE_ARGS)
    server.wait_listening()
    server.wait_ready()
    return server


@dataclass
class SchemathesisRun:
    cases: int
    failures: list[str]
    exit_code: int
    output: str


def run_schemathesis(port: int, max_examples: int, seed: int, report_dir: Path,
                     phases: str = "examples,coverage,fuzzing,stateful") -> SchemathesisRun:
    """`schemathesis run` against the server's /api/v1/openapi.json; counts from its JSON report."""
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / "schemathesis.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "LATENTBRIDGE_FUZZ_MAX_PIXELS": str(MAX_PIXELS),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"), "run",
               f"http://127.0.0.1:{port}/api/v1/openapi.json",
               "--max-examples", str(max_examples), "--seed", str(seed), "--phases", phases,
               "--report", "json", "--report-json-path", str(report), *SCHEMATHESIS_ARGS]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=report_dir)
    if not report.exists():
        raise AssertionError(f"schemathesis wrote no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(report.read_text())
    failures = [f"{f['code']} {f['title']} ({', '.join(f['operations'])}) x{f['count']}" for f in data["failures"]]
    failures += [f"error: {e}" for e in data.get("errors", [])]
    return SchemathesisRun(data["test_cases"]["generated"], failures, done.returncode, done.stdout + done.stderr)


# ---------------------------------------------------------------------------------------------
# Websocket frames, raw: the fuzzer must be able to send what no client library would


OPCODES = {"continuation": 0x0, "text": 0x1, "binary": 0x2, "close": 0x8, "ping": 0x9, "pong": 0xA}
ALLOWED_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009}  # not 1011 (internal error)


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """One websocket frame as a client sends it (masked), or garbled through the keyword arguments."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebsocket:
    """A websocket over a plain socket: a manual handshake, frames written as given."""

    def __init__(self, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("handshake: connection closed")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"handshake refused: {head[:200]!r}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload). Raises EOFError when the connection ended."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def close(self) -> None:
        self.sock.close()


def _json_text(value) -> bytes:
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=15,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "submit", "cancel", "attach", "ping", "nope", 3, None])},
    optional={"request": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "prompt": st.text(max_size=50), "steps": st.integers(-5, 10), "width": st.sampled_from([64, 72, 128, 4096, -8]),
        "height": st.sampled_from([64, 128, 0]), "mode": st.sampled_from(["txt2img", "img2img", "inpaint", "x"]),
        "batch_size": st.integers(0, 3), "seed": st.integers(-1, 2**33)})),
        "job_id": json_values, "protocol": st.sampled_from([1, 2, "1", None]), "images": json_values,
        "token": json_values, "client": json_values, "priority": json_values},
)
binary_headers = st.dictionaries(
    st.sampled_from(["kind", "format", "job_id", "upload_id", "index", "step", "width", "height", "extra"]),
    st.sampled_from(["upload", "preview", "result", "png", "jpeg", "rgb", "x", "", 0, -1, 5, None, 10**9, 1.5]),
    max_size=7,
)
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def _binary(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


fuzz_frames = st.one_of(
    # Text: messages close to valid ones, arbitrary JSON, arbitrary text, bytes that are not UTF-8.
    messages.map(lambda m: frame(OPCODES["text"], _json_text(m))),
    json_values.map(lambda v: frame(OPCODES["text"], _json_text(v))),
    st.text(max_size=200).map(lambda t: frame(OPCODES["text"], t.encode())),
    st.binary(max_size=200).map(lambda b: frame(OPCODES["text"], b)),
    # Binary: headers close to valid ones with a payload, truncated headers, arbitrary bytes.
    st.tuples(binary_headers, st.sampled_from([b"", b"x", PNG, os.urandom(64)]))
      .map(lambda t: frame(OPCODES["binary"], _binary(*t))),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=80))
      .map(lambda t: frame(OPCODES["binary"], struct.pack(">I", t[0]) + t[1])),
    st.binary(max_size=300).map(lambda b: frame(OPCODES["binary"], b)),
    # The frame layer itself: reserved opcodes and bits, unmasked frames, stray continuations,
    # over-long control frames, bad close frames, lengths the payload does not have.
    st.tuples(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), st.binary(max_size=20))
      .map(lambda t: frame(t[0], t[1])),
    st.tuples(st.binary(max_size=40), st.sampled_from([1, 2, 4])).map(lambda t: frame(OPCODES["text"], t[0], rsv=t[1])),
    st.binary(max_size=40).map(lambda b: frame(OPCODES["binary"], b, masked=False)),
    st.binary(max_size=40).map(lambda b: frame(OPCODES["continuation"], b)),
    st.binary(min_size=126, max_size=200).map(lambda b: frame(OPCODES["ping"], b)),
    st.binary(max_size=10).map(lambda b: frame(OPCODES["close"], b)),
    st.binary(max_size=10).map(lambda b: frame(OPCODES["text"], b, fin=False)),
    st.binary(max_size=10).map(lambda b: frame(OPCODES["binary"], b, length=2**40)),
)


@dataclass
class WsFuzzRun:
    connections: int = 0
    frames: int = 0
    failures: list[str] = field(default_factory=list)


def _still_answers(ws: RawWebsocket) -> str | None:
    """After the fuzz frames: a ping must get its pong (typed errors may come first), or the server
    has closed the connection with a clean code. Returns what went wrong, if anything."""
    try:
        ws.send(frame(OPCODES["text"], b'{"type": "ping"}'))
    except OSError:
        pass  # already closed by the server: its close frame tells why
    try:
        while True:
            opcode, payload = ws.receive()
            if opcode == OPCODES["close"]:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                return None if code in ALLOWED_CLOSE | {1005} else f"closed with {code} {payload[2:]!r}"
            if opcode == OPCODES["text"]:
                event = json.loads(payload)
                if event.get("type") == "error" and event.get("code") == "internal":
                    return f"internal error: {event}"
                if event.get("type") == "pong":
                    return None
    except EOFError:
        return None  # the server dropped a connection that broke the frame layer (no close frame needed)
    except (socket.timeout, TimeoutError):
        return "no answer within the timeout"
    except OSError as exc:
        if isinstance(exc, ConnectionResetError):
            return None
        return f"socket error {exc}"


def run_ws_fuzz(port: int, examples: int, seed: int) -> WsFuzzRun:
    """`examples` connections, each: hello, 1-5 hypothesis-drawn frames, then a ping that must be
    answered (or a clean close)."""
    run = WsFuzzRun()

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(fuzz_frames, min_size=1, max_size=5))
    def one_connection(frames: list[bytes]) -> None:
        ws = RawWebsocket(port)
        run.connections += 1
        try:
            ws.send(frame(OPCODES["text"], b'{"type": "hello", "client": "fuzz"}'))
            for data in frames:
                try:
                    ws.send(data)
                except OSError:
                    break
                run.frames += 1
            problem = _still_answers(ws)
            if problem is not None:
                run.failures.append(f"{problem} after frames {[f[:60] for f in frames]!r}")
        finally:
            ws.close()

    one_connection()
    return run


def health_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (chunk := sock.recv(65536)):
            data += chunk
    return data.startswith(b"HTTP/1.1 200")
