"""Python SDK for a Latent Bridge server: websocket and HTTP APIs, async and sync.

    async with AsyncClient("http://127.0.0.1:7423", token=None) as client:
        job = await client.submit(request, init_image=png_bytes)
        async for item in job:            # protocol events and ImageFrame (previews, results)
            ...
        pngs = job.images()

    pngs = Client("http://127.0.0.1:7423").generate(request, on_progress=print)

    session = await client.live_start(live_request)   # live sessions: client_live.py
    await session.send_frame(init=png_bytes); result = await session.next_result()

One websocket carries every job and live session of a client: a single reader task routes each
event and binary frame to its job or session by `job_id`. The blocking `Client` is in
client_blocking.py, what a job hands out in client_jobs.py; all are importable from here. Errors the server reports (ErrorEvent, typed HTTP error bodies) are
raised as `protocol.LatentBridgeError` with the same code and field.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from pydantic import BaseModel, ValidationError

from .protocol import (
    AcceptedEvent,
    AttachMessage,
    BinaryHeader,
    CancelledEvent,
    CancelMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    HelloEvent,
    ModelEvent,
    HelloMessage,
    JobState,
    LatentBridgeError,
    LiveOptions,
    LiveStartedEvent,
    LiveStartMessage,
    LiveStopMessage,
    LiveStoppedEvent,
    LiveUpdatedEvent,
    LiveUpdateMessage,
    PingMessage,
    PongEvent,
    PreviewEvent,
    ProgressEvent,
    StatusEvent,
    SubmitMessage,
    decode_binary_frame,
    encode_binary_frame,
    parse_server_event,
    server_event_adapter,
)

from .client_jobs import (  # the SDK's public names stay importable from here
    ConnectionLost,
    ImageFrame,
    Job,
    JobItem,
    error_from_body,
    error_from_event,
    preview_from_event,
    sniff_format,
    split_url,
)
from .client_blocking import BlockingLiveSession, Client
from .client_live import LiveResult, LiveSession

__all__ = ["AsyncClient", "BlockingLiveSession", "Client", "ConnectionLost", "ImageFrame", "Job", "JobItem",
           "LiveResult", "LiveSession"]

API_PREFIX = "/api/v1"
CLIENT_NAME = "latentbridge-python"
# Results are full-size PNGs; the server enforces its own limits on what we send.
MAX_RECEIVE_BYTES = 512 * 1024 * 1024

async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Text lines of a stream, however long (aiohttp's own line reader caps a line's length, and
    an SSE preview line carries a whole base64 image)."""
    buffer = bytearray()
    async for chunk in content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            yield buffer[:end].decode("utf-8").rstrip("\r")
            del buffer[: end + 1]
    if buffer:
        yield buffer.decode("utf-8").rstrip("\r")


