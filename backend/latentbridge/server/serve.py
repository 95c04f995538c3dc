"""Running the server: bind, start, serve until SIGTERM/SIGINT, shut down gracefully.

Order matters for the user: the listening socket is bound first, so a taken port is one clear
error before any model starts loading; "listening on ..." is printed only once the socket
accepts; a signal stops accepting, tells websocket clients GOING_AWAY (app.on_shutdown), ends
the jobs (app.on_cleanup) and logs a line at each end of the shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from aiohttp import web

from .. import logs
from ..settings import Settings
from .app import create_app
from .limits import ConnectionGuard, GuardedAppRunner
from .security import StartupRefused, check_startup

log = logging.getLogger("latentbridge.server")

# The access log shows the request line and status only: never headers (the token is one).
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'
BACKLOG = 128  # the listen queue, and how many sockets one accept burst may open
MIN_BACKLOG = 8
ACCEPT_BURSTS = 4  # accept bursts that can land before an evicted socket's descriptor is freed
FD_MARGIN = 32  # descriptors kept free for model files, logs and the like
MIN_CONNECTIONS = 8
SHUTDOWN_TIMEOUT_S = 15.0


def run(settings: Settings) -> None:
    """Serve until interrupted (blocking). Raises StartupRefused for unsafe settings or an address
    that cannot be listened on (one line, for the CLI to print)."""
    check_startup(settings)
    if settings.ray is not None and importlib.util.find_spec("ray") is None:
        raise StartupRefused("--ray needs Ray Serve, which is not installed: pip install 'latentbridge[ray]'")
    if not logging.getLogger().handlers:  # unless the embedding program configured logging itself
        logs.configure(settings.log_format)
    asyncio.run(serve(settings))


def descriptor_plan(wanted: int) -> tuple[int, int]:
    """(max connections, accept backlog) that can never exhaust the open-file limit.

    asyncio accepts up to `backlog` sockets per loop turn, and a connection the guard evicts or
    refuses gives its descriptor back a few turns later, so besides the open connections a few
    accept bursts must fit (ACCEPT_BURSTS), plus what is open now and a margin. The soft limit is
    raised towards the hard one when that is enough; otherwise the backlog and then the
    connection cap shrink to fit, with a warning.
    """
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return wanted, BACKLOG
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    need = wanted + open_now + ACCEPT_BURSTS * BACKLOG + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                log.info("raised the open-file limit from %d to %d for %d connections", soft, target, wanted)
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted, BACKLOG
    spare = soft - open_now - FD_MARGIN
    backlog = max(MIN_BACKLOG, min(BACKLOG, spare // (2 * ACCEPT_BURSTS)))
    cap = max(MIN_CONNECTIONS, min(wanted, spare - ACCEPT_BURSTS * backlog))
    log.warning("open-file limit is %d: serving at most %d connections (not %d); raise it with `ulimit -n`",
                soft, cap, wanted)
    return cap, backlog


class _LateFactory:
    """The protocol factory of sockets bound before the aiohttp server that serves them exists."""

    def __init__(self) -> None:
        self.server: Any = None

    def __call__(self) -> Any:
        return self.server()


async def bind(host: str, port: int, backlog: int = BACKLOG) -> tuple[asyncio.AbstractServer, _LateFactory]:
    """The listening socket(s), not yet accepting (BoundSite starts them)."""
    loop = asyncio.get_running_loop()
    factory = _LateFactory()
    try:
        server = await loop.create_server(factory, host, port, backlog=backlog, reuse_address=True,
                                          start_serving=False)
    except socket.gaierror as exc:
        raise StartupRefused(f"cannot listen on {host}: the name does not resolve ({exc.strerror})") from None
    except OSError as exc:
        raise StartupRefused(_bind_error(host, port, exc)) from None
    return server, factory


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the port is already in use (another latentbridge, or another "
                "server); stop it or pass --port")
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges); pass --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host} is not an address of this machine; pass --host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


class BoundSite(web.BaseSite):
    """An aiohttp site over sockets bound beforehand by `bind` (TCPSite binds and accepts at once)."""

    __slots__ = ("_bound", "_factory")

    def __init__(self, runner: web.BaseRunner, bound: tuple[asyncio.AbstractServer, _LateFactory], backlog: int):
        super().__init__(runner, backlog=backlog)
        self._bound, self._factory = bound

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self._bound.sockets]

    @property
    def name(self) -> str:
        return ", ".join(_url(address) for address in self.addresses)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._factory.server = server
        self._server = self._bound
        await self._bound.start_serving()
        if self._backlog < BACKLOG:
            _deepen_listen_queue(self._bound)


def _deepen_listen_queue(server: asyncio.AbstractServer) -> None:
    """asyncio uses its `backlog` both for the kernel's listen queue and for how many sockets it
    accepts per loop turn. A small burst keeps descriptors within the limit (descriptor_plan), but
    a short kernel queue drops connection attempts under a flood (the client then waits a full
    second to retry); so the queue is made deep again on the listening socket itself."""
    for transport_socket in server.sockets:
        try:
            listening = socket.socket(fileno=os.dup(transport_socket.fileno()))
        except OSError:  # a platform that cannot duplicate a socket this way: keep the short queue
            return
        try:
            listening.listen(BACKLOG)
        except OSError:
            pass
        finally:
            listening.close()  # the duplicate only; the listening socket stays open


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(settings: Settings, *, app: web.Application | None = None, started: asyncio.Future | None = None,
                own_loop: bool = True) -> None:
    """Bind, serve until SIGTERM/SIGINT (or until the task is cancelled), then shut down.
    `started`, when given, receives the bound site once it accepts (for tests and embedding);
    `own_loop=False` leaves the loop's signal handlers and error reporting alone."""
    max_connections, backlog = descriptor_plan(settings.max_connections)
    bound = await bind(settings.host, settings.port, backlog)
    stop = _Stop()
    loop = asyncio.get_running_loop()
    signals: list[int] = []
    if own_loop:
        loop.set_exception_handler(_loop_exception)
        signals = _install_signals(loop, stop)
    runner = None
    try:
        if app is None:
            app = create_app(settings) if settings.ray is None else _cluster_app(settings)
        guard = ConnectionGuard(settings, max_connections=max_connections)
        runner = GuardedAppRunner(app, guard, access_log_format=ACCESS_LOG_FORMAT,
                                  keepalive_timeout=settings.keepalive_timeout_s, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = BoundSite(runner, bound, backlog)
        await site.start()
        engines = f", engine replicas on Ray at {settings.ray}" if settings.ray is not None else ""
        print(f"Latent Bridge listening on {site.name} (model {settings.model}, data in {settings.data_dir}{engines})",
              flush=True)
        if started is not None and not started.done():
            started.set_result(site)
        await stop.event.wait()
        log.info("shutting down (%s): no new connections; websocket clients are told GOING_AWAY", stop.reason)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        else:
            bound[0].close()
        log.info("Latent Bridge stopped")


def _cluster_app(settings: Settings) -> web.Application:
    """--ray: the same app, its jobs run on engine replicas on Ray Serve (latentbridge.cluster)."""
    from ..cluster import create_cluster_app

    return create_cluster_app(settings)


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's own errors: one line for the expected ones (out of descriptors on accept, which the
    descriptor plan should prevent; a peer reset), asyncio's full report for anything else."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNRESET, errno.EPIPE):
        log.warning("%s: %s", context.get("message", "event loop"), exc)
        return
    loop.default_exception_handler(context)


class _Stop:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason = "stopped"


def _install_signals(loop: asyncio.AbstractEventLoop, stop: _Stop) -> list[int]:
    """SIGTERM/SIGINT stop the server cleanly. asyncio has signal handlers only on Unix event
    loops and only in the main thread; elsewhere (Windows, a server started from another thread)
    none are installed and Ctrl-C keeps Python's default (KeyboardInterrupt)."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return []

    def on_signal(sig: int) -> None:
        stop.reason = signal.Signals(sig).name
        stop.event.set()

    signals = [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    return signals
