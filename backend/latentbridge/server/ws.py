"""The websocket endpoint (`protocol.WS_PATH`); docs/protocol.md describes it in prose.

One connection may run several jobs. For each job it follows, a forwarding task drains the job's
`Subscription` and writes its events: JSON events as text frames, previews and results as binary
frames. Previews are latest-wins inside the subscription, so a slow client gets fewer previews
and never slows the generation. Closing the connection stops the forwarding only: the jobs run
on, and their results stay retrievable (attach, or HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel

from ..jobs import PreviewFrame
from ..jobs.live import LiveInput, LiveResultFrame
from ..protocol import (
    PROTOCOL_VERSION,
    WS_PATH,
    AcceptedEvent,
    AttachMessage,
    BinaryHeader,
    CancelMessage,
    ErrorCode,
    ErrorEvent,
    HelloEvent,
    HelloMessage,
    LatentBridgeError,
    LiveStartedEvent,
    LiveStartMessage,
    LiveTimings,
    LiveStopMessage,
    LiveUpdatedEvent,
    LiveUpdateMessage,
    ModelEvent,
    PingMessage,
    PongEvent,
    ResultEvent,
    SubmitMessage,
    decode_binary_frame,
    encode_binary_frame,
    parse_client_message,
    split_live_parts,
)
from .app import AUTH_THROTTLE_KEY, ENGINE_KEY, JOBS_KEY, SERVER_NAME, SETTINGS_KEY, WEBSOCKETS_KEY, capabilities
from .security import bearer, check_token
from .submit import resolve_remote_request, submit_job
from .uploads import UPLOADS_KEY

log = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
MODEL_WATCH_S = 0.25  # how often the model's status is checked for changes to announce
MODEL_WATCH_KEY = web.AppKey("latentbridge_model_watch", asyncio.Task)
# What a websocket write raises once the peer is gone (aiohttp's ClientConnectionResetError is a
# ConnectionResetError; a write after close is a RuntimeError in older aiohttp).
PEER_GONE = (ConnectionResetError, RuntimeError)


class Connection:
    def __init__(self, app: web.Application, ws: web.WebSocketResponse, authenticated: bool):
        self.app = app
        self.ws = ws
        self.id = uuid.uuid4().hex[:12]
        self.owner = f"ws:{self.id}"
        self.remote: str | None = None
        self.ended: str | None = None  # how the connection ended, when it was not a clean close
        self.authenticated = authenticated
        self.greeted = False  # hello answered: model events may follow
        self.uploads = app[UPLOADS_KEY].pending(self.owner)
        self.forwarders: dict[str, asyncio.Task] = {}
        self.live_sessions: set[str] = set()  # live sessions this connection started (they end with it)
        self._send_lock = asyncio.Lock()

    # ------------------------------------------------------------------ sending

    async def send_event(self, event: BaseModel) -> None:
        async with self._send_lock:
            await self.ws.send_str(event.model_dump_json())

    async def send_binary(self, header: BinaryHeader, payload: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(encode_binary_frame(header, payload))

    async def send_error(self, exc: LatentBridgeError, job_id: str | None = None) -> None:
        await self.send_event(exc.to_event(job_id))

    # ------------------------------------------------------------------ receiving

    async def on_text(self, text: str) -> None:
        message = parse_client_message(text)
        if isinstance(message, HelloMessage):
            await self.on_hello(message)
            return
        if not self.authenticated:
            raise LatentBridgeError("send `hello` with the token first", code=ErrorCode.unauthorized)
        if isinstance(message, SubmitMessage):
            await self.on_submit(message)
        elif isinstance(message, CancelMessage):
            await self.on_cancel(message)
        elif isinstance(message, AttachMessage):
            await self.on_attach(message)
        elif isinstance(message, PingMessage):
            await self.send_event(PongEvent())
        elif isinstance(message, LiveStartMessage):
            await self.on_live_start(message)
        elif isinstance(message, LiveUpdateMessage):
            await self.on_live_update(message)
        elif isinstance(message, LiveStopMessage):
            await self.on_live_stop(message.job_id)

    async def on_hello(self, message: HelloMessage) -> None:
        if message.protocol != PROTOCOL_VERSION:
            raise LatentBridgeError(f"protocol {message.protocol} not supported; this server speaks {PROTOCOL_VERSION}",
                                    field="protocol", code=ErrorCode.bad_message)
        if not self.authenticated:
            ok = await check_token(message.token, self.remote, self.app[SETTINGS_KEY], self.app[AUTH_THROTTLE_KEY])
            if not ok:
                raise LatentBridgeError("invalid token", field="token", code=ErrorCode.unauthorized)
            self.authenticated = True
        await self.send_event(HelloEvent(server=SERVER_NAME, capabilities=capabilities(self.app),
                                         model=self.app[ENGINE_KEY].status))
        self.greeted = True

    async def on_binary(self, frame: bytes) -> None:
        if not self.authenticated:
            raise LatentBridgeError("send `hello` with the token first", code=ErrorCode.unauthorized)
        header, payload = decode_binary_frame(frame)
        if header.kind == "live_frame":
            assert header.job_id is not None and header.frame is not None
            try:
                parts = split_live_parts(header, payload)
                self.app[JOBS_KEY].live.frame(header.job_id, self.owner, LiveInput(header.frame, parts, header.format,
                                                                                   header.width, header.height))
            except LatentBridgeError as exc:  # the error names the session: its client frees its in-flight slot
                log.info("websocket client %s: live frame refused: %s: %s", self.remote, exc.code.value,
                         exc.message[:300])
                await self.send_error(exc, header.job_id)
            return
        if header.kind != "upload":
            raise LatentBridgeError(f"clients may only send `upload` and `live_frame` frames, not `{header.kind}`",
                                    field="header.kind", code=ErrorCode.bad_message)
        if not payload:
            raise LatentBridgeError("upload frame has no image bytes", field="header", code=ErrorCode.bad_image)
        assert header.upload_id is not None
        self.uploads.put(header.upload_id, payload)

    async def on_submit(self, message: SubmitMessage) -> None:
        data: dict[str, bytes] = {}
        try:
            for role, upload_id in message.images.items():
                data[role] = self.uploads.take(upload_id, field=f"images.{role}")
        finally:
            for upload_id in message.images.values():  # consumed (or refused) either way
                self.uploads.discard(upload_id)
        others = {role: payload for role, payload in data.items() if role not in ("init", "mask")}
        job = await submit_job(self.app, message.request, data.get("init"), data.get("mask"), owner=self.owner,
                               priority=message.priority, fields=("images.init", "images.mask"), images=others)
        jobs = self.app[JOBS_KEY]
        subscription = jobs.subscribe(job.id)  # before any await: no event can be missed
        await self.send_event(AcceptedEvent(job_id=job.id, client_ref=message.client_ref,
                                            position=jobs.position(job) or 0))
        self.follow(job.id, subscription)

    async def on_cancel(self, message: CancelMessage) -> None:
        jobs = self.app[JOBS_KEY]
        if message.job_id in self.live_sessions:
            await self.on_live_stop(message.job_id)  # cancelling a live session stops it
            return
        if await jobs.cancel(message.job_id):
            return  # the job's stream reports `cancelled`
        status = jobs.status(message.job_id)
        if status is None:
            await self._unknown_job(message.job_id)
            return
        await self.send_event(status)  # already finished: say how it ended

    async def _unknown_job(self, job_id: str) -> None:
        """The error names the job asked about, so a client following several can tell which."""
        await self.send_error(LatentBridgeError(f"no job {job_id}", field="job_id", code=ErrorCode.unknown_job),
                              job_id=job_id)

    async def on_attach(self, message: AttachMessage) -> None:
        jobs = self.app[JOBS_KEY]
        status = jobs.status(message.job_id)
        if status is None:
            await self._unknown_job(message.job_id)
            return
        if message.job_id in self.forwarders:
            await self.send_event(status)
            return
        subscription = jobs.subscribe(message.job_id)
        await self.send_event(status)
        self.follow(message.job_id, subscription)

    # ------------------------------------------------------------------ live sessions (docs/live.md)

    async def on_live_start(self, message: LiveStartMessage) -> None:
        live = self.app[JOBS_KEY].live
        if not self.app[JOBS_KEY].accepting:
            raise LatentBridgeError("the server is shutting down", code=ErrorCode.model_not_ready)
        request = resolve_remote_request(self.app, message.request)
        session = live.start(self.owner, request, message.live)
        self.live_sessions.add(session.id)
        await self.send_event(LiveStartedEvent(job_id=session.id, client_ref=message.client_ref,
                                               revision=session.revision, request=session.request,
                                               live=session.options, decoder=session.decoder))
        self.follow(session.id, session.subscription)

    async def on_live_update(self, message: LiveUpdateMessage) -> None:
        live = self.app[JOBS_KEY].live
        request = resolve_remote_request(self.app, message.request) if message.request is not None else None
        session = live.update(message.job_id, self.owner, request, message.live)
        await self.send_event(LiveUpdatedEvent(job_id=session.id, revision=session.revision, request=session.request,
                                               live=session.options, decoder=session.decoder))

    async def on_live_stop(self, session_id: str) -> None:
        live = self.app[JOBS_KEY].live
        live.session(session_id, self.owner)  # unknown (or another connection's): a typed error
        self.live_sessions.discard(session_id)
        live.stop(session_id, "stopped")  # its subscription delivers `live_stopped`, then ends

    # ------------------------------------------------------------------ forwarding a job

    def follow(self, job_id: str, subscription: Any) -> None:
        task = asyncio.create_task(self._forward(job_id, subscription), name=f"ws-forward-{job_id}")
        self.forwarders[job_id] = task
        task.add_done_callback(lambda _t: self.forwarders.pop(job_id, None))

    async def _forward(self, job_id: str, subscription: Any) -> None:
        jobs = self.app[JOBS_KEY]
        try:
            async for item in subscription:
                if self.ws.closed:
                    return
                if isinstance(item, LiveResultFrame):
                    await self.send_binary(BinaryHeader(kind="live_result", format=item.format, job_id=job_id,
                                                        frame=item.frame, revision=item.revision, width=item.width,
                                                        height=item.height, timings=LiveTimings(**item.timings)), item.data)
                    continue
                if isinstance(item, PreviewFrame):
                    await self.send_binary(BinaryHeader(kind="preview", format=item.format, job_id=job_id,
                                                        step=item.step, total=item.total, width=item.width,
                                                        height=item.height), item.data)
                    continue
                await self.send_event(item)
                if isinstance(item, ResultEvent):
                    # In memory for a recent job, else read from disk: off the event loop either way.
                    png = await asyncio.to_thread(jobs.result_png, job_id, item.index)
                    if png is None:
                        await self.send_error(LatentBridgeError(f"result {item.index} is missing",
                                                                code=ErrorCode.internal), job_id)
                        continue
                    await self.send_binary(BinaryHeader(kind="result", format="png", job_id=job_id, index=item.index,
                                                        width=item.width, height=item.height), png)
        except PEER_GONE:
            return  # the client went away; the job carries on
        finally:
            subscription.close()

    async def close(self) -> None:
        live = self.app[JOBS_KEY].live
        for session_id in list(self.live_sessions):  # a live session ends with its connection
            live.stop(session_id, "disconnected")
        self.live_sessions.clear()
        for task in list(self.forwarders.values()):
            task.cancel()
        self.uploads.clear()

    async def close_unless_authenticated(self, timeout_s: float) -> None:
        """A websocket must authenticate within `timeout_s` (ws_auth_timeout_s), or it is closed:
        unauthenticated sockets must not sit on connections and memory."""
        await asyncio.sleep(timeout_s)
        if not self.authenticated and not self.ws.closed:
            log.info("closing websocket from %s: no valid token within %g s", self.remote, timeout_s)
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication timeout")


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    settings = app[SETTINGS_KEY]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=settings.max_message_bytes)
    await ws.prepare(request)
    # The security middleware already checked a header token; without one, `hello` must carry it.
    conn = Connection(app, ws, authenticated=not settings.token or bearer(request) is not None)
    conn.remote = request.remote
    app[WEBSOCKETS_KEY].add(conn)
    auth_deadline = None
    if not conn.authenticated:
        auth_deadline = asyncio.create_task(conn.close_unless_authenticated(settings.ws_auth_timeout_s))
    try:
        async for msg in ws:
            if not await _handle_message(conn, msg):
                break
    except ConnectionResetError as exc:  # the peer vanished while we replied
        conn.ended = f"went away ({exc or type(exc).__name__})"
    finally:
        if auth_deadline is not None:
            auth_deadline.cancel()
        await conn.close()
        app[WEBSOCKETS_KEY].discard(conn)
    if conn.ended is None and ws.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE):
        conn.ended = "went away (connection lost without a close frame)"
    if conn.ended is not None:  # one line for a client that hung up or broke the protocol; its jobs run on
        log.info("websocket client %s %s", conn.remote, conn.ended)
    return ws


async def _handle_message(conn: Connection, msg: Any) -> bool:
    """One frame; False when the connection is done. Bad frames get a typed `error` event and one
    log line; a frame the websocket layer itself refuses (invalid UTF-8, over max_message_bytes)
    closes the connection with the matching close code, logged once."""
    ws = conn.ws
    try:
        if msg.type == WSMsgType.TEXT:
            await conn.on_text(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await conn.on_binary(msg.data)
        elif msg.type == WSMsgType.ERROR:
            conn.ended = f"broke the websocket protocol, closed ({msg.data})"
            return False
    except LatentBridgeError as exc:
        log.info("websocket client %s: %s: %s", conn.remote, exc.code.value, exc.message[:300])
        await conn.send_error(exc)
        if exc.code is ErrorCode.unauthorized:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
            return False
    except Exception as exc:  # noqa: BLE001 - typed error to the client, traceback to the log
        if isinstance(exc, ConnectionResetError) or ws.closed:  # the peer vanished while we replied
            conn.ended = f"went away ({exc or type(exc).__name__})"
            return False
        log.exception("error handling a websocket message")
        await conn.send_event(ErrorEvent(code=ErrorCode.internal, message="internal server error; see the server log"))
    return True


def _model_key(status: Any) -> tuple:
    """What makes a model status worth announcing (progress in whole percent)."""
    percent = None if status.progress is None else int(status.progress * 100)
    return status.name, status.state, percent, status.error


async def announce_model_changes(app: web.Application) -> None:
    """Watch the engine's status (changed on the worker thread) and send a `model` event to every
    greeted client when it changes: cheap polling, no callbacks from the GPU thread."""
    engine = app[ENGINE_KEY]
    last = _model_key(engine.status)
    while True:
        await asyncio.sleep(MODEL_WATCH_S)
        status = engine.status
        key = _model_key(status)
        if key == last:
            continue
        last = key
        for conn in [c for c in app[WEBSOCKETS_KEY] if c.greeted and not c.ws.closed]:
            try:
                await conn.send_event(ModelEvent(model=status))
            except PEER_GONE:
                continue  # that client is going away; the others still hear


async def _start_model_watch(app: web.Application) -> None:
    app[MODEL_WATCH_KEY] = asyncio.create_task(announce_model_changes(app), name="model-watch")


async def _stop_model_watch(app: web.Application) -> None:
    task = app.get(MODEL_WATCH_KEY)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def add_ws_route(app: web.Application) -> None:
    app.router.add_get(WS_PATH, websocket_handler)
    app.on_startup.append(_start_model_watch)
    app.on_shutdown.append(_stop_model_watch)
