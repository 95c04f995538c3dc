"""Bounded resources per connection: caps on open connections, header and body timeouts, and the
Content-Length limit.

aiohttp gives us the body size limit (`client_max_size`), header line/field limits
(`max_line_size`, `max_field_size`, `max_headers`) and an idle keep-alive timeout, but no cap on
open connections and no deadline for headers or a stalled body: a client that opens sockets and
sends nothing, or one byte a minute, holds a file descriptor forever, and enough of them stop
the server from accepting anyone. Those knobs live here, at the narrowest layer that sees them:
the per-connection protocol object. `GuardedRequestHandler` is aiohttp's `RequestHandler` with
admission and a watchdog; `GuardedServer` builds it; `GuardedAppRunner` uses that server.

Admission (`ConnectionGuard`): a new connection from a client address that already holds
`max_connections_per_client` connections, or one beyond `max_connections` in total, first makes
room by closing the longest-idle connection in that group (idle: between requests, or still
sending its headers); only when every connection in the group is busy is it answered with a 503
and closed. So idle sockets can never lock anyone out, and busy ones are bounded.

aiohttp internals used (checked by tests/server/test_limits*.py on every run): the handler's
`_messages` (parsed requests not yet handled), `_request_in_progress`, `_upgraded`,
`_current_request`, the flow-control flags `_reading_paused`/`_buffer_paused`, and the server's
`_kwargs`/`_loop`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from ..protocol import ErrorCode, ErrorEvent, TooLarge
from ..settings import Settings

log = logging.getLogger(__name__)

MAX_LINGERING_REFUSALS = 16  # refused sockets kept open briefly so the client can read its 503
REFUSAL_LINGER_S = 1.0
LOG_EVERY_S = 10.0  # evictions and refusals are summarised at most this often


def _refusal(message: str) -> bytes:
    body = ErrorEvent(code=ErrorCode.queue_full, message=message).model_dump_json().encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


REFUSED_PER_CLIENT = _refusal("too many open connections from your address; close some, or retry shortly")
REFUSED_TOTAL = _refusal("the server has too many open connections; retry shortly")


class _Summary:
    """Counts an event and logs it at most every LOG_EVERY_S (a flood must not flood the log)."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self._pending = 0
        self._last = 0.0
        self._detail = ""

    def add(self, detail: str) -> None:
        self.count += 1
        self._pending += 1
        self._detail = detail
        if time.monotonic() - self._last >= LOG_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            log.info("%s: %d connection(s) since the last such line (latest: %s)", self.what, self._pending,
                     self._detail)
            self._pending, self._last = 0, time.monotonic()


