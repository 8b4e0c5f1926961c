"""Every failure the gateway can report, and the one mapping from failures to gRPC statuses.

The exception tree is shallow; each class says what went wrong, never how to report it::

    GatewayError                    base: something the caller must be told about
    ├── InvalidArgument             the caller's request failed validation (spec 4.2)
    ├── DeadlineExceeded            the caller's own deadline ran out while we waited
    ├── RateLimitExceeded           the gateway's own pace toward WhatsApp would pass the deadline
    ├── Overloaded                  too many upstream requests in flight and waiting
    ├── WatcherTooSlow              a change watcher fell too far behind
    ├── BusClosed                   the gateway is draining; watchers should reconnect
    ├── Unauthenticated             caller authorization is on and the caller is unknown
    ├── PermissionDenied            a known caller called a method it is not granted
    └── UpstreamError               the WhatsApp API did not give a usable answer
        ├── UpstreamStatusError     it answered with an error status (carries status, code, title)
        ├── UpstreamTransportError  no answer: connection refused or reset, TLS or DNS failure
        ├── UpstreamTimeout         no answer within --upstream-timeout
        ├── UpstreamBadResponse     a 2xx answer that cannot be parsed or lacks fields
        ├── CircuitOpen             WhatsApp kept failing; not called until the breaker probes
        └── LoginFailed             the login call was refused (or we are backing off after one)

:func:`to_status` turns any of them into a ``google.rpc.Status`` with exactly one ``ErrorInfo``
(plus ``BadRequest`` or ``RetryInfo`` where spec 4.5 lists them). Which code and reason an
upstream answer gets is decided by the tables below, most specific first: the acknowledge
hash-mismatch rule, then WhatsApp's error code, then the HTTP status.

    status = to_status(UpstreamStatusError(404, whatsapp_code=1006), Operation.GET)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from gateway.authz import Caller

DOMAIN = "identity-gateway.whatsapp"

# How long a caller should wait when WhatsApp asks to slow down but says not for how long.
DEFAULT_RETRY_DELAY = 1.0
_MAX_RETRY_DELAY = 24 * 3600.0
# WhatsApp's error titles may reach callers; anything longer or stranger is cut.
_MAX_TITLE_LENGTH = 120
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class Operation(enum.Enum):
    """Which upstream call failed: some outcomes mean different things for each."""

    GET = "GetIdentity"
    ACKNOWLEDGE = "AcknowledgeIdentity"
    REPORT = "ReportIdentityChange"
    WATCH = "WatchIdentityChanges"
    LOGIN = "login"


class Reason(enum.StrEnum):
    """The stable ``ErrorInfo.reason`` values callers may branch on."""

    INVALID_WA_ID = "INVALID_WA_ID"
    INVALID_HASH = "INVALID_HASH"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    CONTACT_NOT_FOUND = "CONTACT_NOT_FOUND"
    HASH_MISMATCH = "HASH_MISMATCH"
    UPSTREAM_REJECTED_REQUEST = "UPSTREAM_REJECTED_REQUEST"
    UPSTREAM_AUTH_FAILED = "UPSTREAM_AUTH_FAILED"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_INTERNAL_ERROR = "UPSTREAM_INTERNAL_ERROR"
    UPSTREAM_BAD_RESPONSE = "UPSTREAM_BAD_RESPONSE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    GATEWAY_INTERNAL = "GATEWAY_INTERNAL"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    GATEWAY_OVERLOADED = "GATEWAY_OVERLOADED"
    WATCHER_TOO_SLOW = "WATCHER_TOO_SLOW"
    GATEWAY_SHUTTING_DOWN = "GATEWAY_SHUTTING_DOWN"
    CALLER_UNAUTHENTICATED = "CALLER_UNAUTHENTICATED"
    CALLER_NOT_PERMITTED = "CALLER_NOT_PERMITTED"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one kind of failure becomes: a gRPC code, a reason, and whether to add RetryInfo."""

    code: grpc.StatusCode
    reason: Reason
    retry_info: bool = False
    message: str = ""


