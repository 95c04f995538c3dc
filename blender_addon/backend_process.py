"""Starting a local backend for the artist (no bpy): a child process and its status."""

from __future__ import annotations

import collections
import shlex
import socket
import subprocess
import sys
import threading
from urllib.parse import urlsplit

from . import wire


def backend_command(command: str, python_path: str, server_url: str) -> list[str]:
    """The command line to run: the artist's command, or `<python> -m latentbridge serve`,
    with host and port taken from the server URL when the command does not set them."""
    if command.strip():
        args = shlex.split(command, posix=sys.platform != "win32")
    else:
        args = [python_path.strip() or "python3", "-m", "latentbridge", "serve"]
    parts = urlsplit(wire.http_url(server_url))
    if "--host" not in args and parts.hostname:
        args += ["--host", parts.hostname]
    if "--port" not in args:
        args += ["--port", str(parts.port or wire.DEFAULT_PORT)]
    return args


def server_answers(server_url: str, timeout: float = 0.3) -> bool:
    """Whether something accepts connections at the server's address (a quick TCP connect)."""
    parts = urlsplit(wire.http_url(server_url))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or wire.DEFAULT_PORT), timeout):
            return True
    except OSError:
        return False


def should_start(server_url: str, already_running: bool) -> bool:
    """Start a local backend only for a server on this machine that is not already answering
    (a backend the artist started by hand is used as it is, not fought over its port)."""
    return not already_running and wire.is_loopback(server_url) and not server_answers(server_url)


class LocalBackend:
    """One child process; its output is kept (last lines) to explain a failure."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._error = ""

    def start(self, args: list[str]) -> None:
        if self.running:
            return
        self._release()
        self.args = list(args)
        self._tail.clear()
        self._error = ""
        try:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.process = None
            self._error = f"Could not start `{' '.join(args)}`: {exc.strerror or exc}"
            return
        self._reader = threading.Thread(target=self._read_output, args=(self.process,), daemon=True, name="latentbridge-backend-log")
        self._reader.start()

    def _read_output(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._tail.append(line.decode("utf-8", "replace").rstrip())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> str:
        if self._error:
            return self._error
        if self.process is None:
            return "Stopped" if self.args else "Not started"
        code = self.process.poll()
        if code is None:
            return f"Running (pid {self.process.pid})"
        last = self._tail[-1] if self._tail else "no output"
        return f"Exited with code {code}: {last}"

    def output(self) -> list[str]:
        return list(self._tail)

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._release(timeout)

    def _release(self, timeout: float = 5.0) -> None:
        """Close the output pipe of an ended process (else a ResourceWarning when it is collected)."""
        if self.process is None:
            return
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
