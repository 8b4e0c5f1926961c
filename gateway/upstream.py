"""The WhatsApp Business API client: two identity calls and the login, over one httpx client.

    async with WhatsAppClient.from_config(config) as client:
        identity = await client.get_identity("16315551234", time_remaining=2.5)
        await client.acknowledge("16315551234", "UKD6Y/5SqDU=", time_remaining=None)

Every failure leaves here as a :class:`~gateway.errors.GatewayError`: httpx's exceptions are
translated in exactly one place, :meth:`WhatsAppClient._exchange`. What stands between a call
and WhatsApp, outermost first (:class:`Safeguards`):

1. retries of UNAVAILABLE-class outcomes (connection errors, 502/503/504, codes 1011, 1016,
   1017, 1018) with exponential backoff and full jitter, at least ``Retry-After``, never past
   the caller's deadline, and only while the retry budget allows (at most 20% of requests).
   Both calls are idempotent, so a retried PUT is safe. 429 and timeouts are never retried;
2. the circuit breaker: after sustained UNAVAILABLE-class failures WhatsApp is not called
   (``CIRCUIT_OPEN``) until a probe succeeds;
3. admission: at most ``max_in_flight`` requests to WhatsApp, a bounded queue behind them,
   and ``GATEWAY_OVERLOADED`` at once beyond it;
4. pacing: a token bucket (by default WhatsApp's documented 20 requests/s, bursts of 60); a
   call that cannot get a token before its deadline fails at once;
5. authentication (one re-login and retry after a 401) and the HTTP exchange, capped by
   ``--upstream-timeout`` and a 1 MiB answer.

The whole operation is bounded by the caller's deadline.

Requests are ``httpx.Request`` objects sent through an httpx transport, which is the seam:
tests pass ``httpx.MockTransport``; :meth:`WhatsAppClient.from_config` passes aiohttp's
connection pool and HTTP/1.1 parser (:func:`aiohttp_transport`). The client builds each request
itself rather than through ``httpx.AsyncClient``, whose cookie, redirect and URL-merging layers
the gateway does not use: together the two choices cut the CPU of an upstream request by more
than half (see the README, "What a cache miss costs").
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Protocol

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from gateway import __version__
from gateway.auth import LoginSession, StaticToken, TokenSource
from gateway.config import GatewayConfig
from gateway.deadline import caller_deadline, time_remaining
from gateway.errors import (
    CircuitOpen,
    LoginFailed,
    Operation,
    Overloaded,
    RateLimitExceeded,
    Reason,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamTransportError,
    rule_for,
)
from gateway.logs import REQUEST_ID_HEADER
from gateway.parse import (
    LoginToken,
    UpstreamIdentity,
    check_acknowledge_body,
    parse_error_body,
    parse_identity,
    parse_login,
    parse_retry_after,
)
from gateway.resilience import (
    BreakerState,
    CircuitBreaker,
    ConcurrencyLimiter,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
)

log = logging.getLogger(__name__)

LOGIN_PATH = "/v1/users/login"
# No identity answer comes near this; a larger body is a broken or hostile upstream.
MAX_RESPONSE_BYTES = 1 << 20
USER_AGENT = f"whatsapp-identity-gateway/{__version__}"
# Sent with every request; trace headers and Content-Type are added per operation, and
# Authorization per attempt.
_DEFAULT_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "application/json",
    "Accept-Encoding": "gzip, deflate",
}

# Metadata copied from the caller's RPC onto the upstream request (spec 4.1).
TRACE_HEADERS = (
    REQUEST_ID_HEADER,
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
_RETRYABLE = frozenset({Reason.UPSTREAM_UNAVAILABLE})
_ATTEMPT_MARGIN = 1.5
_BREAKER_FAILURES = frozenset({Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_TIMEOUT})


def identity_path(wa_id: str) -> str:
    """The upstream path of a contact's identity; ``wa_id`` must already be validated digits."""
    return f"/v1/contacts/{wa_id}/identity"


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes


class UpstreamObserver(Protocol):
    """Told about what happens on the way to WhatsApp (:class:`gateway.metrics.Metrics`)."""

    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None: ...
    def upstream_retry(self, operation: str) -> None: ...
    def upstream_rejected(self, reason: str) -> None: ...
    def breaker_changed(self, old: BreakerState, new: BreakerState) -> None: ...
    def login(self, outcome: str) -> None: ...


class _Unobserved:
    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None:
        return None

    def upstream_retry(self, operation: str) -> None:
        return None

    def upstream_rejected(self, reason: str) -> None:
        return None

    def breaker_changed(self, old: BreakerState, new: BreakerState) -> None:
        return None

    def login(self, outcome: str) -> None:
        return None


