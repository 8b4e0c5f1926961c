"""The WhatsApp Business API client: two identity calls and the login, over one httpx client.

    async with WhatsAppClient.from_config(config) as client:
        identity = await client.get_identity("16315551234", time_remaining=2.5)
        await client.acknowledge("16315551234", "UKD6Y/5SqDU=", time_remaining=None)

Every failure leaves here as a :class:`~gateway.errors.UpstreamError` (or
:class:`~gateway.errors.DeadlineExceeded`): httpx's exceptions are translated in exactly one
place, :meth:`WhatsAppClient._exchange`. Each HTTP request is capped by ``--upstream-timeout``;
the whole operation (login, request, one re-login and retry on a 401) by the caller's deadline.
Tests pass their own ``httpx.AsyncClient`` (for example over ``httpx.MockTransport``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import httpx

from gateway import __version__
from gateway.auth import LoginSession, StaticToken, TokenSource
from gateway.config import GatewayConfig
from gateway.deadline import caller_deadline
from gateway.errors import (
    LoginFailed,
    UpstreamBadResponse,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamTransportError,
)
from gateway.parse import (
    LoginToken,
    UpstreamIdentity,
    check_acknowledge_body,
    parse_error_body,
    parse_identity,
    parse_login,
    parse_retry_after,
)

LOGIN_PATH = "/v1/users/login"
# No identity answer comes near this; a larger body is a broken or hostile upstream.
MAX_RESPONSE_BYTES = 1 << 20
USER_AGENT = f"whatsapp-identity-gateway/{__version__}"

# Metadata copied from the caller's RPC onto the upstream request (spec 4.1).
TRACE_HEADERS = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)


def identity_path(wa_id: str) -> str:
    """The upstream path of a contact's identity; ``wa_id`` must already be validated digits."""
    return f"/v1/contacts/{wa_id}/identity"


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes


# Called with (operation, HTTP status or None, seconds) after every upstream exchange.
ExchangeObserver = Callable[[str, int | None, float], None]


class WhatsAppClient:
    """Calls the WhatsApp API's identity endpoints, authenticating as configured."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        request_timeout: float,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        session_factory: Callable[[WhatsAppClient], TokenSource] | None = None,
        observe: ExchangeObserver | None = None,
    ) -> None:
        self._http = http
        self._request_timeout = request_timeout
        self._basic_auth = (
            httpx.BasicAuth(username, password) if username is not None and password else None
        )
        self._observe = observe
        if session_factory is not None:
            self.tokens: TokenSource = session_factory(self)
        elif token is not None:
            self.tokens = StaticToken(token)
        else:
            self.tokens = LoginSession(self.login)

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        observe: ExchangeObserver | None = None,
        on_login: Callable[[str], None] | None = None,
    ) -> WhatsAppClient:
        """A client with its own connection pool, TLS settings and credentials from ``config``."""
        http = httpx.AsyncClient(
            base_url=config.upstream_url,
            verify=_tls_verification(config),
            timeout=httpx.Timeout(config.upstream_timeout),
            limits=httpx.Limits(
                max_connections=config.upstream_max_connections,
                max_keepalive_connections=config.upstream_max_connections,
                keepalive_expiry=30.0,
            ),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
            # Proxies, .netrc credentials and CA overrides come from the configuration only.
            trust_env=False,
        )
        return cls(
            http,
            request_timeout=config.upstream_timeout,
            username=config.upstream_username,
            password=config.upstream_password,
            token=config.upstream_token,
            session_factory=(lambda c: LoginSession(c.login, on_login=on_login))
            if config.login_mode
            else None,
            observe=observe,
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
        await self._http.aclose()

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
            answer = await self._authorized("GET", identity_path(wa_id), None, trace)
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
        body = json.dumps({"hash": identity_hash}).encode()
        async with caller_deadline(time_remaining):
            answer = await self._authorized("PUT", identity_path(wa_id), body, trace)
        check_acknowledge_body(answer.body)
        return answer.status

    async def login(self) -> LoginToken:
        """``POST /v1/users/login`` with Basic auth; raises :class:`LoginFailed` on refusal."""
        if self._basic_auth is None:
            raise RuntimeError("login needs a username and password")
        answer = await self._exchange("login", "POST", LOGIN_PATH, auth=self._basic_auth)
        if not 200 <= answer.status < 300:
            raise _status_error(answer, LoginFailed)
        return parse_login(answer.body)

    # ------------------------------------------------------------------ plumbing

    async def _authorized(
        self, method: str, path: str, body: bytes | None, trace: Mapping[str, str] | None
    ) -> _Answer:
        """One authorised request, re-authenticated and retried once after a 401."""
        headers = dict(trace or {})
        if body is not None:
            headers["Content-Type"] = "application/json"
        token = await self.tokens.token()
        answer = await self._exchange(method, method, path, headers, body, token=token)
        if answer.status == 401 and self.tokens.can_renew:
            token = await self.tokens.rejected(token)
            answer = await self._exchange(method, method, path, headers, body, token=token)
        if not 200 <= answer.status < 300:
            raise _status_error(answer, UpstreamStatusError)
        return answer

    async def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        *,
        token: str | None = None,
        auth: httpx.Auth | None = None,
    ) -> _Answer:
        """Send one request and read its capped body; the only place httpx errors are seen."""
        request_headers = dict(headers or {})
        if token is not None:
            request_headers["Authorization"] = f"Bearer {token}"
        started = time.perf_counter()
        status: int | None = None
        try:
            async with asyncio.timeout(self._request_timeout):
                request = self._http.build_request(
                    method, path, headers=request_headers, content=body
                )
                response = await self._http.send(request, auth=auth, stream=True)
                try:
                    status = response.status_code
                    payload = await _read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamTimeout("no answer within the upstream timeout") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout("no answer within the upstream timeout") from None
        except httpx.TransportError as error:
            raise UpstreamTransportError(_describe_transport_error(error)) from None
        finally:
            if self._observe is not None:
                self._observe(operation, status, time.perf_counter() - started)
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


def _status_error(answer: _Answer, kind: type[UpstreamStatusError]) -> UpstreamStatusError:
    envelope = parse_error_body(answer.body)
    return kind(
        answer.status,
        whatsapp_code=envelope.code,
        title=envelope.title,
        retry_after=parse_retry_after(answer.headers.get("retry-after")),
    )


def _describe_transport_error(error: httpx.TransportError) -> str:
    """A short, secret-free description: the kind of failure and its root cause, no URL."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return f"TLS failure ({cause.reason or 'handshake failed'})"
        if isinstance(cause, OSError) and cause.errno:
            # strerror alone: the exception's own text can name the upstream's address.
            return f"connection failed ({os.strerror(cause.errno)})"
        cause = cause.__cause__ or cause.__context__
    kinds = {
        httpx.ConnectError: "connection failed",
        httpx.ReadError: "connection reset while reading",
        httpx.WriteError: "connection reset while writing",
        httpx.RemoteProtocolError: "connection closed or broken answer",
        httpx.UnsupportedProtocol: "unsupported protocol",
        httpx.ProxyError: "proxy failure",
    }
    for kind, text in kinds.items():
        if isinstance(error, kind):
            return text
    return "transport failure"


def _tls_verification(config: GatewayConfig) -> ssl.SSLContext | bool:
    if config.upstream_insecure:
        return False
    if config.upstream_ca_file is not None:
        return ssl.create_default_context(cafile=str(config.upstream_ca_file))
    return ssl.create_default_context()