class AsyncClient:
    """Async client for both APIs. The websocket opens on first use (or `connect()`)."""

    def __init__(self, url: str, token: str | None = None, *, client_name: str = CLIENT_NAME,
                 heartbeat_s: float = 20.0, connect_timeout_s: float = 10.0):
        self.base_url, self.ws_url = split_url(url)
        self.token = token
        self.client_name = client_name
        self.hello: HelloEvent | None = None
        self._heartbeat_s = heartbeat_s
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._jobs: dict[str, Job] = {}
        self._live: dict[str, LiveSession] = {}
        # Calls that await a reply (submit, attach, live start/update/stop) go one at a time, so an
        # error without a job id (the server's answer to a refused call) belongs to the one awaiting.
        self._reply_lock = asyncio.Lock()
        self._pending: tuple[str, asyncio.Future[Any]] | None = None  # (reply key, reply)
        self._pongs: list[asyncio.Future[None]] = []
        self._connect_lock = asyncio.Lock()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- plumbing

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s)
            self._session = aiohttp.ClientSession(headers=self._headers(), timeout=timeout)
        return self._session

    async def close(self) -> None:
        """Close the websocket and the HTTP session. Jobs keep running on the server."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> HelloEvent:
        """Open the websocket and do the hello handshake (idempotent while connected)."""
        async with self._connect_lock:
            if self.connected and self.hello is not None:
                return self.hello
            try:
                ws = await self._http().ws_connect(
                    self.ws_url, heartbeat=self._heartbeat_s, max_msg_size=MAX_RECEIVE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                )
            except aiohttp.WSServerHandshakeError as exc:
                code = {401: ErrorCode.unauthorized, 403: ErrorCode.forbidden}.get(exc.status, ErrorCode.internal)
                raise LatentBridgeError(f"websocket refused: HTTP {exc.status} {exc.message}", code=code) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise ConnectionLost(f"cannot connect to {self.ws_url}: {exc}") from None
            await ws.send_str(HelloMessage(client=self.client_name, token=None).model_dump_json())
            msg = await ws.receive(timeout=self._connect_timeout_s)
            if msg.type != aiohttp.WSMsgType.TEXT:
                await ws.close()
                raise ConnectionLost(f"server closed the websocket during the handshake ({msg.type.name})")
            event = parse_server_event(msg.data)
            if isinstance(event, ErrorEvent):
                await ws.close()
                raise error_from_event(event)
            if not isinstance(event, HelloEvent):
                await ws.close()
                raise LatentBridgeError(f"expected hello, got {event.type!r}", code=ErrorCode.bad_message)  # type: ignore[attr-defined]
            self._ws, self.hello = ws, event
            self._reader = asyncio.create_task(self._read_loop(ws), name="latentbridge-client-reader")
            return event

    async def _send_text(self, message: BaseModel) -> None:
        await self.connect()
        assert self._ws is not None
        await self._ws.send_str(message.model_dump_json())

    async def _send_bytes(self, frame: bytes) -> None:
        if not self.connected:
            raise ConnectionLost("the websocket is not open")
        assert self._ws is not None
        await self._ws.send_bytes(frame)

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._route_event(parse_server_event(msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    header, payload = decode_binary_frame(msg.data)
                    if header.kind == "live_result":
                        session = self._live.get(header.job_id or "")
                        if session is not None:
                            session._on_result(LiveResult.from_frame(header, payload))
                        continue
                    job = self._jobs.get(header.job_id or "")
                    if job is not None:
                        job._feed(ImageFrame(header, payload))
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        except (ValidationError, LatentBridgeError):
            # A frame we cannot decode means we no longer agree on the protocol: drop the link.
            await ws.close()
        finally:
            self._on_connection_lost()

    def _route_event(self, event: BaseModel) -> None:
        pending = self._pending if self._pending is not None and not self._pending[1].done() else None
        if isinstance(event, AcceptedEvent):
            if pending is not None and pending[0] == event.client_ref:
                job = Job(event.job_id, position=event.position)
                self._jobs[event.job_id] = job
                pending[1].set_result(job)
            return
        if isinstance(event, StatusEvent) and pending is not None and pending[0] == event.job_id:
            pending[1].set_result(self._jobs[event.job_id])
        if isinstance(event, ModelEvent):  # keeps `hello.model` current (e.g. download progress)
            if self.hello is not None:
                self.hello = self.hello.model_copy(update={"model": event.model})
            return
        if isinstance(event, (LiveStartedEvent, LiveUpdatedEvent, LiveStoppedEvent)):
            self._route_live(event, pending)
            return
        if isinstance(event, PongEvent):
            for fut in self._pongs:
                if not fut.done():
                    fut.set_result(None)
            self._pongs.clear()
            return
        job_id = getattr(event, "job_id", None)
        if isinstance(event, ErrorEvent) and job_id is not None and pending is not None and pending[0] == job_id:
            pending[1].set_exception(error_from_event(event))  # an attach to a job the server does not know
            return
        if job_id is None:
            if isinstance(event, ErrorEvent) and pending is not None:
                pending[1].set_exception(error_from_event(event))
            return
        if isinstance(event, ErrorEvent) and job_id in self._live:
            self._live[job_id]._on_error(event)  # a refused or failed frame: the session carries on
            return
        job = self._jobs.get(job_id)
        if job is not None:
            job._feed(event)
            if isinstance(event, (DoneEvent, CancelledEvent, ErrorEvent)):
                self._jobs.pop(job_id, None)

    def _route_live(self, event: LiveStartedEvent | LiveUpdatedEvent | LiveStoppedEvent,
                    pending: tuple[str, asyncio.Future[Any]] | None) -> None:
        if isinstance(event, LiveStartedEvent):
            if pending is not None and pending[0] == f"live_start:{event.client_ref}":
                session = LiveSession(self, event)
                self._live[event.job_id] = session
                pending[1].set_result(session)
            return
        session = self._live.get(event.job_id)
        if isinstance(event, LiveUpdatedEvent):
            if session is not None:
                session._on_updated(event)
        else:
            self._live.pop(event.job_id, None)
            if session is not None:
                session._on_stopped(event)
        if pending is not None and pending[0] == f"{event.type}:{event.job_id}":
            pending[1].set_result(event)

    def _on_connection_lost(self) -> None:
        lost = ConnectionLost("connection to the server closed; attach to the job again after reconnecting")
        for job in self._jobs.values():
            job._feed(lost)
        self._jobs.clear()
        # The server ends a connection's live sessions with it: start a new one after reconnecting.
        for session in self._live.values():
            session._on_connection_lost(ConnectionLost(f"connection closed: live session {session.job_id} ended"))
        self._live.clear()
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(lost)
        for fut in self._pongs:
            if not fut.done():
                fut.set_exception(lost)
        self._pongs.clear()

    # ---------------------------------------------------------------- websocket API

    async def submit(self, request: GenerationRequest, init_image: bytes | None = None, mask: bytes | None = None,
                     *, priority: str = "normal", images: dict[str, bytes] | None = None) -> Job:
        """Upload the images as binary frames, submit, and return the accepted Job. `images`:
        the other images by role (`control.0` for control unit 0, `reference.0`, ...)."""
        uploads: dict[str, str] = {}
        frames: list[bytes] = []
        for role, data in (("init", init_image), ("mask", mask), *(images or {}).items()):
            if data is None:
                continue
            upload_id = uuid.uuid4().hex
            header = BinaryHeader(kind="upload", format=sniff_format(data), upload_id=upload_id)  # type: ignore[arg-type]
            frames.append(encode_binary_frame(header, data))
            uploads[role] = upload_id
        ref = uuid.uuid4().hex
        message = SubmitMessage(client_ref=ref, request=request, images=uploads, priority=priority)  # type: ignore[arg-type]
        return await self._await_reply(ref, frames, message)

    async def _await_reply(self, key: str, frames: list[bytes], message: BaseModel) -> Any:
        """Send frames + a message and wait for the reply routed to `key` (see `_route_event`)."""
        async with self._reply_lock:
            await self.connect()
            assert self._ws is not None
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending = (key, future)
            try:
                for frame in frames:
                    await self._ws.send_bytes(frame)
                await self._ws.send_str(message.model_dump_json())
                return await future
            finally:
                self._pending = None

    async def cancel(self, job_id: str) -> None:
        """Ask the server to cancel a queued or running job; its stream ends with `cancelled`."""
        await self._send_text(CancelMessage(job_id=job_id))

    async def attach(self, job_id: str) -> Job:
        """Follow a job started earlier (e.g. before a reconnect). The server answers with its
        status (the Job's first item) and re-sends the results of a finished job. Unknown job →
        LatentBridgeError `unknown_job`."""
        await self.connect()
        job = self._jobs.get(job_id) or Job(job_id)
        self._jobs[job_id] = job
        try:
            return await self._await_reply(job_id, [], AttachMessage(job_id=job_id))
        except LatentBridgeError:
            self._jobs.pop(job_id, None)
            raise

    async def live_start(self, request: GenerationRequest, live: LiveOptions | None = None) -> LiveSession:
        """Start a live session (docs/live.md): img2img of every frame sent (txt2img from the
        control maps when the request has control units and no init). `LiveSession` sends frames
        latest-wins and hands out the results; a refused start raises LatentBridgeError."""
        ref = uuid.uuid4().hex
        message = LiveStartMessage(client_ref=ref, request=request, live=live or LiveOptions())
        session: LiveSession = await self._await_reply(f"live_start:{ref}", [], message)
        return session

    async def _live_update(self, job_id: str, request: GenerationRequest | None,
                           live: LiveOptions | None) -> LiveUpdatedEvent:
        message = LiveUpdateMessage(job_id=job_id, request=request, live=live)
        event: LiveUpdatedEvent = await self._await_reply(f"live_updated:{job_id}", [], message)
        return event

    async def _live_stop(self, job_id: str) -> LiveStoppedEvent:
        event: LiveStoppedEvent = await self._await_reply(f"live_stopped:{job_id}", [], LiveStopMessage(job_id=job_id))
        return event

    async def ping(self, timeout_s: float = 10.0) -> float:
        """Round-trip time of an application-level ping, in seconds."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pongs.append(fut)
        start = loop.time()
        await self._send_text(PingMessage())
        await asyncio.wait_for(fut, timeout_s)
        return loop.time() - start

    # ---------------------------------------------------------------- HTTP API

    async def _request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        try:
            resp = await self._http().request(method, self.base_url + path, **kwargs)
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLost(f"cannot reach {self.base_url}: {exc}") from None
        if resp.status >= 400:
            body = await resp.read()
            resp.release()
            raise error_from_body(resp.status, body)
        return resp

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self._request(method, path, **kwargs)
        async with resp:
            return await resp.json(content_type=None)

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", f"{API_PREFIX}/health")

    async def models(self) -> Any:
        return await self._json("GET", f"{API_PREFIX}/models")

    async def load_model(self, name: str) -> Any:
        return await self._json("POST", f"{API_PREFIX}/models/load", json={"model": name})

    async def submit_http(self, request: GenerationRequest, init_image: bytes | None = None,
                          mask: bytes | None = None, *, priority: str = "normal",
                          images: dict[str, bytes] | None = None) -> str:
        """Submit over HTTP (JSON with base64 images); returns the job id."""
        body: dict[str, Any] = {"request": request.model_dump(mode="json"), "priority": priority}
        for role, data in (("init_image", init_image), ("mask", mask)):
            if data is not None:
                sniff_format(data)
                body[role] = base64.b64encode(data).decode("ascii")
        for role, data in (images or {}).items():
            sniff_format(data)
            body.setdefault("images", {})[role] = base64.b64encode(data).decode("ascii")
        data = await self._json("POST", f"{API_PREFIX}/jobs", json=body)
        return str(data["job_id"])

    async def status(self, job_id: str) -> StatusEvent:
        return StatusEvent.model_validate(await self._json("GET", f"{API_PREFIX}/jobs/{job_id}"))

    async def cancel_http(self, job_id: str) -> Any:
        return await self._json("POST", f"{API_PREFIX}/jobs/{job_id}/cancel")

    async def result(self, job_id: str, index: int = 0) -> bytes:
        """A finished result's PNG bytes (works for any job id, across reconnects and restarts)."""
        resp = await self._request("GET", f"{API_PREFIX}/jobs/{job_id}/results/{index}")
        async with resp:
            return await resp.read()

    async def input(self, job_id: str, role: str) -> bytes:
        """A job's stored input image (init, mask, control.<i>, reference.<i>) as PNG."""
        resp = await self._request("GET", f"{API_PREFIX}/jobs/{job_id}/inputs/{role}")
        async with resp:
            return await resp.read()

    async def events_http(self, job_id: str) -> AsyncIterator[BaseModel]:
        """The job's events from the server-sent-event stream, ending with its final event."""
        resp = await self._request("GET", f"{API_PREFIX}/jobs/{job_id}/events",
                                   headers={"Accept": "text/event-stream"})
        async with resp:
            data_lines: list[str] = []
            async for line in _lines(resp.content):
                if line.startswith("data:"):
                    data_lines.append(line[5:].lstrip(" "))
                    continue
                if line or not data_lines:
                    continue  # comments, `event:`/`id:` lines, keep-alives
                event = server_event_adapter.validate_json("\n".join(data_lines))
                data_lines = []
                yield event
                if isinstance(event, (DoneEvent, CancelledEvent, ErrorEvent)):
                    return
                if isinstance(event, StatusEvent) and event.state.finished:
                    return

    # ---------------------------------------------------------------- one call

    async def generate(self, request: GenerationRequest, init_image: bytes | None = None, mask: bytes | None = None,
                       on_progress: Callable[[ProgressEvent], None] | None = None,
                       on_preview: Callable[[bytes, BinaryHeader], None] | None = None,
                       *, transport: str = "ws", priority: str = "normal",
                       images: dict[str, bytes] | None = None) -> list[bytes]:
        """Run one request to the end and return its PNGs. Cancelling the awaiting task cancels
        the job on the server."""
        if transport == "http":
            return await self._generate_http(request, init_image, mask, on_progress, on_preview, priority, images)
        if transport != "ws":
            raise ValueError("transport must be 'ws' or 'http'")
        job = await self.submit(request, init_image, mask, priority=priority, images=images)

        def on_item(item: JobItem) -> None:
            if isinstance(item, ProgressEvent) and on_progress is not None:
                on_progress(item)
            elif isinstance(item, ImageFrame) and item.kind == "preview" and on_preview is not None:
                on_preview(item.data, item.header)

        try:
            return await job.wait(on_item)
        except asyncio.CancelledError:
            if self.connected:
                await asyncio.shield(self.cancel(job.job_id))
            raise

    async def _generate_http(self, request: GenerationRequest, init_image: bytes | None, mask: bytes | None,
                             on_progress: Callable[[ProgressEvent], None] | None,
                             on_preview: Callable[[bytes, BinaryHeader], None] | None, priority: str,
                             images: dict[str, bytes] | None = None) -> list[bytes]:
        job_id = await self.submit_http(request, init_image, mask, priority=priority, images=images)
        final: BaseModel | None = None
        try:
            async for event in self.events_http(job_id):
                if isinstance(event, ProgressEvent) and on_progress is not None:
                    on_progress(event)
                elif isinstance(event, PreviewEvent):
                    if on_preview is not None:
                        on_preview(*preview_from_event(event))
                    continue
                final = event
        except asyncio.CancelledError:
            await asyncio.shield(self.cancel_http(job_id))
            raise
        if final is None:
            # The stream ended without a final event (dropped): fall back to the job's status.
            final = await self.status(job_id)
        if isinstance(final, ErrorEvent):
            raise error_from_event(final)
        if isinstance(final, CancelledEvent):
            raise LatentBridgeError("job was cancelled", code=ErrorCode.cancelled)
        if isinstance(final, StatusEvent):
            if final.state is JobState.failed:
                raise error_from_event(final.error) if final.error else LatentBridgeError("job failed")
            if final.state is JobState.cancelled:
                raise LatentBridgeError("job was cancelled", code=ErrorCode.cancelled)
            count = final.result_count
        elif isinstance(final, DoneEvent):
            count = final.count
        else:
            raise ConnectionLost(f"event stream of job {job_id} ended before the job did")
        return [await self.result(job_id, i) for i in range(count)]