_NOT_FOUND = Rule(grpc.StatusCode.NOT_FOUND, Reason.CONTACT_NOT_FOUND, message="unknown contact")
_HASH_MISMATCH = Rule(
    grpc.StatusCode.FAILED_PRECONDITION,
    Reason.HASH_MISMATCH,
    message="the hash is not the user's current identity: read the identity again",
)
_REJECTED = Rule(grpc.StatusCode.INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST)
_AUTH_FAILED = Rule(grpc.StatusCode.INTERNAL, Reason.UPSTREAM_AUTH_FAILED)
_RATE_LIMITED = Rule(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.UPSTREAM_RATE_LIMITED, True)
_UNAVAILABLE_RETRY = Rule(grpc.StatusCode.UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, True)
_UPSTREAM_INTERNAL = Rule(grpc.StatusCode.INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR)
_UPSTREAM_OTHER = Rule(grpc.StatusCode.INTERNAL, Reason.UPSTREAM_ERROR)

# WhatsApp error codes that decide the outcome whatever the HTTP status was.
WHATSAPP_CODE_RULES: Mapping[int, Rule] = {
    1000: _UPSTREAM_INTERNAL,
    1005: _AUTH_FAILED,
    1006: _NOT_FOUND,
    1011: _UNAVAILABLE_RETRY,
    1014: _UPSTREAM_INTERNAL,
    1015: _RATE_LIMITED,
    1016: _UNAVAILABLE_RETRY,
    1017: _UNAVAILABLE_RETRY,
    1018: _UNAVAILABLE_RETRY,
    1023: _UPSTREAM_INTERNAL,
    1024: _AUTH_FAILED,
    1031: _AUTH_FAILED,
}

# HTTP statuses, for answers whose code is absent or not in the table above.
HTTP_STATUS_RULES: Mapping[int, Rule] = {
    400: _REJECTED,
    401: _AUTH_FAILED,
    403: _AUTH_FAILED,
    404: _NOT_FOUND,
    422: _REJECTED,
    429: _RATE_LIMITED,
    500: _UPSTREAM_INTERNAL,
    502: _UNAVAILABLE_RETRY,
    503: _UNAVAILABLE_RETRY,
    504: _UNAVAILABLE_RETRY,
}

# The failures that have no HTTP answer at all.
_TRANSPORT = Rule(grpc.StatusCode.UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE)
_TIMEOUT = Rule(
    grpc.StatusCode.UNAVAILABLE, Reason.UPSTREAM_TIMEOUT, message="WhatsApp did not answer in time"
)
_BAD_RESPONSE = Rule(grpc.StatusCode.INTERNAL, Reason.UPSTREAM_BAD_RESPONSE)
_DEADLINE = Rule(
    grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.DEADLINE_EXCEEDED,
    message="the call's deadline elapsed before WhatsApp answered",
)
_CIRCUIT_OPEN = Rule(grpc.StatusCode.UNAVAILABLE, Reason.CIRCUIT_OPEN, True)
_SHAPED = Rule(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UPSTREAM_RATE_LIMITED,
    True,
    "the gateway's pace toward WhatsApp cannot serve this call before its deadline",
)
_OVERLOADED = Rule(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.GATEWAY_OVERLOADED,
    True,
    "too many requests to WhatsApp in flight; try again shortly",
)
_TOO_SLOW = Rule(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.WATCHER_TOO_SLOW,
    message="this watcher fell too far behind: reconnect, and read what you need with "
    "GetIdentity to catch up",
)
_SHUTTING_DOWN = Rule(
    grpc.StatusCode.UNAVAILABLE,
    Reason.GATEWAY_SHUTTING_DOWN,
    message="the gateway is shutting down: reconnect",
)
_UNAUTHENTICATED = Rule(grpc.StatusCode.UNAUTHENTICATED, Reason.CALLER_UNAUTHENTICATED)
_NOT_PERMITTED = Rule(grpc.StatusCode.PERMISSION_DENIED, Reason.CALLER_NOT_PERMITTED)
_BUG = Rule(grpc.StatusCode.INTERNAL, Reason.GATEWAY_INTERNAL, message="internal gateway error")


