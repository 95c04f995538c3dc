"""The add-on's one network thread: a websocket client that never touches bpy.

The main thread (Blender's UI) only calls the non-blocking methods here: `submit`, `cancel`,
`poll` and the status properties. Everything blocking (connect, handshake, send, receive,
reconnect with backoff) happens on the thread. Incoming messages wait in a queue until the main
thread drains it; previews are latest-wins per job so a slow UI never falls behind.
"""

from __future__ import annotations

import collections
import itertools
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .live_link import LiveOutbox

# Connection states shown in the UI.
IDLE = "IDLE"
CONNECTING = "CONNECTING"
CONNECTED = "CONNECTED"
RETRYING = "RETRYING"  # unreachable or dropped; trying again after a backoff
UNAUTHORIZED = "UNAUTHORIZED"  # token missing or wrong: retrying will not help
INCOMPATIBLE = "INCOMPATIBLE"  # server speaks another protocol version
CLOSED = "CLOSED"

LOST = "lost"  # an Incoming kind: the server does not know a job this client follows (it restarted)

RECV_SLICE_S = 0.02  # how long one receive waits before the thread looks at its outgoing queue
LIVE_RECV_SLICE_S = 0.004  # the same while live mode runs: a captured frame leaves within this
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass
class Incoming:
    """One item for the main thread: an event (`kind="event"`), a binary frame (`"preview"` /
    `"result"`, with `header` and `data`), or a connection state change (`"state"`). A raw `rgb`
    preview arrives already converted to Blender's pixel layout in `pixels` (see wire.raw_preview_pixels)."""

    kind: str
    event: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""
    pixels: Any = None


