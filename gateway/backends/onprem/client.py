"""The WhatsApp On-Premises API as a :class:`~gateway.backends.base.Backend`: two identity
calls and the login.

    backend = OnPremBackend(HttpUpstream(transport, base_url=url, request_timeout=5.0),
                            username="gateway", password=password, safeguards=Safeguards())
    identity = await backend.get_identity("16315551234", deadline=Deadline.after(2.5))
    await backend.acknowledge("16315551234", "UKD6Y/5SqDU=", deadline=NO_DEADLINE)

Each operation runs through :class:`~gateway.backends.safeguards.Safeguards` (retries, breaker,
admission, pacing); each attempt authenticates (one shared re-login and one retry after a
``401``), sends through :class:`~gateway.backends.http.HttpUpstream`, and classifies an error
answer with :func:`~gateway.backends.onprem.outcomes.classify`. Every failure leaves as a
:class:`~gateway.failures.BackendFailure`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import TracebackType

import orjson

from gateway import __version__
from gateway.backends.base import UpstreamIdentity
from gateway.backends.http import Answer, HttpUpstream, basic_authorization, parse_retry_after
from gateway.backends.onprem.login import LoginSession, StaticToken, TokenSource
from gateway.backends.onprem.outcomes import Operation, classify
from gateway.backends.onprem.parse import (
    BadAnswer,
    LoginToken,
    check_acknowledge_body,
    parse_error_body,
    parse_identity,
    parse_login,
)
from gateway.backends.safeguards import Safeguards
from gateway.deadline import NO_DEADLINE, Deadline
from gateway.failures import BackendFailure, clean_title

log = logging.getLogger(__name__)

LOGIN_PATH = "/v1/users/login"
USER_AGENT = f"whatsapp-identity-gateway/{__version__}"
# Sent with every request; trace headers and Content-Type are added per operation, and
# Authorization per attempt.
_DEFAULT_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "application/json",
    "Accept-Encoding": "gzip, deflate",
}


def identity_path(wa_id: str) -> str:
    """The upstream path of a contact's identity; ``wa_id`` must already be validated digits."""
    return f"/v1/contacts/{wa_id}/identity"


class OnPremBackend:
    """Calls the On-Premises API's identity endpoints, authenticating as configured.

    With ``token`` the static token is sent as a bearer token; with ``username`` and
    ``password`` the backend logs in (lazily, renewing before expiry).
    """

    def __init__(
        self,
        upstream: HttpUpstream,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        safeguards: Safeguards | None = None,
    ) -> None:
        self._upstream = upstream
        self._basic_auth = (
            basic_authorization(username, password) if username is not None and password else None
        )
        self._guards = safeguards or Safeguards(observer=upstream.observer)
        if token is not None:
            self.tokens: TokenSource = StaticToken(token)
        else:
            self.tokens = LoginSession(self.login, on_login=upstream.observer.login)

    async def __aenter__(self) -> OnPremBackend:
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
        await self._upstream.aclose()

    # ------------------------------------------------------------------ operations

    async def get_identity(
        self, wa_id: str, *, deadline: Deadline, trace: Mapping[str, str] | None = None
    ) -> UpstreamIdentity:
        """``GET /v1/contacts/{wa_id}/identity``: the contact's latest identity."""
        answer = await self._call(Operation.GET, identity_path(wa_id), None, trace, deadline)
        if answer.status != 200:
            raise self._upstream.bad_answer(
                f"unexpected success status {answer.status}", answer.status
            )
        try:
            return parse_identity(answer.body)
        except BadAnswer as error:
            raise self._upstream.bad_answer(str(error), answer.status) from None

    async def acknowledge(
        self,
        wa_id: str,
        identity_hash: str,
        *,
        deadline: Deadline,
        trace: Mapping[str, str] | None = None,
    ) -> int:
        """``PUT /v1/contacts/{wa_id}/identity`` with ``{"hash": identity_hash}``; its status."""
        body = orjson.dumps({"hash": identity_hash})
        answer = await self._call(
            Operation.ACKNOWLEDGE, identity_path(wa_id), body, trace, deadline
        )
        try:
            check_acknowledge_body(answer.body)
        except BadAnswer as error:
            raise self._upstream.bad_answer(str(error), answer.status) from None
        return answer.status

    async def login(self) -> LoginToken:
        """``POST /v1/users/login`` with Basic auth; a ``login`` failure on refusal."""
        if self._basic_auth is None:
            raise RuntimeError("login needs a username and password")
        # A login is a request like any other: it waits its turn in the pace (and honours a
        # 429's pause), also when it renews the token in the background.
        await self._guards.pace(NO_DEADLINE)
        answer = await self._upstream.exchange(
            "login", "POST", LOGIN_PATH, _DEFAULT_HEADERS, authorization=self._basic_auth
        )
        if not answer.ok:
            raise _failure(answer, Operation.LOGIN, self._upstream.safe_text)
        try:
            return parse_login(answer.body)
        except BadAnswer as error:
            raise self._upstream.bad_answer(str(error), answer.status) from None

    # ------------------------------------------------------------------ one attempt

    async def _call(
        self,
        operation: Operation,
        path: str,
        body: bytes | None,
        trace: Mapping[str, str] | None,
        deadline: Deadline,
    ) -> Answer:
        method = operation.value
        headers = {**_DEFAULT_HEADERS, **(trace or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"

        async def attempt() -> Answer:
            """Authenticate, send, and log in again once after a 401."""
            await self._guards.pace(deadline)
            token = await self.tokens.token()
            answer = await self._upstream.exchange(
                method, method, path, headers, body, authorization=f"Bearer {token}"
            )
            if answer.status == 401 and self.tokens.can_renew:
                token = await self.tokens.rejected(token)
                await self._guards.pace(deadline)
                answer = await self._upstream.exchange(
                    method, method, path, headers, body, authorization=f"Bearer {token}"
                )
                if answer.status == 401:
                    self.tokens.renewal_refused(token)
            if not answer.ok:
                raise _failure(answer, operation, self._upstream.safe_text)
            return answer

        return await self._guards.run(method, deadline, attempt)


def _failure(
    answer: Answer, operation: Operation, safe_text: Callable[[str | None], str] = clean_title
) -> BackendFailure:
    """What an error answer says, classified, with a message a caller may see (its title made
    safe by ``safe_text``)."""
    envelope = parse_error_body(answer.body)
    message = f"WhatsApp API answered HTTP {answer.status}"
    if envelope.code is not None:
        message += f" with code {envelope.code}"
    title = safe_text(envelope.title)
    if title:
        message += f": {title}"
    login = operation is Operation.LOGIN
    if login:
        message = "the gateway could not log in to WhatsApp: " + message
    return BackendFailure(
        classify(answer.status, upstream_code=envelope.code, operation=operation),
        message,
        http_status=answer.status,
        upstream_code=envelope.code,
        retry_after=parse_retry_after(answer.headers.get("retry-after")),
        login=login,
    )
