"""Wiring: the ``grpc.aio`` server with the identity service, health, reflection and metrics.

Tests start a real server on port 0 and call it through a real channel::

    async with GatewayServer(config) as gateway:         # listening once entered
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")

With ``tls_cert`` and ``tls_key`` the listener speaks TLS; with ``tls_client_ca`` as well, it
requires a client certificate from that CA (mutual TLS). Otherwise it is plaintext, for a mesh
sidecar to wrap.

:func:`serve` is what ``identity-gateway serve`` runs: it starts the server, waits for SIGTERM or
SIGINT, then drains (spec 4.6): health turns NOT_SERVING, new RPCs are refused, in-flight RPCs get
``shutdown_grace`` seconds to finish, the HTTP client is closed, and it returns normally. A second
signal cancels what is left at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import urllib.parse
from collections.abc import Mapping
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import exposition
from whatsapp.identity.v1 import identity_pb2

from gateway.app.config import GatewayConfig, split_host_port
from gateway.app.senders import ONPREM, SenderConfig
from gateway.app.startup import Runtime, build_backend, prepare
from gateway.backends.base import Backend
from gateway.backends.onprem.webhook import IdentityChangeReport
from gateway.contract import SERVICE_NAME
from gateway.serving.authz import Authorizer
from gateway.serving.cached import trustworthy
from gateway.serving.journal import RpcJournal
from gateway.serving.routes import Routes
from gateway.serving.servicer import IdentityServicer, add_to_server
from gateway.serving.webhooks import WebhookSender, WebhookServer
from gateway.store.cache import IdentityCache, IdentityStore, MemoryStore
from gateway.store.changes import ChangeBus
from gateway.store.redis_store import RedisIdentityStore
from gateway.telemetry.logs import AccessLog
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# Larger requests than this are refused by gRPC itself; real ones are well under 1 KiB.
MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024
_SETTLE_SECONDS = 0.05


class GatewayServer:
    """One gateway: its gRPC server, backend, store, health and metrics.

    ``runtime`` is what :func:`~gateway.app.startup.prepare` read from the configuration's
    files (read now when not given); ``backends`` (by sender number, "" in flag mode) replace
    the ones the configuration describes.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        runtime: Runtime | None = None,
        backends: Mapping[str, Backend] | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime or prepare(config)
        self.metrics = Metrics()
        self.senders = config.resolved_senders()
        if backends is None:
            secrets = self.senders.secrets
            backends = {
                sender.number: build_backend(
                    sender, config, self.runtime, self.metrics.sender(sender.label), secrets
                )
                for sender in self.senders.senders
            }
        self.routes = Routes(backends, self.senders.default)
        self.health = health.aio.HealthServicer()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
                # Off unless several workers share the port: a second gateway started on a
                # port in use must fail, not silently split the traffic.
                ("grpc.so_reuseport", 1 if config.reuse_port else 0),
            ]
        )
        self.journal = RpcJournal(self.metrics, AccessLog())
        authorizer = Authorizer(config.authz_policy) if config.authz_policy else None
        self.changes = ChangeBus()
        self.redis: RedisIdentityStore | None = None
        # This process's cache, unless Redis is the store.
        self.cache: IdentityCache[bytes] | None = None
        store: IdentityStore
        if config.cache_backend == "memory":
            self.cache = IdentityCache(
                config.cache_ttl,
                config.cache_max_entries,
                on_evict=self.metrics.cache_evictions.inc,
            )
            store = MemoryStore(self.cache)
        else:
            self.redis = RedisIdentityStore(
                config.cache_backend,
                config.cache_ttl,
                timeout=config.cache_backend_timeout,
                on_degraded=self.metrics.cache_backend_state,
                on_error=self.metrics.cache_backend_error,
                check=trustworthy,  # a value another writer left is no answer (spec §8)
                on_bad_value=self.metrics.cache_backend_bad_value,
            )
            store = self.redis
        cache = self.cache
        self.metrics.cache_entries.set_function(lambda: len(cache) if cache is not None else 0)
        self._servicer = IdentityServicer(
            self.routes,
            store,
            self.journal,
            authorizer,
            self.changes,
        )
        add_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if config.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
            )
        self.port = 0
        self._metrics_server: tuple[object, object] | None = None
        self._journal_task: asyncio.Task[None] | None = None
        self._webhooks: WebhookServer | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError if it cannot bind."""
        tls = self.runtime.listener_tls
        credentials = None
        if tls is not None:
            credentials = grpc.ssl_server_credentials(
                [(tls.key, tls.chain)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(self.config.listen)
            else:
                self.port = self._server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {self.config.listen}: {error}") from None
        if self.config.metrics_listen is not None:
            host, port = split_host_port(self.config.metrics_listen, "--metrics-listen")
            self._metrics_server = exposition.start_http_server(
                port, addr=host, registry=self.metrics.registry
            )
        if self.config.webhook_listen is not None:
            host, port = split_host_port(self.config.webhook_listen, "--webhook-listen")
            takers = {
                sender.number: WebhookSender(sender.number, sender.webhook_secret)
                for sender in self.senders.senders
                if sender.backend == ONPREM
            }
            self._webhooks = WebhookServer(
                host,
                port,
                self._on_webhook,
                senders=takers,
                default=self.senders.default,
                ssl_context=self.runtime.webhook_tls,
            )
            await self._webhooks.__aenter__()
        if self.redis is not None:
            self.changes.attach(self.redis)  # changes fan out to every replica
        await self._server.start()
        self._journal_task = asyncio.ensure_future(self.journal.run())
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float | None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight ones finish, then close.

        New RPCs are refused before health says NOT_SERVING, so a caller reacting to it is
        refused (UNAVAILABLE, retryable) rather than accepted and later cancelled. Only
        IdentityService RPCs are waited for: long-lived streams such as health ``Watch`` would
        otherwise hold every shutdown for the whole grace period. They see NOT_SERVING, then
        are cancelled.
        """
        await self.changes.close()  # watchers end at once (UNAVAILABLE) and reconnect elsewhere
        if self._webhooks is not None:  # WhatsApp redelivers what it could not hand over
            await self._webhooks.__aexit__(None, None, None)
            self._webhooks = None
        stopping = asyncio.ensure_future(self._server.stop(grace))
        await asyncio.sleep(0)  # let the server start refusing new RPCs
        await self.health.enter_graceful_shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), grace)
        await self._server.stop(0)  # cancel whatever is left
        await stopping
        await self.routes.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self._journal_task is not None:  # the last RPCs' metrics and lines
            self._journal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._journal_task
            self._journal_task = None
        if self._metrics_server is not None:
            http_server, thread = self._metrics_server
            http_server.shutdown()  # type: ignore[attr-defined]
            http_server.server_close()  # type: ignore[attr-defined]
            thread.join()  # type: ignore[attr-defined]
            self._metrics_server = None

    @property
    def webhook_port(self) -> int | None:
        """The port of the webhook endpoint, when --webhook-listen is set."""
        return self._webhooks.port if self._webhooks is not None else None

    async def _on_webhook(self, sender: str, reports: list[IdentityChangeReport]) -> None:
        for report in reports:
            await self._servicer.record_identity_change(
                sender,
                report.wa_id,
                report.hash,
                report.create_time_ms,
                identity_pb2.IDENTITY_CHANGE_SOURCE_WEBHOOK,
            )

    async def cancel_rpcs(self) -> None:
        """Cancel every running RPC now; a drain in progress then finishes at once."""
        await self._server.stop(0)

    async def _drained(self) -> None:
        # An RPC accepted just before the refusal began reaches the servicer a moment later:
        # idle must hold across a short pause before the leftovers are cancelled.
        while True:
            await self._servicer.wait_idle()
            await asyncio.sleep(_SETTLE_SECONDS)
            if self._servicer.idle:
                return

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=1.0)


