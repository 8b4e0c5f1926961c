"""One HTTP exchange with an upstream, and what its failures mean, for any HTTP backend.

    upstream = HttpUpstream(aiohttp_transport(max_connections=8, verify=context),
                            base_url="https://whatsapp.internal:9090", request_timeout=5.0)
    answer = await upstream.exchange("GET", "GET", "/v1/contacts/1631.../identity", headers,
                                     authorization="Bearer ...")
    if not answer.ok:
        kind = status_kind(answer.status)          # Failure.NOT_FOUND for a 404, ...

Requests are ``httpx.Request`` objects sent through an httpx transport, which is the seam:
tests pass ``httpx.MockTransport``; the gateway passes aiohttp's connection pool and HTTP/1.1
parser (:func:`aiohttp_transport`). Requests are built here rather than through
``httpx.AsyncClient``, whose cookie, redirect and URL-merging layers the gateway does not use:
together the two choices cut the CPU of an upstream request by more than half (see the
README, "What a cache miss costs"). This module is the only place transport errors are seen;
they leave as :class:`~gateway.failures.BackendFailure` (``UNREACHABLE`` or ``TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import email.utils
import os
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.backends.base import BackendObserver, Unobserved
from gateway.failures import BackendFailure, Failure, clean_title

# No identity answer comes near this; a larger body is a broken or hostile upstream.
MAX_RESPONSE_BYTES = 1 << 20
# How much of an error answer's body is read: any error envelope fits many times over. The rest
# is left unread (the connection is closed, not reused), and the status alone still classifies
# the answer: a 503 with a huge body is UNAVAILABLE, retried, never a malformed answer.
MAX_ERROR_BODY_BYTES = 64 << 10

# What an HTTP error status means when nothing more specific (an error code in the body) says.
HTTP_STATUS_KINDS: Mapping[int, Failure] = {
    400: Failure.REJECTED,
    401: Failure.AUTH,
    403: Failure.AUTH,
    404: Failure.NOT_FOUND,
    422: Failure.REJECTED,
    429: Failure.RATE_LIMITED,
    500: Failure.UPSTREAM_INTERNAL,
    502: Failure.UNAVAILABLE,
    503: Failure.UNAVAILABLE,
    504: Failure.UNAVAILABLE,
}


def status_kind(status: int) -> Failure:
    """The kind of failure an HTTP error status is, by itself."""
    kind = HTTP_STATUS_KINDS.get(status)
    if kind is not None:
        return kind
    return Failure.UPSTREAM_INTERNAL if status >= 500 else Failure.UNEXPECTED


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer: a success's body in full (within :data:`MAX_RESPONSE_BYTES`), an
    error's first :data:`MAX_ERROR_BODY_BYTES` at most."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class HttpUpstream:
    """Sends requests to one upstream base URL and reads their capped answers.

    ``name`` is how callers' messages call the upstream ("WhatsApp API unreachable: ...").
    ``secrets`` are every credential the gateway is configured with: :meth:`safe_text` removes
    them from upstream text before it reaches a caller or a log.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        request_timeout: float,
        name: str = "WhatsApp API",
        observer: BackendObserver | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self._transport = transport
        # Paths are absolute ("/v1/..."), appended to the base URL's own path, as httpx does.
        self._base_url = str(httpx.URL(base_url)).rstrip("/")
        self._request_timeout = request_timeout
        self._timeouts = httpx.Timeout(request_timeout).as_dict()
        self.name = name
        self.observer: BackendObserver = observer or Unobserved()
        # Longest first, so a secret containing another is removed whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._transport.aclose()

    def safe_text(self, text: str | None) -> str:
        """Upstream text (an error title) fit for a caller or a log: every configured secret
        replaced by ``[redacted]``, then printable ASCII of bounded length."""
        if not text:
            return ""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return clean_title(text)

    def bad_answer(self, reason: str, status: int | None = None) -> BackendFailure:
        """A success status whose body cannot be used."""
        return BackendFailure(
            Failure.BAD_ANSWER, f"{self.name} gave a malformed answer: {reason}", http_status=status
        )

    async def exchange(
        self,
        operation: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        authorization: str,
    ) -> Answer:
        """Send one request and read its capped body.

        ``headers`` are the operation's (defaults, trace headers, Content-Type); the attempt's
        ``Authorization`` is added here. ``operation`` labels the metrics. Exactly one request
        leaves per call: the transport never retries on its own (see :func:`aiohttp_transport`),
        so every request sent is one the safeguards paced and the metrics count.
        """
        request = httpx.Request(
            method,
            self._base_url + path,
            headers={**headers, "Authorization": authorization},
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
                    payload = await self._read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise self._timeout() from None
        except (httpx.TransportError, aiohttp.ClientError) as error:
            if _is_timeout(error):
                raise self._timeout() from None
            raise BackendFailure(
                Failure.UNREACHABLE, f"{self.name} unreachable: {_describe_transport_error(error)}"
            ) from None
        finally:
            self.observer.upstream_exchange(operation, status, time.perf_counter() - started)
        return Answer(status, response.headers, payload)

    def _timeout(self) -> BackendFailure:
        return BackendFailure(Failure.TIMEOUT, "no answer within the upstream timeout")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """A success's whole body (``BAD_ANSWER`` beyond the cap); an error's first bytes."""
        if not 200 <= response.status_code < 300:
            return await _read_prefix(response, MAX_ERROR_BODY_BYTES)
        declared = response.headers.get("content-length")
        too_large = (
            declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES
        )
        body = b"" if too_large else await _read_prefix(response, MAX_RESPONSE_BYTES + 1)
        if too_large or len(body) > MAX_RESPONSE_BYTES:
            raise self.bad_answer(
                f"answer larger than {MAX_RESPONSE_BYTES} bytes", response.status_code
            )
        return body


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    """At most the first ``limit`` bytes of the body; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


# A day: no sane Retry-After asks for more, and a caller should not be told to wait longer.
_MAX_RETRY_AFTER = 24 * 3600.0
# Python's int() refuses longer digit strings anyway; no delay needs more.
_MAX_RETRY_DIGITS = 20


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), if usable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return (
            _MAX_RETRY_AFTER
            if len(value) > _MAX_RETRY_DIGITS
            else min(float(value), _MAX_RETRY_AFTER)
        )
    try:
        moment = email.utils.parsedate_to_datetime(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        delta = (moment - (now or dt.datetime.now(dt.UTC))).total_seconds()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(delta, 0.0), _MAX_RETRY_AFTER)


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

    One call sends one request, never more: aiohttp would otherwise resend an idempotent
    request (GET, PUT) once by itself when its connection turns out closed or reset, outside
    the gateway's pacing, retry budget and metrics. Such a failure leaves as ``UNREACHABLE``
    instead, and the gateway's own retry policy decides. (httpx_aiohttp's ``retries`` argument
    is stored and never used: it retries nothing.)
    """

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30.0, ssl=verify)
        # No upstream sets cookies the gateway needs; proxies come from the configuration only.
        client = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )
        # aiohttp (3.14) has no public switch for its resend of an idempotent request on a
        # dropped connection (ClientSession._request, "retry_persistent_connection"); this
        # private flag is the one its own test client (aiohttp.test_utils) turns off.
        # tests/test_upstream_hardening.py pins the behaviour on a real socket, so an aiohttp
        # that renames the flag fails the tests instead of silently sending unpaced requests.
        client._retry_connection = False
        return client

    return AiohttpTransport(client=session)


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic authentication (RFC 7617, UTF-8)."""
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {credentials}"


def tls_verification(ca_file: Path | None, insecure: bool) -> ssl.SSLContext | bool:
    """How to verify an upstream's certificate: against ``ca_file`` only, the system CAs, or
    (``insecure``) not at all. Reads ``ca_file``: call it once, at start-up."""
    if insecure:
        return False
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
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