@dataclasses.dataclass
class Safeguards:
    """Retries, breaker, admission and pacing toward WhatsApp (see the module docstring).

    The defaults suit tests: no pacing, generous admission.
    """

    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    budget: RetryBudget = dataclasses.field(default_factory=RetryBudget)
    breaker: CircuitBreaker = dataclasses.field(default_factory=CircuitBreaker)
    limiter: ConcurrencyLimiter = dataclasses.field(
        default_factory=lambda: ConcurrencyLimiter(max_in_flight=64, max_waiting=1024)
    )
    bucket: TokenBucket | None = None

    @classmethod
    def from_config(
        cls, config: GatewayConfig, on_breaker_change: Callable[[BreakerState, BreakerState], None]
    ) -> Safeguards:
        bucket = None
        if config.upstream_rate_limit > 0:
            bucket = TokenBucket(
                rate=config.upstream_rate_limit,
                burst=config.upstream_burst,
                max_waiters=config.upstream_max_waiting,
            )
        return cls(
            retry=RetryPolicy(max_attempts=1 + config.upstream_retries),
            breaker=CircuitBreaker(on_state_change=on_breaker_change),
            limiter=ConcurrencyLimiter(
                max_in_flight=config.upstream_max_in_flight,
                max_waiting=config.upstream_max_waiting,
            ),
            bucket=bucket,
        )