async def serve(config: GatewayConfig, runtime: Runtime | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain for ``config.shutdown_grace`` s."""
    shutdown_grace = config.shutdown_grace
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    gateway = GatewayServer(config, runtime=runtime)
    if config.upstream_insecure:
        log.warning("TLS verification of the WhatsApp API is OFF (--upstream-insecure)")
    if config.unauthenticated_webhooks:
        log.warning(
            "webhooks are accepted without authentication (--webhook-allow-unauthenticated): "
            "anyone who reaches %s can report identity changes",
            config.webhook_listen,
        )
    await gateway.start()
    log.info(
        "serving",
        extra={
            "fields": {
                "listen": config.listen,
                "port": gateway.port,
                "listener": config.listener_security,
                "senders": [_describe(sender) for sender in gateway.senders.senders],
                "default_sender": gateway.senders.default or None,
                "cache_ttl": config.cache_ttl,
                "metrics_listen": config.metrics_listen,
                "webhook_listen": config.webhook_listen,
            }
        },
    )
    cancelling: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stopping.is_set():
            log.info("received %s: draining for up to %.1f s", name, shutdown_grace)
            stopping.set()
        elif not cancelling:
            log.warning("received %s again: cancelling the RPCs still running", name)
            cancelling.append(asyncio.ensure_future(gateway.cancel_rpcs()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stopping.wait()
        await gateway.stop(shutdown_grace)
        for task in cancelling:
            await task
        log.info("stopped")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _describe(sender: SenderConfig) -> dict[str, str | None]:
    """What the start-up line says of a sender: never a secret, never the URL's path."""
    auth = "api_key" if sender.api_key else "login" if sender.username else "token"
    return {
        "number": sender.number or None,
        "backend": sender.backend,
        "upstream_host": urllib.parse.urlsplit(sender.url).hostname,
        "auth": auth,
    }
