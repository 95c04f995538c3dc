"""Running the server: bind, start, serve until SIGTERM/SIGINT, shut down gracefully.

Order matters for the user: the listening socket is bound first, so a taken port is one clear
error before any model starts loading; "listening on ..." is printed only once the socket
accepts; a signal stops accepting, tells websocket clients GOING_AWAY (app.on_shutdown), ends
the jobs (app.on_cleanup) and logs a line at each end of the shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from typing import Any

from aiohttp import web

from ..settings import Settings
from .app import create_app
from .limits import ConnectionGuard, GuardedAppRunner
from .security import StartupRefused, check_startup

log = logging.getLogger("latentbridge.server")

# The access log shows the request line and status only: never headers (the token is one).
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'
BACKLOG = 128  # also how many connections one accept burst may open before the guard sees them
FD_MARGIN = 32  # descriptors kept free beyond those open at start and an accept burst
MIN_CONNECTIONS = 8
SHUTDOWN_TIMEOUT_S = 15.0


def run(settings: Settings) -> None:
    """Serve until interrupted (blocking). Raises StartupRefused for unsafe settings or an address
    that cannot be listened on (one line, for the CLI to print)."""
    check_startup(settings)
    _default_logging()
    asyncio.run(serve(settings))


def _default_logging() -> None:
    """INFO lines on stderr, unless the embedding program configured logging itself."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def connection_cap(wanted: int, backlog: int = BACKLOG) -> int:
    """`wanted`, lowered so open connections can never exhaust the open-file limit (RLIMIT_NOFILE):
    what is open now, one accept burst and a margin stay free."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to respect
        return wanted
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    fits = soft - open_now - backlog - FD_MARGIN
    if fits >= wanted:
        return wanted
    cap = max(MIN_CONNECTIONS, fits)
    log.warning("open-file limit is %d: serving at most %d connections (not %d); raise it with `ulimit -n`",
                soft, cap, wanted)
    return cap


class _LateFactory:
    """The protocol factory of sockets bound before the aiohttp server that serves them exists."""

    def __init__(self) -> None:
        self.server: Any = None

    def __call__(self) -> Any:
        return self.server()


async def bind(host: str, port: int) -> tuple[asyncio.AbstractServer, _LateFactory]:
    """The listening socket(s), not yet accepting (BoundSite starts them)."""
    loop = asyncio.get_running_loop()
    factory = _LateFactory()
    try:
        server = await loop.create_server(factory, host, port, backlog=BACKLOG, reuse_address=True,
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

    def __init__(self, runner: web.BaseRunner, bound: tuple[asyncio.AbstractServer, _LateFactory]):
        super().__init__(runner, backlog=BACKLOG)
        self._bound, self._factory = bound

    @property
    def name(self) -> str:
        return ", ".join(_url(sock.getsockname()) for sock in self._bound.sockets)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._factory.server = server
        self._server = self._bound
        await self._bound.start_serving()


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(settings: Settings, *, app: web.Application | None = None,
                started: asyncio.Future | None = None) -> None:
    """Bind, serve until SIGTERM/SIGINT (or until the task is cancelled), then shut down.
    `started`, when given, receives the bound site once it accepts (for tests and embedding)."""
    bound = await bind(settings.host, settings.port)
    stop = _Stop()
    loop = asyncio.get_running_loop()
    signals = _install_signals(loop, stop)
    runner = None
    try:
        app = app if app is not None else create_app(settings)
        guard = ConnectionGuard(settings, max_connections=connection_cap(settings.max_connections))
        runner = GuardedAppRunner(app, guard, access_log_format=ACCESS_LOG_FORMAT,
                                  keepalive_timeout=settings.keepalive_timeout_s, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = BoundSite(runner, bound)
        await site.start()
        print(f"Latent Bridge listening on {site.name} (model {settings.model}, data in {settings.data_dir})",
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


class _Stop:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason = "stopped"


def _install_signals(loop: asyncio.AbstractEventLoop, stop: _Stop) -> list[int]:
    installed = []

    def on_signal(sig: int) -> None:
        stop.reason = signal.Signals(sig).name
        stop.event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            continue
        installed.append(sig)
    return installed