class GatewayError(Exception):
    """Base of every failure reported to a caller as a gRPC status."""


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One invalid request field and why."""

    field: str
    description: str


class InvalidArgument(GatewayError):
    """The caller's request failed validation; nothing was sent upstream."""

    def __init__(self, reason: Reason, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.reason = reason
        self.violations = violations


class DeadlineExceeded(GatewayError):
    """The caller's deadline elapsed while the gateway waited for WhatsApp."""


class UpstreamError(GatewayError):
    """The WhatsApp API did not give a usable answer."""


class UpstreamStatusError(UpstreamError):
    """WhatsApp answered with a non-success HTTP status."""

    def __init__(
        self,
        status: int,
        *,
        whatsapp_code: int | None = None,
        title: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"WhatsApp answered HTTP {status}")
        self.status = status
        self.whatsapp_code = whatsapp_code
        self.title = title
        self.retry_after = retry_after


class UpstreamTransportError(UpstreamError):
    """No HTTP answer: connection refused or reset, TLS failure, DNS failure."""


class UpstreamTimeout(UpstreamError):
    """No answer within the configured upstream timeout."""


class UpstreamBadResponse(UpstreamError):
    """A success status whose body cannot be parsed or lacks required fields."""


class CircuitOpen(UpstreamError):
    """WhatsApp has been failing: the breaker is open and the gateway does not call it."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("WhatsApp has been unavailable; the gateway is not calling it for now")
        self.retry_after = retry_after


class WatcherTooSlow(GatewayError):
    """A WatchIdentityChanges buffer filled: the watch was ended rather than grow memory."""


class BusClosed(GatewayError):
    """The gateway is shutting down; watchers should reconnect to another replica."""


class RateLimitExceeded(GatewayError):
    """No upstream token could be had before the caller's deadline, or too many were waiting."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(GatewayError):
    """The gateway is at its limit of upstream requests and cannot queue this call."""


class LoginFailed(UpstreamStatusError):
    """The login call was refused; raised again, without calling, while backing off."""


class Unauthenticated(GatewayError):
    """No credentials, or none the policy knows (``UNAUTHENTICATED``)."""

    reason: ClassVar[Reason] = Reason.CALLER_UNAUTHENTICATED

    def __init__(self, method: str, message: str) -> None:
        super().__init__(message)  # never the token: messages are fixed text
        self.method = method

    @property
    def metadata(self) -> dict[str, str]:
        """The ``ErrorInfo.metadata`` a caller receives."""
        return {"method": self.method}


class PermissionDenied(GatewayError):
    """A known caller called a method the policy does not grant it (``PERMISSION_DENIED``)."""

    reason: ClassVar[Reason] = Reason.CALLER_NOT_PERMITTED

    def __init__(self, method: str, caller: Caller) -> None:
        super().__init__(f"caller {caller.name!r} may not call {method}")
        self.method = method
        self.caller = caller  # who was refused, for the audit line

    @property
    def metadata(self) -> dict[str, str]:
        """The ``ErrorInfo.metadata`` a caller receives."""
        return {"method": self.method, "caller": self.caller.name}


def rule_for_status(error: UpstreamStatusError, operation: Operation) -> Rule:
    """The rule for an HTTP error answer, chosen by the most specific match."""
    if isinstance(error, LoginFailed) and error.status != 429 and error.status < 500:
        return _AUTH_FAILED
    if operation is Operation.ACKNOWLEDGE and (
        error.status == 409 or (error.status == 400 and error.whatsapp_code == 1009)
    ):
        return _HASH_MISMATCH
    if error.whatsapp_code is not None and error.whatsapp_code in WHATSAPP_CODE_RULES:
        return WHATSAPP_CODE_RULES[error.whatsapp_code]
    if error.status in HTTP_STATUS_RULES:
        return HTTP_STATUS_RULES[error.status]
    if error.status >= 500:
        return _UPSTREAM_INTERNAL
    return _UPSTREAM_OTHER


def rule_for(error: BaseException, operation: Operation) -> Rule:
    """The rule for any exception; anything unexpected is a gateway bug."""
    if isinstance(error, UpstreamStatusError):
        return rule_for_status(error, operation)
    if isinstance(error, UpstreamTimeout):
        return _TIMEOUT
    if isinstance(error, CircuitOpen):
        return _CIRCUIT_OPEN
    if isinstance(error, RateLimitExceeded):
        return _SHAPED
    if isinstance(error, Overloaded):
        return _OVERLOADED
    if isinstance(error, WatcherTooSlow):
        return _TOO_SLOW
    if isinstance(error, BusClosed):
        return _SHUTTING_DOWN
    if isinstance(error, UpstreamTransportError):
        return _TRANSPORT
    if isinstance(error, UpstreamBadResponse):
        return _BAD_RESPONSE
    if isinstance(error, DeadlineExceeded):
        return _DEADLINE
    if isinstance(error, InvalidArgument):
        return Rule(grpc.StatusCode.INVALID_ARGUMENT, error.reason)
    if isinstance(error, Unauthenticated):
        return _UNAUTHENTICATED
    if isinstance(error, PermissionDenied):
        return _NOT_PERMITTED
    return _BUG


def to_status(error: BaseException, operation: Operation) -> status_pb2.Status:
    """The ``google.rpc.Status`` a caller receives for ``error`` (spec 4.5)."""
    rule = rule_for(error, operation)
    metadata: dict[str, str] = {}
    details: list[any_pb2.Any] = []
    message = rule.message or _describe(error, rule)
    if isinstance(error, UpstreamStatusError):
        metadata["upstreamStatus"] = str(error.status)
        if error.whatsapp_code is not None:
            metadata["whatsappCode"] = str(error.whatsapp_code)
    if isinstance(error, Unauthenticated | PermissionDenied):
        message = str(error)  # fixed text, never the credential
        metadata.update(error.metadata)
    if isinstance(error, RateLimitExceeded):
        metadata["limitedBy"] = "gateway"  # not WhatsApp: no 429 was received
    details.append(
        _pack(error_details_pb2.ErrorInfo(reason=rule.reason, domain=DOMAIN, metadata=metadata))
    )
    if isinstance(error, InvalidArgument):
        message = str(error)
        details.append(_pack(_bad_request(error.violations)))
    if rule.retry_info:
        delay = DEFAULT_RETRY_DELAY
        if isinstance(error, UpstreamStatusError | CircuitOpen | RateLimitExceeded):
            delay = error.retry_after if error.retry_after is not None else delay
        details.append(_pack(_retry_info(delay)))
    return status_pb2.Status(code=_code_number(rule.code), message=message, details=details)


def _describe(error: BaseException, rule: Rule) -> str:
    """A short message for callers: what happened, WhatsApp's title, never its body or a token."""
    if isinstance(error, UpstreamStatusError):
        text = f"WhatsApp API answered HTTP {error.status}"
        if error.whatsapp_code is not None:
            text += f" with code {error.whatsapp_code}"
        title = clean_title(error.title)
        if title:
            text += f": {title}"
        if isinstance(error, LoginFailed):
            text = "the gateway could not log in to WhatsApp: " + text
        return text
    if isinstance(error, UpstreamTransportError):
        return f"WhatsApp API unreachable: {error}"
    if isinstance(error, UpstreamBadResponse):
        return f"WhatsApp API gave a malformed answer: {error}"
    return rule.reason.replace("_", " ").lower()


def clean_title(title: str | None) -> str:
    """WhatsApp's error title made safe to show: printable ASCII, bounded length."""
    if not title:
        return ""
    return _UNPRINTABLE.sub("?", title)[:_MAX_TITLE_LENGTH]


def _bad_request(violations: list[FieldViolation]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
    )


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    if not 0.0 <= seconds <= _MAX_RETRY_DELAY:  # also false for NaN
        seconds = _MAX_RETRY_DELAY if seconds > _MAX_RETRY_DELAY else DEFAULT_RETRY_DELAY
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _code_number(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number


__all__ = [
    "DOMAIN",
    "BusClosed",
    "CircuitOpen",
    "DeadlineExceeded",
    "FieldViolation",
    "GatewayError",
    "InvalidArgument",
    "LoginFailed",
    "Operation",
    "Overloaded",
    "PermissionDenied",
    "RateLimitExceeded",
    "Reason",
    "Unauthenticated",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamTransportError",
    "WatcherTooSlow",
    "rule_for",
    "to_status",
]
