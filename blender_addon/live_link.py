"""The network side of live mode (no bpy): latest-wins outgoing frames, for the network thread.

At most ONE frame is in flight (sent, its result not back yet) and at most one is pending; a new
capture replaces the pending one (counted as dropped here). The pending frame goes out as soon as
the in-flight one is answered (a `live_result`, or an error about the session), so the server
never queues this client's frames behind each other and every frame it renders is the newest.

The session outlives a dropped connection on this side only: the server ends a session whose
connection closes, so after a reconnect the network thread starts it again with the newest
settings (`start_text`) and the next frame goes to the new session.

Thread-safe: the main thread calls `start`, `update`, `stop`, `offer` and reads the counters;
the network thread calls the rest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from . import wire

IN_FLIGHT_TIMEOUT_S = 10.0  # a frame never answered (a server restart) stops blocking the next one


@dataclass
class OutFrame:
    frame: int
    parts: dict[str, bytes]
    fmt: str
    width: int | None
    height: int | None
    captured_at: float


class LiveOutbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.start_text: str | None = None  # the live_start to (re)send; None: live is off
        self.job_id: str | None = None  # the server's session, once `live_started` came
        self._started_sent = False  # start_text sent on this connection, no answer yet
        self._control: list[str] = []  # live_update / live_stop texts to send, in order
        self._updates: list[bool] = []  # updates sent, their live_updated not back yet: reshaping?
        self._pending: OutFrame | None = None
        self._in_flight: tuple[int, float] | None = None  # (frame, sent at)
        self.sent_at: dict[int, float] = {}  # frame → when it was sent (latency measures)
        self.captured = self.dropped = self.sent = 0

    # ------------------------------------------------------------------ main thread

    @property
    def active(self) -> bool:
        with self._lock:
            return self.start_text is not None

    def start(self, request: dict[str, Any], live: dict[str, Any], client_ref: str) -> None:
        with self._lock:
            self.start_text = wire.live_start_message(request, live, client_ref)
            self._started_sent = False
            self.job_id, self._pending, self._in_flight, self._updates = None, None, None, []
            self.captured = self.dropped = self.sent = 0
            self.sent_at.clear()

    def update(self, request: dict[str, Any], live: dict[str, Any], client_ref: str, reshape: bool = False) -> None:
        """New settings for the session. `reshape`: the frames' parts or size change, so the
        pending frame (captured the old way) is dropped, and the in-flight one is let go once the
        server has the new settings (it drops a pending frame of the old shape unanswered)."""
        with self._lock:
            if self.start_text is None:
                return
            self.start_text = wire.live_start_message(request, live, client_ref)  # a restart uses these
            if reshape and self._pending is not None:
                self._pending = None
                self.dropped += 1
            if self.job_id is not None:
                self._control.append(wire.live_update_message(self.job_id, request, live))
                self._updates.append(reshape)

    def stop(self) -> None:
        with self._lock:
            if self.job_id is not None:
                self._control.append(wire.live_stop_message(self.job_id))
            self.start_text, self.job_id, self._pending, self._in_flight = None, None, None, None
            self._updates = []

    def offer(self, frame: int, parts: dict[str, bytes], fmt: str, width: int | None = None,
              height: int | None = None) -> None:
        """A new capture: it replaces the pending one (dropped, never sent)."""
        with self._lock:
            if self.start_text is None:
                return
            self.captured += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = OutFrame(frame, parts, fmt, width, height, time.monotonic())

    def pending_age(self) -> float | None:
        """Seconds since the pending frame was captured; None when none is pending."""
        with self._lock:
            return None if self._pending is None else time.monotonic() - self._pending.captured_at

    def idle(self) -> bool:
        """Nothing in flight and nothing pending: a new capture would go out at once."""
        with self._lock:
            return self._pending is None and self._in_flight is None

    # ------------------------------------------------------------------ network thread

    def outgoing(self) -> list[bytes | str]:
        """What to send now: queued control messages, the start (once per connection), and the
        pending frame when nothing is in flight."""
        out: list[bytes | str] = []
        with self._lock:
            out += self._control
            self._control.clear()
            if self.start_text is not None and self.job_id is None and not self._started_sent:
                out.append(self.start_text)
                self._started_sent = True
            if self._in_flight is not None and time.monotonic() - self._in_flight[1] > IN_FLIGHT_TIMEOUT_S:
                self._in_flight = None
            if self.job_id is not None and self._pending is not None and self._in_flight is None:
                frame = self._pending
                self._pending = None
                now = time.monotonic()
                self._in_flight = (frame.frame, now)
                self.sent += 1
                self.sent_at[frame.frame] = now
                if len(self.sent_at) > 256:
                    self.sent_at.pop(next(iter(self.sent_at)))
                out.append(wire.live_frame(self.job_id, frame.frame, frame.parts, frame.fmt, frame.width, frame.height))
        return out

    def on_event(self, event: dict[str, Any]) -> bool:
        """A server event; True when it concerns live mode (the caller passes it on)."""
        kind = event.get("type")
        with self._lock:
            if kind == "live_started":
                if self.start_text is None:  # stopped meanwhile: stop the session it started
                    self._control.append(wire.live_stop_message(event["job_id"]))
                    return True
                self.job_id, self._started_sent = event["job_id"], False
                return True
            if kind == "live_updated" and self._updates and event.get("job_id") == self.job_id:
                if self._updates.pop(0):
                    self._in_flight = None  # the server may have dropped it: the new-shape frame may go
                return True
            if kind in ("live_updated", "live_stopped"):
                if kind == "live_stopped" and event.get("job_id") == self.job_id:
                    self.job_id, self._in_flight = None, None
                    # Stopped or failed (its settings cannot render): over. Otherwise (shutdown) the
                    # session starts again, on the next connection.
                    self.start_text = None if event.get("reason") in ("stopped", "failed") else self.start_text
                return True
            if kind == "error" and event.get("job_id") and event.get("job_id") == self.job_id:
                self._in_flight = None  # that frame failed: the next may go
                return True
            if kind == "error" and not event.get("job_id") and self._started_sent and self.job_id is None:
                self._started_sent = False  # our live_start was refused (the error says why)
                self.start_text = None
                return True
        return False

    def on_result(self, header: dict[str, Any]) -> bool:
        """A live_result frame: the in-flight frame is answered. False when it is not this
        session's (an older session's late result): then it is dropped."""
        with self._lock:
            if header.get("job_id") != self.job_id:
                return False
            if self._in_flight is not None and header.get("frame", -1) >= self._in_flight[0]:
                self._in_flight = None
            return True

    def on_disconnected(self) -> None:
        """The server ended the session with the connection (and so every update or stop meant
        for it, sent or not, is moot): start again on the next one, with the newest settings."""
        with self._lock:
            self._control.clear()
            self.job_id, self._in_flight, self._started_sent, self._updates = None, None, False, []
