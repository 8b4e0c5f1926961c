"""Infobip's WhatsApp identity API as a :class:`~gateway.backends.base.Backend`, for one sender.

    upstream = HttpUpstream(transport, base_url="https://xyz.api.infobip.com", request_timeout=5.0,
                            name=UPSTREAM_NAME, secrets=[api_key])
    guards = Safeguards.configured(rate_limit=DEFAULT_RATE_LIMIT, burst=DEFAULT_BURST, ...)
    async with InfobipBackend(upstream, sender="447796344125", api_key=api_key,
                              safeguards=guards) as backend:
        identity = await backend.get_identity("16315551234", deadline=Deadline.after(2.5))
        status = await backend.acknowledge("16315551234", identity.hash, deadline=NO_DEADLINE)

Infobip (a Business Solution Provider) serves the On-Premises API's identity calls under
``/whatsapp/1/{sender}/contacts/{wa_id}/identity``, authenticated by a static API key
(``Authorization: App <key>``): there is no login, and a ``401`` is an ``AUTH`` failure.
Each operation runs through :class:`~gateway.backends.safeguards.Safeguards` (retries, breaker,
admission, pacing), sends through :class:`~gateway.backends.http.HttpUpstream`, and classifies an
error answer with :func:`classify`. Every failure leaves as a
:class:`~gateway.failures.BackendFailure`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TypeVar

import orjson

from gateway import __version__
from gateway.backends.base import UpstreamIdentity
from gateway.backends.http import Answer, HttpUpstream, parse_retry_after, status_kind
from gateway.backends.infobip.parse import (
    BadAnswer,
    check_acknowledge_body,
    parse_error_text,
    parse_identity,
)
from gateway.backends.safeguards import Safeguards
from gateway.deadline import Deadline
from gateway.failures import BackendFailure, Failure
from gateway.identifiers import is_sender_number

T = TypeVar("T")

# Infobip documents 10 requests/s per account (for the acknowledge call). The wiring paces both
# calls with these, so a burst of reads cannot spend the allowance acknowledgements need.
DEFAULT_RATE_LIMIT = 10.0
DEFAULT_BURST = 10
# How callers' messages name this upstream ("Infobip API answered HTTP 409: ...").
UPSTREAM_NAME = "Infobip API"
USER_AGENT = f"whatsapp-identity-gateway/{__version__}"


class Operation(enum.Enum):
    """Which call an answer belongs to (its HTTP method): a 409 means something only on one."""

    GET = "GET"
    ACKNOWLEDGE = "PUT"


# Error statuses whose meaning depends on the call, most specific first; every other status
# means what it means by itself (gateway.backends.http.HTTP_STATUS_KINDS). Infobip documents
# 409 as "incorrect identity hash" and 404 as "identity or recipient not found" for the PUT;
# 404 would be NOT_FOUND by status alone, and is listed so the table reads as the docs do.
OPERATION_STATUS_KINDS: Mapping[tuple[Operation, int], Failure] = {
    (Operation.ACKNOWLEDGE, 409): Failure.HASH_MISMATCH,
    (Operation.ACKNOWLEDGE, 404): Failure.NOT_FOUND,
}


def classify(status: int, operation: Operation) -> Failure:
    """The kind of failure an Infobip error status is, for ``operation``.

    Infobip's envelope carries a ``messageId`` word, not a documented code, so the status
    alone decides.
    """
    return OPERATION_STATUS_KINDS.get((operation, status)) or status_kind(status)


def identity_path(sender: str, wa_id: str) -> str:
    """The upstream path of a contact's identity as seen by ``sender``; both validated digits."""
    return f"/whatsapp/1/{sender}/contacts/{wa_id}/identity"