class WhatsAppClient:
    """Calls the WhatsApp API's identity endpoints, authenticating as configured."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        request_timeout: float,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        safeguards: Safeguards | None = None,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._transport = transport
        # Paths are absolute ("/v1/..."), appended to the base URL's own path, as httpx does.
        self._base_url = str(httpx.URL(base_url)).rstrip("/")
        self._request_timeout = request_timeout
        self._timeouts = httpx.Timeout(request_timeout).as_dict()
        self._basic_auth = (
            _basic_authorization(username, password) if username is not None and password else None
        )
        self._observer: UpstreamObserver = observer or _Unobserved()
        self._guards = safeguards or Safeguards()
        if token is not None:
            self.tokens: TokenSource = StaticToken(token)
        else:
            self.tokens = LoginSession(self.login, on_login=self._observer.login)

    @classmethod
    def from_config(
        cls, config: GatewayConfig, *, observer: UpstreamObserver | None = None
    ) -> WhatsAppClient:
        """A client with its own connection pool, TLS settings and credentials from ``config``."""
        watcher: UpstreamObserver = observer or _Unobserved()

        def breaker_changed(old: BreakerState, new: BreakerState) -> None:
            level = logging.ERROR if new is BreakerState.OPEN else logging.WARNING
            log.log(level, "upstream circuit breaker: %s -> %s", old.name, new.name)
            watcher.breaker_changed(old, new)

        # No more connections than requests admitted at once: the queue is kept in front of
        # the pool, where it is bounded (--upstream-max-waiting).
        transport = aiohttp_transport(
            max_connections=config.upstream_max_in_flight, verify=_tls_verification(config)
        )
        return cls(
            transport,
            base_url=config.upstream_url,
            request_timeout=config.upstream_timeout,
            username=config.upstream_username,
            password=config.upstream_password,
            token=config.upstream_token,
            safeguards=Safeguards.from_config(config, breaker_changed),
            observer=watcher,
        )

    async def __aenter__(self) -> WhatsAppClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background logins and close every pooled connection."""
        await self.tokens.aclose()
        await self._transport.aclose()

    # ------------------------------------------------------------------ operations

    async def get_identity(
        self,
        wa_id: str,
        *,
        time_remaining: float | None,
        trace: Mapping[str, str] | None = None,
    ) -> UpstreamIdentity:
        """``GET /v1/contacts/{wa_id}/identity``: the contact's latest identity."""
        async with caller_deadline(time_remaining):
            answer = await self._call(Operation.GET, identity_path(wa_id), None, trace)
        if answer.status != 200:
            raise UpstreamBadResponse(f"unexpected success status {answer.status}")
        return parse_identity(answer.body)

    async def acknowledge(
        self,
        wa_id: str,
        identity_hash: str,
        *,
        time_remaining: float | None,
        trace: Mapping[str, str] | None = None,
    ) -> int:
        """``PUT /v1/contacts/{wa_id}/identity`` with ``{"hash": identity_hash}``; its status."""
        body = orjson.dumps({"hash": identity_hash})
        async with caller_deadline(time_remaining):
            answer = await self._call(Operation.ACKNOWLEDGE, identity_path(wa_id), body, trace)
        check_acknowledge_body(answer.body)
        return answer.status

    async def login(self) -> LoginToken:
        """``POST /v1/users/login`` with Basic auth; raises :class:`LoginFailed` on refusal."""
        if self._basic_auth is None:
            raise RuntimeError("login needs a username and password")
        answer = await self._exchange(
            "login", "POST", LOGIN_PATH, _DEFAULT_HEADERS, authorization=self._basic_auth
        )
        if not 200 <= answer.status < 300:
            raise _status_error(answer, LoginFailed)
        return parse_login(answer.body)

    # ------------------------------------------------------------------ the safeguards

    async def _call(
        self,
        operation: Operation,
        path: str,
        body: bytes | None,
        trace: Mapping[str, str] | None,
    ) -> _Answer:
        """One operation: retried while it is worth it, within the enclosing deadline."""
        method = "GET" if operation is Operation.GET else "PUT"
        headers = {**_DEFAULT_HEADERS, **(trace or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self._guards.budget.record_request()
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                return await self._attempt(operation, method, path, headers, body)
            except UpstreamError as error:
                took = time.perf_counter() - started
                delay = self._retry_delay(error, operation, attempt, took)
                if delay is None:
                    raise
            self._observer.upstream_retry(method)
            await asyncio.sleep(delay)

    def _retry_delay(
        self, error: UpstreamError, operation: Operation, attempt: int, took: float
    ) -> float | None:
        """The wait before the next attempt, or None when retrying is not worth it."""
        if isinstance(error, LoginFailed | CircuitOpen):
            return None
        if rule_for(error, operation).reason not in _RETRYABLE:
            return None
        retry_after = error.retry_after if isinstance(error, UpstreamStatusError) else None
        remaining = time_remaining()
        if remaining is not None:
            # Time for the wait and for another attempt like the last one, with a margin: a
            # retry that would run into the deadline only turns UNAVAILABLE into
            # DEADLINE_EXCEEDED, and costs WhatsApp a request.
            remaining -= _ATTEMPT_MARGIN * took
        return self._guards.retry.next_delay(
            attempt, retry_after=retry_after, time_remaining=remaining, budget=self._guards.budget
        )

    async def _attempt(
        self,
        operation: Operation,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> _Answer:
        """One attempt through the breaker: its verdict is whether WhatsApp looked up."""
        permit = self._guards.breaker.allow()
        if permit is None:
            self._observer.upstream_rejected("circuit_open")
            raise CircuitOpen(self._guards.breaker.retry_after())
        with permit:
            try:
                answer = await self._admitted(method, path, headers, body)
            except (UpstreamTransportError, UpstreamTimeout):
                permit.record_failure()
                raise
            error = None if 200 <= answer.status < 300 else _status_error(answer)
            if error is not None and rule_for(error, operation).reason in _BREAKER_FAILURES:
                permit.record_failure()
            else:
                permit.record_success()  # any real answer, a 404 included, shows WhatsApp up
        if error is not None:
            raise error
        return answer

    async def _admitted(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> _Answer:
        """Within a slot and the pace: authenticate, send, and re-login once after a 401."""
        try:
            async with self._guards.limiter.slot(timeout=time_remaining()):
                await self._paced()
                token = await self.tokens.token()
                answer = await self._exchange(
                    method, method, path, headers, body, authorization=f"Bearer {token}"
                )
                if answer.status == 401 and self.tokens.can_renew:
                    token = await self.tokens.rejected(token)
                    await self._paced()
                    answer = await self._exchange(
                        method, method, path, headers, body, authorization=f"Bearer {token}"
                    )
                    if answer.status == 401:
                        self.tokens.renewal_refused(token)
        except Overloaded:
            self._observer.upstream_rejected("overloaded")
            raise
        except RateLimitExceeded:
            self._observer.upstream_rejected("rate_limited")
            raise
        return answer

    async def _paced(self) -> None:
        if self._guards.bucket is not None:
            await self._guards.bucket.acquire(timeout=time_remaining())

    # ------------------------------------------------------------------ the exchange

    async def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        authorization: str,
    ) -> _Answer:
        """Send one request and read its capped body; the only place transport errors are seen.

        ``headers`` are the operation's (the defaults, trace headers, Content-Type); the
        attempt's ``Authorization`` is added here.
        """
        request_headers = {**headers, "Authorization": authorization}
        request = httpx.Request(
            method,
            self._base_url + path,
            headers=request_headers,
            content=body,
            extensions={"timeout": self._timeouts},
        )
        started = time.perf_counter()
        status: int | None = None
        try:
            async with asyncio.timeout(self._request_timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    status = response.status_code
                    payload = await _read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamTimeout("no answer within the upstream timeout") from None
        except (httpx.TransportError, aiohttp.ClientError) as error:
            if _is_timeout(error):
                raise UpstreamTimeout("no answer within the upstream timeout") from None
            raise UpstreamTransportError(_describe_transport_error(error)) from None
        finally:
            self._observer.upstream_exchange(operation, status, time.perf_counter() - started)
        return _Answer(status, response.headers, payload)


async def _read_capped(response: httpx.Response) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise UpstreamBadResponse(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise UpstreamBadResponse(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _status_error(
    answer: _Answer, kind: type[UpstreamStatusError] = UpstreamStatusError
) -> UpstreamStatusError:
    envelope = parse_error_body(answer.body)
    return kind(
        answer.status,
        whatsapp_code=envelope.code,
        title=envelope.title,
        retry_after=parse_retry_after(answer.headers.get("retry-after")),
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def _is_timeout(error: httpx.TransportError | aiohttp.ClientError) -> bool:
    """Whether no answer came in time, as opposed to a connection that failed.

    aiohttp's verdict wins where there is one: ``httpx_aiohttp`` reports a dropped or reset
    connection (``aiohttp.ServerDisconnectedError``, ``ClientOSError``) as
    ``httpx.ConnectTimeout``, but it is a transport failure, and retried as one. aiohttp's own
    timeouts all derive from ``TimeoutError``.
    """
    for cause in _causes(error):
        if isinstance(cause, aiohttp.ClientError):
            return isinstance(cause, TimeoutError)
    return isinstance(error, httpx.TimeoutException)


def _describe_transport_error(error: httpx.TransportError | aiohttp.ClientError) -> str:
    """A short, secret-free description: the kind of failure and its root cause, no URL."""
    causes = list(_causes(error))
    tls_failures = [cause for cause in causes if isinstance(cause, ssl.SSLError)]
    if tls_failures:
        # aiohttp wraps the ssl module's error in one of its own, which has no reason.
        reasons = [getattr(cause, "reason", None) for cause in tls_failures]
        return f"TLS failure ({next(filter(None, reasons), 'handshake failed')})"
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno:
            # strerror alone: the exception's own text can name the upstream's address.
            return f"connection failed ({os.strerror(cause.errno)})"
    for cause in causes:
        for kind, text in _TRANSPORT_FAILURES:
            if isinstance(cause, kind):
                return text
    return "transport failure"


# What a failure without an errno or TLS reason was, by the outermost exception that says.
# httpx_aiohttp wraps aiohttp's exceptions in httpx's, not always in the right one (a dropped
# connection comes as ConnectTimeout), so aiohttp's own are looked for under them.
_TRANSPORT_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (httpx.ConnectError, "connection failed"),
    (httpx.ReadError, "connection reset while reading"),
    (httpx.WriteError, "connection reset while writing"),
    (httpx.RemoteProtocolError, "connection closed or broken answer"),
    (httpx.UnsupportedProtocol, "unsupported protocol"),
    (httpx.ProxyError, "proxy failure"),
    (aiohttp.ServerDisconnectedError, "connection closed or broken answer"),
    # aiohttp's parser refusing a malformed status line or header.
    (aiohttp.ClientResponseError, "connection closed or broken answer"),
)


def aiohttp_transport(*, max_connections: int, verify: ssl.SSLContext | bool) -> AiohttpTransport:
    """An httpx transport over aiohttp's connection pool, as the gateway uses it.

        transport = aiohttp_transport(max_connections=8, verify=ssl.create_default_context())

    Connections are kept alive for 30 s; ``verify`` is an SSL context, or False for no
    verification. The aiohttp session is made on the first request, inside the running event
    loop, as aiohttp requires.
    """

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30.0, ssl=verify)
        # WhatsApp sets no cookies the gateway needs; proxies come from the configuration only.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )

    return AiohttpTransport(client=session)


def _basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic authentication (RFC 7617, UTF-8)."""
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {credentials}"


def _tls_verification(config: GatewayConfig) -> ssl.SSLContext | bool:
    if config.upstream_insecure:
        return False
    if config.upstream_ca_file is not None:
        return ssl.create_default_context(cafile=str(config.upstream_ca_file))
    return _system_trust()


def _system_trust() -> ssl.SSLContext:
    """The system CAs where OpenSSL was built to find them.

    ``ssl.create_default_context()`` alone would also trust whatever ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` name: only the configuration decides what the gateway trusts. Without
    either system location the context trusts nothing, and every handshake fails.
    """
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile is None and capath is None:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return ssl.create_default_context(cafile=cafile, capath=capath)