class ConnectionGuard:
    """Who may hold a connection; shared by every connection of one server."""

    def __init__(self, settings: Settings, max_connections: int | None = None):
        self.max_total = max_connections or settings.max_connections
        self.max_per_client = settings.max_connections_per_client
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self._open: dict[GuardedRequestHandler, None] = {}
        self._by_client: dict[str, set[GuardedRequestHandler]] = {}
        self.lingering = 0
        self.evictions = _Summary("closed idle (connection limit)")
        self.refusals = _Summary("refused with 503 (connection limit)")

    @property
    def open_count(self) -> int:
        return len(self._open)

    def admit(self, conn: "GuardedRequestHandler") -> bytes | None:
        """Register `conn`, or return the 503 response to refuse it with."""
        same_client = self._by_client.get(conn.client, set())
        if len(same_client) >= self.max_per_client and not self._evict_idle(same_client):
            self.refusals.add(f"{conn.client}: {len(same_client)} busy connections from that address")
            return REFUSED_PER_CLIENT
        if len(self._open) >= self.max_total and not self._evict_idle(self._open):
            self.refusals.add(f"{conn.client}: {len(self._open)} busy connections in total")
            return REFUSED_TOTAL
        self._open[conn] = None
        self._by_client.setdefault(conn.client, set()).add(conn)
        return None

    def release(self, conn: "GuardedRequestHandler") -> None:
        if self._open.pop(conn, 0) is None:
            group = self._by_client.get(conn.client)
            if group is not None:
                group.discard(conn)
                if not group:
                    del self._by_client[conn.client]

    def _evict_idle(self, group: Any) -> bool:
        idle = [c for c in group if c.is_idle()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.release(victim)
        self.evictions.add(f"{victim.client}, quiet for {victim.quiet_s():.1f} s")
        victim.close_for("idle; closed to make room for a new connection", log_it=False)
        return True


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus admission and deadlines for headers and bodies."""

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._guard = guard
        self.client = "unknown"
        self.close_reason: str | None = None  # why the server closed it (read by errors.log_client_gone)
        self.last_active = self._loop.time()  # when it last sent a byte (loop time)
        self._refused = False
        self._lingering = False  # a refused connection kept open briefly (counted in the guard)
        self._header_deadline: float | None = None
        self._body: Any = None  # the payload of a request whose body is still arriving
        self._watchdog: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ admission

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else str(peer or "unknown")
        refusal = self._guard.admit(self)
        if refusal is None:
            super().connection_made(transport)
            return
        # Refused before aiohttp sees it: answer 503, stop writing, and close after a moment (closing
        # at once with the client's request unread would reset the connection and lose the 503).
        self._refused = True
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        tr.write(refusal)
        if self._guard.lingering >= MAX_LINGERING_REFUSALS or not tr.can_write_eof():
            tr.close()
            return
        tr.write_eof()
        self._guard.lingering += 1
        self._lingering = True
        self._watchdog = self._loop.call_later(REFUSAL_LINGER_S, tr.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # discarded: the 503 is on its way
        now = self.last_active = self._loop.time()
        was_idle = self.is_idle()
        queued = len(self._messages)
        super().data_received(data)
        if self._upgraded or len(self._messages) > queued:
            # Headers complete: a new request is parsed (or the connection became a websocket).
            self._header_deadline = None
            if not self._upgraded:
                payload = self._messages[-1][1]
                if not payload.is_eof():
                    self._body = payload
                    self._arm(now + self._guard.body_timeout_s)
        elif was_idle and data and self._header_deadline is None:
            # The first bytes of a request: its headers must be complete in header_timeout_s.
            self._header_deadline = now + self._guard.header_timeout_s
            self._arm(self._header_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._refused:
            if self._lingering:
                self._guard.lingering -= 1
            return  # aiohttp never knew this connection
        self._guard.release(self)
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp's parser refused (a NUL in a header, a bad request line, a line over
        max_line_size): a typed `bad_message` and one info line. aiohttp would log a traceback
        for what is only a client's malformed bytes. Server errors (5xx) keep aiohttp's report."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = getattr(exc, "message", None) or message or str(exc or "") or "malformed request"
        reason = " ".join(str(reason).split())[:200]
        log.info("malformed request from %s refused with %d: %s", self.client, status, reason)
        body = ErrorEvent(code=ErrorCode.bad_message, message=f"malformed request: {reason}").model_dump_json()
        response = web.Response(status=status, text=body, content_type="application/json")
        response.force_close()
        return response

    def is_idle(self) -> bool:
        """Between requests (or still sending a request's headers): nothing would be lost by closing."""
        return (self.transport is not None and not self._upgraded and not self._request_in_progress
                and not self._messages)

    def quiet_s(self) -> float:
        return self._loop.time() - self.last_active

    def close_for(self, reason: str, *, log_it: bool = True) -> None:
        self.close_reason = reason
        if log_it:
            log.info("closing connection from %s: %s", self.client, reason)
        self.force_close()

    # ------------------------------------------------------------------ deadlines

    def _arm(self, when: float) -> None:
        if self._watchdog is not None:
            if self._watchdog.when() <= when:
                return  # an earlier check is pending; it re-arms for the later deadline
            self._watchdog.cancel()
        self._watchdog = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if self.transport is None:
            return
        now = self._loop.time()
        deadline = self._header_deadline
        if deadline is not None:
            if now >= deadline:
                self.close_for(f"request headers not complete after {self._guard.header_timeout_s:g} s")
                return
            self._arm(deadline)
        body = self._body
        if body is None:
            return
        if body.is_eof() or body.exception() is not None:
            self._body = None
        elif self._reading_paused or self._buffer_paused:
            # We stopped reading (the handler is not consuming yet): not the client's stall.
            self.last_active = now
            self._arm(now + self._guard.body_timeout_s)
        elif now - self.last_active >= self._guard.body_timeout_s:
            self.close_for(f"request body sent nothing for {self._guard.body_timeout_s:g} s")
        else:
            self._arm(self.last_active + self._guard.body_timeout_s)


class GuardedServer(Server):
    """aiohttp's low-level server, building GuardedRequestHandler protocols."""

    def __init__(self, handler: Any, *, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose server is a GuardedServer (aiohttp has no hook for the protocol class)."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.guard = guard

    async def cleanup(self) -> None:
        await super().cleanup()
        self.guard.evictions.flush()  # the counts since the last summary line
        self.guard.refusals.flush()

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        return GuardedServer(server.request_handler, guard=self.guard, request_factory=server.request_factory,
                             handler_cancellation=server.handler_cancellation, **server._kwargs)


# ---------------------------------------------------------------------------------------------
# Body size, before reading


def body_limit_middleware(settings: Settings) -> Callable:
    """A declared Content-Length over `max_body_bytes` is refused with 413 before a byte of the
    body is read (aiohttp's `client_max_size` only trips after reading that much; it still
    bounds chunked bodies, which declare no length)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            raise TooLarge(f"request body of {length} bytes is over this server's limit of "
                           f"{settings.max_body_bytes} bytes (--max-body-bytes)", field="body")
        return await handler(request)

    return middleware


__all__ = ["ConnectionGuard", "GuardedAppRunner", "GuardedRequestHandler", "GuardedServer",
           "body_limit_middleware"]