class InfobipBackend:
    """Calls Infobip's identity endpoints for one sender number with a static API key.

    ``sender`` is the business number in international form, digits only (it goes into the
    path, so anything else is refused here, at start-up). ``api_key`` should also be among the
    upstream's ``secrets`` so that an error text echoing it is redacted.
    """

    def __init__(
        self,
        upstream: HttpUpstream,
        *,
        sender: str,
        api_key: str,
        safeguards: Safeguards | None = None,
    ) -> None:
        if not is_sender_number(sender):
            raise ValueError("sender must be 6 to 15 ASCII digits, without '+'")
        if not api_key:
            raise ValueError("api_key must not be empty")
        self.sender = sender
        self._upstream = upstream
        self._authorization = f"App {api_key}"
        self._guards = safeguards or Safeguards(observer=upstream.observer)

    async def __aenter__(self) -> InfobipBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._upstream.aclose()

    # ------------------------------------------------------------------ operations

    async def get_identity(
        self, wa_id: str, *, deadline: Deadline, trace: Mapping[str, str] | None = None
    ) -> UpstreamIdentity:
        """``GET /whatsapp/1/{sender}/contacts/{wa_id}/identity``: the latest identity."""
        answer = await self._call(Operation.GET, wa_id, None, trace, deadline)
        # Only a 200 carries an identity; any other success would leave the caller empty-handed.
        if answer.status != 200:
            raise self._upstream.bad_answer(
                f"unexpected success status {answer.status}", answer.status
            )
        return self._usable(answer, parse_identity)

    async def acknowledge(
        self,
        wa_id: str,
        identity_hash: str,
        *,
        deadline: Deadline,
        trace: Mapping[str, str] | None = None,
    ) -> int:
        """``PUT`` the same path with ``{"hash": identity_hash}``; its status (204, or 200)."""
        body = orjson.dumps({"hash": identity_hash})
        answer = await self._call(Operation.ACKNOWLEDGE, wa_id, body, trace, deadline)
        self._usable(answer, check_acknowledge_body)
        return answer.status

    # ------------------------------------------------------------------ one attempt

    async def _call(
        self,
        operation: Operation,
        wa_id: str,
        body: bytes | None,
        trace: Mapping[str, str] | None,
        deadline: Deadline,
    ) -> Answer:
        """Send ``operation`` through the safeguards; its success answer, or a failure."""
        method = operation.value
        path = identity_path(self.sender, wa_id)
        # The trace headers as given, over the defaults, as the On-Premises backend sends them.
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(trace or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"

        async def attempt() -> Answer:
            """One request: wait for its turn in the pace, send, classify an error answer.
            A static key cannot be renewed, so a 401 is final (``AUTH``), not a re-login."""
            await self._guards.pace(deadline)
            answer = await self._upstream.exchange(
                method, method, path, headers, body, authorization=self._authorization
            )
            if answer.ok:
                return answer
            raise self._failure(answer, operation)

        return await self._guards.run(method, deadline, attempt)

    def _usable(self, answer: Answer, parse: Callable[[bytes], T]) -> T:
        """``parse`` of a success answer's body; a ``BAD_ANSWER`` keeping its status if not."""
        try:
            return parse(answer.body)
        except BadAnswer as error:
            raise self._upstream.bad_answer(str(error), answer.status) from None

    def _failure(self, answer: Answer, operation: Operation) -> BackendFailure:
        """What an error answer says, classified, with a message a caller may see: the
        envelope's text with every configured secret redacted, printable and bounded."""
        message = f"{UPSTREAM_NAME} answered HTTP {answer.status}"
        text = self._upstream.safe_text(parse_error_text(answer.body))
        if text:
            message += f": {text}"
        return BackendFailure(
            classify(answer.status, operation),
            message,
            http_status=answer.status,
            upstream_code=None,  # Infobip's messageId is a word, not WhatsApp's numeric code
            retry_after=parse_retry_after(answer.headers.get("retry-after")),
        )


__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_RATE_LIMIT",
    "OPERATION_STATUS_KINDS",
    "UPSTREAM_NAME",
    "InfobipBackend",
    "Operation",
    "classify",
    "identity_path",
]
