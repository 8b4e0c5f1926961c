"""An aiohttp application serving on a socket for the life of an ``async with`` block.

The emulator and the webhook endpoint are both one of these::

    class WebhookServer(AppServer):
        def create_app(self) -> web.Application: ...

    async with WebhookServer("127.0.0.1", 0, ...) as server:   # port 0: a free one
        server.port, server.base_url

The listener protects the process (spec §7) within its :class:`ListenerLimits`:

- **a bound on open connections**, counted from ``accept()`` to the close, TLS handshakes
  included. At the bound it stops accepting: further connections wait in the kernel's accept
  queue (its backlog), holding no descriptor of this process, and are accepted as connections
  close. The bound is never more than a quarter of ``RLIMIT_NOFILE``'s soft limit, so the rest
  always stays for gRPC, the upstream pools, Redis and the logs.
- **a header timeout**: the TLS handshake, then each request's headers, counted from the
  connection's start or from the previous response (so it is the idle keep-alive timeout too).
  It is aiohttp's keep-alive timer, which closes a connection still waiting for a whole request.
- **a body timeout**, from the end of a request's headers to the end of its body.
- **errors logged at a bounded rate**: failing ``accept()`` calls (out of descriptors) wait a
  second and are logged at most once a second; so are aiohttp's per-request error lines and
  asyncio's accept error, by :class:`RepeatLimit`. A client hanging up is not an error of ours.

A connection past a deadline is closed without a response.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.telemetry.logs import RateLimitedLog

__all__ = ["AppServer", "ListenerLimits", "RepeatLimit"]

log = logging.getLogger(__name__)

# The listener takes at most this share of the process's descriptors (RLIMIT_NOFILE, soft).
_DESCRIPTOR_SHARE = 4
# Connections the kernel completes for us while we are not accepting (aiohttp's default).
_BACKLOG = 128
# After a failed accept() (EMFILE and the like), wait this long before the next.
_ACCEPT_RETRY_SECONDS = 1.0
# The lines a client can cause at will, on loggers that are not ours: bounded by RepeatLimit.
_REPEATED_LINES = {
    "asyncio": ("socket.accept() out of system resource",),
    "aiohttp.server": ("Error handling request", "Unhandled exception"),
}


@dataclasses.dataclass(frozen=True)
class ListenerLimits:
    """What connections may hold of the process, and for how long; seconds for the timeouts.

    ``max_connections`` open at most (capped at a quarter of the descriptors); ``header_timeout``
    for the TLS handshake and for each request's headers (from the connection's start or the
    previous response: an idle keep-alive connection is closed after it too); ``body_timeout``
    for a request's body, from the end of its headers.
    """

    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not (self.header_timeout > 0 and self.body_timeout > 0):
            raise ValueError("the timeouts must be positive")


def _connection_bound(wanted: int) -> int:
    """``wanted``, capped at a quarter of this process's descriptors (``RLIMIT_NOFILE``)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // _DESCRIPTOR_SHARE))