class Connection:
    def __init__(
        self,
        server_url: str,
        token: str = "",
        client_name: str = "blender",
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 8.0,
        open_timeout_s: float = 5.0,
    ):
        self.url = wire.ws_url(server_url)
        self.token = token
        self.client_name = client_name
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self._outgoing: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._incoming: collections.deque[Incoming] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        # Jobs this client has running on the server (re-attached after a reconnect); thread-owned.
        self._active_jobs: set[str] = set()
        self._cancelling: set[str] = set()  # cancel sent, no end event yet; thread-owned
        self._state = IDLE
        self._status = "Not connected"
        self.server_hello: dict[str, Any] | None = None
        self.attempts = 0
        self._retry_at: float | None = None  # monotonic time of the next attempt while RETRYING
        self.live = LiveOutbox()  # live mode's latest-wins frames (live_link.py)

    # ------------------------------------------------------------------ main-thread API

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="latentbridge-net", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    def retry_in(self) -> float | None:
        """Seconds until the next connection attempt while RETRYING (for a live countdown)."""
        with self._lock:
            at = self._retry_at if self._state == RETRYING else None
        return None if at is None else max(0.0, at - time.monotonic())

    def new_ref(self, prefix: str = "lb") -> str:
        return f"{prefix}-{next(self._ids)}"

    def submit(self, request: dict[str, Any], images: dict[str, tuple[bytes, str]] | None = None, client_ref: str | None = None) -> str:
        """Queue a job: `images` maps a role ("init", "mask") to (bytes, format). Returns the
        client_ref echoed in the `accepted` event."""
        client_ref = client_ref or self.new_ref()
        frames: list[str | bytes] = []
        names: dict[str, str] = {}
        for role, (data, fmt) in (images or {}).items():
            upload_id = f"{client_ref}-{role}"
            frames.append(wire.upload_frame(upload_id, data, fmt))
            names[role] = upload_id
        frames.append(wire.submit_message(request, names, client_ref=client_ref, priority="interactive"))
        self._outgoing.put(("frames", frames))
        self._wake.set()
        return client_ref

    def cancel(self, job_id: str) -> None:
        self._outgoing.put(("cancel", job_id))
        self._wake.set()

    def attach(self, job_id: str) -> None:
        self._outgoing.put(("attach", job_id))
        self._wake.set()

    def refresh_models(self) -> None:
        self._outgoing.put(("models", None))
        self._wake.set()

    def poll(self) -> list[Incoming]:
        """Everything that arrived since the last call (non-blocking)."""
        with self._lock:
            items = list(self._incoming)
            self._incoming.clear()
        return items

    def pending(self) -> int:
        with self._lock:
            return len(self._incoming)

    # ------------------------------------------------------------------ network thread

    def _set_state(self, state: str, status: str) -> None:
        with self._lock:
            changed = (state, status) != (self._state, self._status)
            self._state, self._status = state, status
            if changed:
                self._incoming.append(Incoming("state", {"state": state, "status": status}))

    def _push(self, item: Incoming) -> None:
        with self._lock:
            if item.kind == "live_result":  # latest wins: only the newest result is worth applying
                for old in [i for i in self._incoming if i.kind == "live_result"]:
                    self._incoming.remove(old)
            if item.kind == "preview":
                # Latest wins: an undrained older preview of the same job is dropped.
                job = item.header.get("job_id")
                for old in [i for i in self._incoming if i.kind == "preview" and i.header.get("job_id") == job]:
                    self._incoming.remove(old)
            self._incoming.append(item)

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        delay = self.backoff_min_s
        while not self._stop.is_set():
            self.attempts += 1
            self._set_state(CONNECTING, f"Connecting to {self.url}…")
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            try:
                ws = connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=self.open_timeout_s,
                    close_timeout=1.0,
                    max_size=256 * 1024 * 1024,
                    user_agent_header=f"LatentBridge-Blender ({self.client_name})",
                )
            except InvalidStatus as exc:
                code = exc.response.status_code
                if code in (401, 403):
                    self._set_state(UNAUTHORIZED, _auth_message(code, bool(self.token)))
                    self._wait_for_stop()
                    return
                self._retry_status(f"Server at {self.url} refused the connection (HTTP {code})", delay)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self._retry_status(_unreachable_message(self.url, exc), delay)
            else:
                try:
                    with ws:
                        if self._handshake(ws):
                            delay = self.backoff_min_s
                            self.live.on_disconnected()  # a new connection holds no live session yet
                            self._serve(ws)
                        elif self.state in (UNAUTHORIZED, INCOMPATIBLE):
                            self._wait_for_stop()
                            return
                except ConnectionClosed as exc:
                    self.live.on_disconnected()
                    if self._stop.is_set():
                        break
                    self._retry_status(_dropped_message(exc, self._active_jobs), delay)
                except (OSError, TimeoutError) as exc:
                    self.live.on_disconnected()
                    self._retry_status(f"Connection lost ({exc})", delay)
            if self._stop.is_set():
                break
            self._wake.clear()
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max_s)
        self._set_state(CLOSED, "Disconnected")

    def _retry_status(self, message: str, delay: float) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + delay
        self._set_state(RETRYING, message)

    def _wait_for_stop(self) -> None:
        self._stop.wait()

    def _handshake(self, ws: Any) -> bool:
        ws.send(wire.hello_message(self.client_name, self.token or None))
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no hello from the server")
            frame = ws.recv(timeout=remaining)
            if isinstance(frame, bytes):
                continue
            try:
                event = wire.parse_event(frame)
            except wire.WireError:
                continue
            if event["type"] == "hello":
                if event.get("protocol") != wire.PROTOCOL_VERSION:
                    self._set_state(
                        INCOMPATIBLE,
                        f"Server speaks protocol {event.get('protocol')}, this add-on {wire.PROTOCOL_VERSION}: update one of them",
                    )
                    return False
                self.server_hello = event
                self._set_state(CONNECTED, f"Connected: {event.get('server', 'server')}, {wire.model_summary(event.get('model') or {})}")
                self._push(Incoming("event", event))
                for job_id in sorted(self._active_jobs):
                    self._attach(ws, job_id)
                self._fetch_models()
                return True
            if event["type"] == "error":
                if event.get("code") in ("unauthorized", "forbidden"):
                    self._set_state(UNAUTHORIZED, _auth_message(401, bool(self.token)))
                    return False
                self._push(Incoming("event", event))

    def _http_json(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """GET an API path: (HTTP status, decoded JSON or None). Raises OSError when unreachable."""
        request = urllib.request.Request(wire.http_url(self.url) + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read() or b"null")
            except ValueError:
                body = None
            return exc.code, body

    def _fetch_models(self) -> None:
        """GET /api/v1/models and /api/v1/loras (best effort: the lists only fill the pickers)."""
        try:
            body = self._http_json("/api/v1/models")[1]
        except (OSError, ValueError) as exc:
            self._push(Incoming("models", {"models": [], "controlnets": [], "error": f"Could not list models: {exc}"}))
        else:
            self._push(Incoming("models", {"models": model_names(body), "controlnets": controlnet_entries(body)}))
        try:
            status, body = self._http_json("/api/v1/loras")
        except (OSError, ValueError) as exc:
            self._push(Incoming("loras", {"loras": [], "error": f"Could not list LoRAs: {exc}"}))
            return
        if status == 200:
            self._push(Incoming("loras", {"loras": lora_entries(body)}))
        else:
            self._push(Incoming("loras", {"loras": [], "error": f"This server does not list LoRAs (HTTP {status}): type their file names"}))

    def _job_known(self, job_id: str) -> bool | None:
        """Whether the server knows a job: GET /api/v1/jobs/{id} answers 200, or 404 with
        `unknown_job`. None when it cannot tell (unreachable, another answer)."""
        try:
            status, body = self._http_json(f"/api/v1/jobs/{job_id}")
        except (OSError, ValueError):
            return None
        if status == 200:
            return True
        code = (body or {}).get("code") if isinstance(body, dict) else None
        return False if status == 404 and code in (None, "unknown_job") else None

    def _attach(self, ws: Any, job_id: str) -> None:
        """Follow a job again, unless the server no longer knows it: then it is reported lost
        (a job-less `unknown_job` error would not say which job it was about)."""
        if self._job_known(job_id) is False:
            self._lost(job_id)
            return
        self._active_jobs.add(job_id)
        ws.send(wire.attach_message(job_id))

    def _lost(self, job_id: str) -> None:
        self._active_jobs.discard(job_id)
        self._cancelling.discard(job_id)
        self._push(Incoming(LOST, {"job_id": job_id, "message": "lost: the backend restarted"}))

    def _find_lost(self) -> bool:
        """After a job-less `unknown_job` error: which of the jobs followed (or being cancelled)
        the server does not know. True when at least one was found."""
        found = False
        for job_id in sorted(self._active_jobs | self._cancelling):
            if self._job_known(job_id) is False:
                self._lost(job_id)
                found = True
        return found

    def _serve(self, ws: Any) -> None:
        while not self._stop.is_set():
            self._flush_outgoing(ws)
            self._flush_live(ws)
            try:
                frame = ws.recv(timeout=LIVE_RECV_SLICE_S if self.live.active else RECV_SLICE_S)
            except TimeoutError:
                continue
            self._receive(frame)

    def _flush_outgoing(self, ws: Any) -> None:
        while True:
            try:
                what, payload = self._outgoing.get_nowait()
            except queue.Empty:
                return
            try:
                if what == "attach":
                    self._attach(ws, payload)
                elif what == "cancel":
                    self._cancelling.add(payload)
                    ws.send(wire.cancel_message(payload))
                elif what == "models":
                    self._fetch_models()
                else:
                    for frame in payload:
                        ws.send(frame)
            except BaseException:
                # Not sent: keep it for the next connection, in order.
                self._requeue_front(what, payload)
                raise

    def _flush_live(self, ws: Any) -> None:
        # A failed send is a dropped connection: `live.on_disconnected` then redoes the session.
        for message in self.live.outgoing():
            ws.send(message)

    def _requeue_front(self, what: str, payload: Any) -> None:
        rest = []
        while True:
            try:
                rest.append(self._outgoing.get_nowait())
            except queue.Empty:
                break
        self._outgoing.put((what, payload))
        for item in rest:
            self._outgoing.put(item)

    def _receive(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            try:
                header, data = wire.decode_binary(frame)
            except wire.WireError as exc:
                self._push(Incoming("event", {"type": "error", "code": exc.code, "message": f"bad frame from server: {exc.message}", "job_id": None}))
                return
            if header["kind"] == "live_result" and not self.live.on_result(header):
                return  # an earlier session's late result
            if header["format"] == wire.RAW_PREVIEW:
                try:
                    pixels = wire.raw_preview_pixels(data, header["width"], header["height"])
                except wire.WireError as exc:
                    self._push(Incoming("event", {"type": "error", "code": exc.code, "message": f"bad frame from server: {exc.message}", "job_id": None}))
                    return
                self._push(Incoming(header["kind"], header=header, pixels=pixels))
                return
            self._push(Incoming(header["kind"], header=header, data=data))
            return
        try:
            event = wire.parse_event(frame)
        except wire.WireError as exc:
            self._push(Incoming("event", {"type": "error", "code": exc.code, "message": f"bad event from server: {exc.message}", "job_id": None}))
            return
        kind, job_id = event["type"], event.get("job_id")
        if self.live.on_event(event):
            self._push(Incoming("live", event))
            return
        if kind == "error" and not job_id and event.get("code") == "unknown_job" and self._find_lost():
            return  # answered with the lost job(s) instead
        if kind in ("done", "cancelled", "error", "status") and job_id:
            self._cancelling.discard(job_id)
        if kind in ("accepted", "started", "progress") and job_id:
            self._active_jobs.add(job_id)
        elif kind in ("done", "cancelled") or (kind == "error" and job_id):
            self._active_jobs.discard(job_id)
        elif kind == "status" and job_id:
            if event.get("state") in ("done", "cancelled", "failed"):
                self._active_jobs.discard(job_id)
            else:
                self._active_jobs.add(job_id)
        self._push(Incoming("event", event))


def model_names(data: Any) -> list[str]:
    """Model names from the server's models list: a list of names/objects, or an object with
    `current`, `models` and `builtin` entries."""
    items: list[Any] = []
    if isinstance(data, dict):
        current = data.get("current")
        items += [current] if current else []
        items += list(data.get("models") or []) + list(data.get("builtin") or [])
    elif isinstance(data, list):
        items = data
    names: list[str] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else item
        if isinstance(name, str) and name and name not in names:
            names.append(name)
    return names


def controlnet_entries(data: Any) -> list[dict[str, str]]:
    """ControlNets from the models list's `controlnets`: `[{"name", "kind"[, "type"]}]` (the
    control type a configured default serves); anything else is left out."""
    items = data.get("controlnets") if isinstance(data, dict) else None
    out: list[dict[str, str]] = []
    for item in items if isinstance(items, list) else []:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name and all(e["name"] != name for e in out):
            entry = {"name": name, "kind": str(item.get("kind") or "")}
            if isinstance(item.get("type"), str):
                entry["type"] = item["type"]
            out.append(entry)
    return out


def lora_entries(data: Any) -> list[dict[str, str]]:
    """LoRAs from `GET /api/v1/loras`: `{"loras": [{"name": ..., "path": ...}]}` (a bare list,
    or plain names, are accepted too)."""
    items = data.get("loras") if isinstance(data, dict) else data
    out: list[dict[str, str]] = []
    for item in items if isinstance(items, list) else []:
        entry = item if isinstance(item, dict) else {"name": item}
        name = entry.get("name")
        if isinstance(name, str) and name and all(e["name"] != name for e in out):
            out.append({"name": name, "path": str(entry.get("path") or "")})
    return out


def _auth_message(code: int, had_token: bool) -> str:
    if had_token:
        return f"The server refused the token (HTTP {code}): check the token in the add-on preferences"
    return f"The server needs a token (HTTP {code}): set it in the add-on preferences"


def _unreachable_message(url: str, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"No Latent Bridge server at {wire.http_url(url)} ({reason.lower()})"


def _dropped_message(exc: BaseException, jobs: set[str]) -> str:
    tail = f"; {len(jobs)} job(s) will be re-attached" if jobs else ""
    return f"Connection to the server dropped{tail}"
