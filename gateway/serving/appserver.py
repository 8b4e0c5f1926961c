"""An aiohttp application serving on a socket for the life of an ``async with`` block.

The emulator and the webhook endpoint are both one of these::

    class WebhookServer(AppServer):
        def create_app(self) -> web.Application: ...

    async with WebhookServer("127.0.0.1", 0, ...) as server:   # port 0: a free one
        server.port, server.base_url
"""

from __future__ import annotations

import logging
import ssl
from types import TracebackType
from typing import Self

from aiohttp import web

log = logging.getLogger(__name__)


class AppServer:
    """Runs :meth:`create_app` on ``host:port`` while entered; stops within ``shutdown_timeout``.

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
    ) -> None:
        self._host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def create_app(self) -> web.Application:
        """The application to serve."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when asked for port 0)."""
        if self._port is None:
            raise RuntimeError(f"the {self.name} is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``scheme://host:port``, such as ``http://127.0.0.1:9090``."""
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(
            self.create_app(), access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self._host, self._requested_port, ssl_context=self._ssl_context
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("%s listening on %s", self.name, self.base_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._port = None
