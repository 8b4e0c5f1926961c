"""What went wrong, said where it was seen: the gateway's exception tree, free of gRPC.

Every layer raises these; only the RPC boundary (:mod:`gateway.serving.status`) turns them into
gRPC statuses, through one table. A backend classifies each failure when it sees it (an HTTP 429
is ``Failure.RATE_LIMITED`` with its delay), and the safeguards, the cache and the boundary read
that kind instead of re-deriving it::

    GatewayError                  base: something the caller must be told about
    ├── InvalidArgument           the caller's request failed validation; names each bad field
    ├── DeadlineExceeded          the caller's own deadline ran out while the gateway waited
    ├── WatcherTooSlow            a change watcher fell too far behind
    ├── BusClosed                 the gateway is draining; watchers should reconnect
    ├── UnknownSender             a well-formed sender number the gateway does not serve
    └── BackendFailure            no usable answer from a backend; ``kind`` says which (Failure)

Caller authorization adds two more (``Unauthenticated``, ``PermissionDenied``) in
:mod:`gateway.serving.authz`, where callers are known.

    raise BackendFailure(Failure.RATE_LIMITED, http_status=429, retry_after=3.0,
                         message="WhatsApp API answered HTTP 429")
"""

from __future__ import annotations

import dataclasses
import enum
import re

# Upstream error titles may reach callers; anything longer or stranger is cut.
_MAX_TITLE_LENGTH = 120
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class Failure(enum.Enum):
    """The kinds of backend failure. Retries, the breaker and the cache decide by kind."""

    NOT_FOUND = "not_found"  # the upstream does not know the contact
    HASH_MISMATCH = "hash_mismatch"  # acknowledge: the hash is not the contact's current one
    REJECTED = "rejected"  # the upstream refused the gateway's request as malformed
    AUTH = "auth"  # the gateway's credentials were refused, or its login failed
    RATE_LIMITED = "rate_limited"  # the upstream asked the gateway to slow down
    UNAVAILABLE = "unavailable"  # the upstream answered that it is unavailable for now
    UNREACHABLE = "unreachable"  # no answer: connection refused or reset, TLS or DNS failure
    TIMEOUT = "timeout"  # no answer within the upstream timeout
    UPSTREAM_INTERNAL = "upstream_internal"  # the upstream failed inside (500, other 5xx)
    BAD_ANSWER = "bad_answer"  # a success status whose body cannot be used
    UNEXPECTED = "unexpected"  # a status the gateway has no meaning for
    CIRCUIT_OPEN = "circuit_open"  # the upstream kept failing; not called until a probe
    PACED = "paced"  # the gateway's own pace cannot serve the call before its deadline
    OVERLOADED = "overloaded"  # too many upstream requests in flight and waiting
    LOGIN_BACKOFF = "login_backoff"  # the last login failed; the next may not be tried yet


class GatewayError(Exception):
    """Base of every failure reported to a caller as a gRPC status."""


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One invalid request field and why."""

    field: str
    description: str


class InvalidArgument(GatewayError):
    """The caller's request failed validation; nothing was sent upstream."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


class DeadlineExceeded(GatewayError):
    """The caller's deadline elapsed while the gateway waited."""


class WatcherTooSlow(GatewayError):
    """A WatchIdentityChanges buffer filled: the watch was ended rather than grow memory."""


class BusClosed(GatewayError):
    """The gateway is shutting down; watchers should reconnect to another replica."""


class UnknownSender(GatewayError):
    """The request names a business number (sender) the gateway is not configured for."""

    def __init__(self, sender: str) -> None:
        super().__init__(f"the gateway serves no sender {sender}")
        self.sender = sender


class BackendFailure(GatewayError):
    """A backend gave no usable answer; ``kind`` says what it saw.

    ``message`` is safe to show a caller (never a body, a token or an address); empty when the
    kind says it all. ``http_status`` is the upstream's status when there was an answer,
    ``upstream_code`` the error code its body carried, ``retry_after`` how long the upstream
    (or the gateway's own safeguard) asks to wait. ``login`` marks a refused login: the login
    session backs off on its own, so the operation does not retry it.
    """

    def __init__(
        self,
        kind: Failure,
        message: str = "",
        *,
        http_status: int | None = None,
        upstream_code: int | None = None,
        retry_after: float | None = None,
        login: bool = False,
    ) -> None:
        super().__init__(message or kind.value.replace("_", " "))
        self.kind = kind
        self.message = message
        self.http_status = http_status
        self.upstream_code = upstream_code
        self.retry_after = retry_after
        self.login = login


def clean_title(title: str | None) -> str:
    """An upstream's error title made safe to show a caller: printable ASCII, bounded length."""
    if not title:
        return ""
    return _UNPRINTABLE.sub("?", title)[:_MAX_TITLE_LENGTH]


__all__ = [
    "BackendFailure",
    "BusClosed",
    "DeadlineExceeded",
    "Failure",
    "FieldViolation",
    "GatewayError",
    "InvalidArgument",
    "UnknownSender",
    "WatcherTooSlow",
    "clean_title",
]