class RepeatLimit(logging.Filter):
    """A filter letting a line that starts with one of ``prefixes`` through at most once per
    ``interval`` seconds for each prefix; the next one through says how many were held back.

        limit = RepeatLimit(("socket.accept() out of system resource",))
        logging.getLogger("asyncio").addFilter(limit)
    """

    def __init__(
        self,
        prefixes: tuple[str, ...],
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        kind = next((prefix for prefix in self._prefixes if message.startswith(prefix)), None)
        if kind is None:
            return True
        now = self._clock()
        if now < self._next.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._next[kind] = now + self._interval
        held = self._held.pop(kind, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it since the last such line)"
            record.args = None
        return True


class _Slots:
    """The bound on open connections: a slot is taken before ``accept()`` and given back once
    the connection is closed (or was never made)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.open = 0
        self._free = asyncio.BoundedSemaphore(size)

    async def take(self) -> None:
        """Wait for a free slot, and take it."""
        await self._free.acquire()

    def put_back(self) -> None:
        """Give back a slot taken for a connection that did not come."""
        self._free.release()

    def occupy(self) -> Callable[[], None]:
        """Count a connection in the slot taken; returns what gives the slot back, once."""
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1
                self._free.release()

        return release


class _Connection(web.RequestHandler):
    """aiohttp's handler of one connection, giving its slot back when the connection ends."""

    def __init__(self, manager: web.Server, *, release: Callable[[], None], **options: Any) -> None:
        super().__init__(manager, **options)
        self._release = release

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._release()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # The client hung up, or a deadline closed the connection: nothing went wrong here.
        if isinstance(kwargs.get("exc_info"), ConnectionError):
            self.logger.debug(*args, **kwargs)
        else:
            super().log_exception(*args, **kwargs)


def _body_deadline(body_timeout: float) -> Middleware:
    """A middleware closing the connection of a request whose body is not in ``body_timeout``
    seconds after its headers (while the handler reads it, or aiohttp drains what it left)."""

    def cut_off(request: web.BaseRequest) -> None:
        if not request.content.is_eof() and request.transport is not None:
            request.transport.abort()

    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content.is_eof():
            return await handler(request)
        timer = asyncio.get_running_loop().call_later(body_timeout, cut_off, request)
        try:
            return await handler(request)
        finally:
            if request.content.is_eof():
                timer.cancel()

    return body_deadline


def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets: one per address of ``host`` (as asyncio does)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                raise OSError(
                    error.errno, f"cannot listen on {address!r}: {error.strerror}"
                ) from None
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class AppServer:
    """Runs :meth:`create_app` on ``host:port`` while entered, within ``limits``; stops within
    ``shutdown_timeout``.

    The short default shutdown timeout is deliberate: these servers answer quickly, and one
    that hangs (a stalled fault, a slow callback) must not hold up a stop.
    """

    name = "server"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 1.0,
        limits: ListenerLimits = ListenerLimits(),
    ) -> None:
        self._host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        self._shutdown_timeout = shutdown_timeout
        self._limits = limits
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._slots = _Slots(0)
        self._accept_errors = RateLimitedLog(log, interval=_ACCEPT_RETRY_SECONDS)
        self._repeat_limits: list[tuple[logging.Logger, RepeatLimit]] = []

    def create_app(self) -> web.Application:
        """The application to serve."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when asked for port 0)."""
        if not self._sockets:
            raise RuntimeError(f"the {self.name} is not running")
        port: int = self._sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """``scheme://host:port``, such as ``http://127.0.0.1:9090``."""
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    @property
    def max_connections(self) -> int:
        """The bound on open connections while running: ``limits.max_connections``, capped at a
        quarter of the process's descriptors."""
        return self._slots.size

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed (TLS handshakes included)."""
        return self._slots.open

    async def __aenter__(self) -> Self:
        app = self.create_app()
        app.middlewares.insert(0, _body_deadline(self._limits.body_timeout))
        runner = web.AppRunner(app, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            self._sockets = _listening_sockets(self._host, self._requested_port)
        except BaseException:
            await runner.cleanup()
            raise
        assert runner.server is not None  # made by setup()
        self._runner = runner
        self._slots = _Slots(_connection_bound(self._limits.max_connections))
        for name, prefixes in _REPEATED_LINES.items():
            limit = RepeatLimit(prefixes)
            logging.getLogger(name).addFilter(limit)
            self._repeat_limits.append((logging.getLogger(name), limit))
        self._acceptors = [
            asyncio.ensure_future(self._accept(runner.server, sock)) for sock in self._sockets
        ]
        log.info("%s listening on %s", self.name, self.base_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is None:
            return
        for task in [*self._acceptors, *self._handshakes]:
            task.cancel()
        await asyncio.gather(*self._acceptors, *self._handshakes, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        await self._runner.cleanup()  # lets requests in progress finish, then closes the rest
        for logger, limit in self._repeat_limits:
            logger.removeFilter(limit)
        self._runner = None
        self._sockets = []
        self._acceptors = []
        self._repeat_limits = []

    async def _accept(self, server: web.Server, listener: socket.socket) -> None:
        """Accept connections on ``listener`` while a slot is free; at the bound, wait."""
        loop = asyncio.get_running_loop()
        slots = self._slots
        while True:
            await slots.take()
            try:
                conn, _peer = await loop.sock_accept(listener)
            except ConnectionAbortedError:  # gone before we took it
                slots.put_back()
                continue
            except OSError as error:  # out of descriptors or memory: the pending ones can wait
                slots.put_back()
                self._accept_errors.warning(
                    "accept", "the %s cannot accept a connection: %s", self.name, error
                )
                await asyncio.sleep(_ACCEPT_RETRY_SECONDS)
                continue
            except BaseException:
                slots.put_back()
                raise
            handshake = asyncio.ensure_future(self._start(server, conn, slots.occupy()))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    async def _start(
        self, server: web.Server, conn: socket.socket, release: Callable[[], None]
    ) -> None:
        """Hand ``conn`` to aiohttp, after the TLS handshake if there is one; the slot comes
        back when the connection ends, or now if the handshake fails or times out."""
        loop = asyncio.get_running_loop()
        timeout = self._limits.header_timeout
        options: dict[str, Any] = {
            "loop": loop,
            "keepalive_timeout": timeout,  # closes a connection still waiting for a request
            "access_log": None,
        }
        try:
            await loop.connect_accepted_socket(
                lambda: _Connection(server, release=release, **options),
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=timeout if self._ssl_context else None,
                ssl_shutdown_timeout=timeout if self._ssl_context else None,
            )
        except BaseException as error:
            conn.close()
            release()
            if not isinstance(error, Exception):
                raise
            log.debug("a connection to the %s ended before it started: %r", self.name, error)
