"""Live sessions: latest-wins frames rendered on the job queue's one worker thread (docs/live.md).

A live session is not a journaled job: a frame is worth something only until the next one
arrives, a crash loses nothing a client would want back (it sends its next frame), and writing
every frame to disk would cost more than rendering it. So a session lives in memory only, owned
by its connection; its end (stop, disconnect, shutdown, failure) frees everything it held.

Latest wins at every step here: a session holds at most ONE pending frame (a newer frame replaces
it, counted as dropped) and at most one frame rendering; the frame that starts is always the
newest received (a stale frame is never rendered). Frames are decoded on the worker thread when
they start, so a dropped frame costs nothing but its bytes. Results leave through a
`Subscription` whose result slot is latest-wins too: a slow reader gets fewer results, never a
backlog. `JobManager` decides when a session's frame runs (its fairness policy is in manager.py).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field

from PIL import Image

from .. import images
from ..protocol import (BadImage, Cancelled, ErrorCode, GenerationRequest, InvalidRequest, LatentBridgeError, LiveCounts,
                        LiveOptions, LiveStoppedEvent, MissingImage, TooLarge, Unsupported)
from ..settings import Settings
from .subscription import Subscription

log = logging.getLogger("latentbridge.jobs")


@dataclass
class LiveInput:
    """One frame as it arrived: its parts' bytes (decoded only if it runs)."""

    frame: int
    parts: dict[str, bytes]  # role (init, control.<i>) → bytes
    format: str  # png, jpeg, webp or rgb
    width: int | None = None  # rgb parts' size
    height: int | None = None
    received_at: float = field(default_factory=time.monotonic)
    seq: int = 0  # arrival order across the server (for the queue's ordering)

    def decode(self, max_pixels: int) -> dict[str, Image.Image]:
        out = {}
        for role, data in self.parts.items():
            if self.format == "rgb":
                out[role] = Image.frombytes("RGB", (self.width, self.height), data)
                continue
            try:
                out[role] = images.decode_image(data, max_pixels=max_pixels)
            except (BadImage, TooLarge) as exc:
                exc.field = f"parts.{role}"
                raise
        return out


@dataclass(frozen=True)
class LiveResultFrame:
    """A rendered frame on its way to the client (the live_result binary frame)."""

    job_id: str
    frame: int
    revision: int
    width: int
    height: int
    format: str
    data: bytes
    timings: dict[str, float]


_frame_seq = itertools.count(1)
WARM_UP = LiveInput(-1, {}, "png")  # what `running` holds while a session warms up


class LiveSession:
    def __init__(self, owner: str, request: GenerationRequest, options: LiveOptions, decoder: str,
                 subscription: Subscription | None = None, session_id: str | None = None):
        self.id = session_id or f"live-{uuid.uuid4().hex[:24]}"
        self.owner = owner
        self.request = request
        self.options = options
        self.decoder = decoder
        self.revision = 0
        self.counts = LiveCounts()
        self.subscription = subscription or Subscription(self.id, final=(LiveStoppedEvent,))
        self.pending: LiveInput | None = None
        self.newest: LiveInput | None = None  # the newest frame received (re-rendered after an update)
        self.last_frame = -1  # the newest frame number received: numbers must increase
        self.running: LiveInput | None = None
        self.needs_warm = True  # the first turn gets the pipeline ready before any frame
        self.stopped = False
        self.cancel_event = None  # set by the manager while a frame renders

    @property
    def ready(self) -> bool:
        """Has work for the worker: its warm-up (right after the start), or a pending frame."""
        return not self.stopped and self.running is None and (self.needs_warm or self.pending is not None)

    def offer(self, frame: LiveInput) -> None:
        """A new frame: it replaces the pending one (that one is dropped as stale)."""
        self.counts.received += 1
        if frame.frame <= self.last_frame:
            raise InvalidRequest(f"frame {frame.frame} is not newer than frame {self.last_frame}: frame numbers "
                                 "must increase", field="header.frame")
        self.last_frame = frame.frame
        if self.pending is not None:
            self.counts.dropped += 1
        frame.seq = next(_frame_seq)
        self.pending = self.newest = frame

    def roles(self) -> set[str]:
        """The parts each frame of this session must carry (its request's images)."""
        needed = {"init"} if self.request.mode.value == "img2img" else set()
        return needed | {f"control.{i}" for i in range(len(self.request.controls))}

    def update(self, request: GenerationRequest | None, options: LiveOptions | None, decoder: str) -> None:
        """New settings: the next frame renders with them, and the newest frame is rendered again
        so a still scene shows the change too (when it carries the parts the new settings take;
        otherwise the client's next frame, captured with them, shows it)."""
        if request is not None:
            self.request = request
        if options is not None:
            self.options = options
        self.decoder = decoder
        self.revision += 1
        if self.newest is not None and set(self.newest.parts) != self.roles():
            if self.pending is not None:
                self.counts.dropped += 1
            self.pending = self.newest = None  # frames of the old shape cannot render any more
            return
        if self.pending is None and self.newest is not None:
            self.pending = LiveInput(self.newest.frame, self.newest.parts, self.newest.format, self.newest.width,
                                     self.newest.height, seq=next(_frame_seq))

    def take(self) -> LiveInput | None:
        """What the worker does next: None for the warm-up, else the pending frame, which is the
        newest received (nothing newer exists)."""
        if self.needs_warm:
            self.running = WARM_UP
            return None
        frame = self.pending
        assert frame is not None
        if self.newest is not None and frame.frame < self.newest.frame:
            self.counts.stale_rendered += 1  # cannot happen: a newer frame always replaces the pending one
        self.pending, self.running = None, frame
        return frame

    def stop(self, reason: str, message: str | None = None) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.pending is not None:
            self.counts.dropped += 1
            self.pending = None
        self.newest = None
        if self.cancel_event is not None:
            self.cancel_event.set()
        self.subscription.push(LiveStoppedEvent(job_id=self.id, reason=reason, frames=self.counts.model_copy(),
                                                message=message))


def check_live_limits(request: GenerationRequest, settings: Settings) -> None:
    """The server's size and step limits, as for jobs (a live frame is a generation like any)."""
    if request.width > settings.max_width:
        raise TooLarge(f"width {request.width} is above this server's limit of {settings.max_width}",
                       field="request.width")
    if request.height > settings.max_height:
        raise TooLarge(f"height {request.height} is above this server's limit of {settings.max_height}",
                       field="request.height")
    if request.width * request.height > settings.max_pixels:
        raise TooLarge(f"{request.width}x{request.height} is more than this server's limit of {settings.max_pixels} "
                       "pixels", field="request.width")
    if request.steps > settings.max_steps:
        raise InvalidRequest(f"steps {request.steps} is above this server's limit of {settings.max_steps}",
                             field="request.steps")


ERRORS_OF_A_FRAME = ("bad_image", "missing_image", "too_large")  # the frame was at fault, not the session


class LiveBoard:
    """The server's live sessions: start, frames, updates, stop; and one frame's run on the
    worker thread. The JobManager owns it and decides when a session's turn comes."""

    def __init__(self, engine, settings: Settings, wake, call, on_worker, enabled: bool = True):
        self.engine = engine
        self.settings = settings
        self.enabled = enabled  # False where the engine is not in this process (Ray Serve replicas)
        self._wake = wake  # () → None: the worker has something to do
        self._call = call  # (fn, *args) → None: run on the event loop (from the worker thread)
        self._on_worker = on_worker  # (fn) → None: run fn on the worker thread, after what runs there
        self.sessions: dict[str, LiveSession] = {}

    # ------------------------------------------------------------------ on the event loop

    def start(self, owner: str, request: GenerationRequest, options: LiveOptions) -> LiveSession:
        if not self.enabled:
            raise Unsupported("live sessions need the engine in this server's process; this one runs it on Ray "
                              "Serve replicas (--ray): start a live session on a single-machine server", field="type")
        if self.settings.live_sessions == 0:
            raise Unsupported("live sessions are off on this server (--live-sessions 0)", field="type")
        if len(self.sessions) >= self.settings.live_sessions:
            raise LatentBridgeError(f"this server runs {self.settings.live_sessions} live sessions already; stop one "
                                    "or retry later", code=ErrorCode.queue_full)
        mine = [s for s in self.sessions.values() if s.owner == owner]
        if len(mine) >= self.settings.live_sessions_per_client:
            raise LatentBridgeError(f"this connection runs {len(mine)} live sessions already (at most "
                                    f"{self.settings.live_sessions_per_client}); stop one first", code=ErrorCode.queue_full)
        effective = self._effective(request, options)
        session = LiveSession(owner, effective, options, self.engine.live_decoder(options))
        self.sessions[session.id] = session
        self._wake()
        log.info("live session %s started: %s, preset %s, client %s", session.id, _describe(effective),
                 options.preset.value, owner, extra={"job_id": session.id, "client": owner, "event": "live_started"})
        return session

    def _effective(self, request: GenerationRequest, options: LiveOptions) -> GenerationRequest:
        try:
            effective = self.engine.live_request(request, options)
        except LatentBridgeError as exc:
            if exc.field and not exc.field.startswith("request."):
                exc.field = f"request.{exc.field}"
            raise
        check_live_limits(effective, self.settings)
        return effective

    def session(self, session_id: str, owner: str) -> LiveSession:
        session = self.sessions.get(session_id)
        if session is None or session.owner != owner:
            raise LatentBridgeError(f"no live session {session_id} on this connection", field="job_id",
                                    code=ErrorCode.unknown_job)
        return session

    def frame(self, session_id: str, owner: str, frame: LiveInput) -> None:
        session = self.session(session_id, owner)
        roles, needed = set(frame.parts), session.roles()
        if roles != needed:
            raise MissingImage(f"live session {session.id} takes the parts {', '.join(sorted(needed))}, this frame "
                               f"has {', '.join(sorted(roles))}", field="header.parts")
        if frame.format == "rgb" and (frame.width or 0) * (frame.height or 0) > self.settings.max_pixels:
            raise TooLarge(f"frame is {frame.width}x{frame.height}, more than {self.settings.max_pixels} pixels",
                           field="header.width")
        session.offer(frame)
        self._wake()

    def update(self, session_id: str, owner: str, request: GenerationRequest | None,
               options: LiveOptions | None) -> LiveSession:
        session = self.session(session_id, owner)
        options = options or session.options
        base = request if request is not None else session.request
        if request is not None and request.seed is None:
            base = request.with_seed(session.request.seed or 0)  # the session's seed stays fixed
        effective = self._effective(base, options)
        session.update(effective, options, self.engine.live_decoder(options))
        self._wake()
        return session

    def stop(self, session_id: str, reason: str, message: str | None = None) -> LiveSession | None:
        """End a session: its pending frame is dropped, a rendering one cancelled, and the engine's
        warm state for it freed (on the worker thread, after what runs there)."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        session.stop(reason, message)
        self._on_worker(lambda: self.engine.live_end(session.id))
        log.info("live session %s %s: %s", session.id, reason, session.counts.model_dump(),
                 extra={"job_id": session.id, "client": session.owner, "event": "live_" + reason})
        return session

    def ready(self) -> list[LiveSession]:
        """Sessions with work, in turn order: served longest ago first is the manager's call."""
        return [s for s in self.sessions.values() if s.ready]

    # ------------------------------------------------------------------ on the worker thread

    def execute(self, session: LiveSession, frame: LiveInput | None, cancel) -> None:
        """Warm a session up (frame None) or render one frame, and hand the result to the loop.
        Never raises."""
        request, options, revision = session.request, session.options, session.revision
        try:
            if frame is None:
                self.engine.live_warm(session.id, revision, request, options, cancel)
                session.needs_warm = False
                return
            clock = time.perf_counter()
            wait_ms = (time.monotonic() - frame.received_at) * 1000.0
            decoded = frame.decode(self.settings.max_pixels)
            decode_ms = (time.perf_counter() - clock) * 1000.0
            result = self.engine.live_frame(session.id, revision, request, options, decoded, cancel)
            clock = time.perf_counter()
            data = images.encode_preview(result.image, max(result.image.size), options.format)
            timings = {"wait": round(wait_ms, 2), "decode": round(decode_ms, 2), **result.timings,
                       "encode": round((time.perf_counter() - clock) * 1000.0, 2)}
            out = LiveResultFrame(session.id, frame.frame, revision, result.image.width, result.image.height,
                                  options.format, data, timings)
            self._call(self._deliver, session, out)
        except Cancelled:
            return  # stopped while it rendered: nothing to deliver
        except LatentBridgeError as exc:
            self._call(self._failed, session, exc)
        except Exception as exc:  # noqa: BLE001 - a crashed frame ends its session alone
            log.exception("live session %s: frame failed", session.id)
            self._call(self._failed, session, LatentBridgeError(
                f"internal error ({type(exc).__name__}); see the server log", code=ErrorCode.internal))

    def _deliver(self, session: LiveSession, out: LiveResultFrame) -> None:
        if session.stopped:
            return
        session.counts.rendered += 1
        session.subscription.push_preview(out)

    def _failed(self, session: LiveSession, exc: LatentBridgeError) -> None:
        if session.stopped:
            return
        session.counts.failed += 1
        session.subscription.push(exc.to_event(session.id))
        if exc.code.value not in ERRORS_OF_A_FRAME:  # the settings cannot render: every frame would fail
            self.stop(session.id, "failed", exc.message)


def _describe(request: GenerationRequest) -> str:
    return f"{request.mode.value} {request.width}x{request.height}, {request.steps} steps, {request.sampler.value}"
