"""The one place failures become gRPC statuses (spec 4.5): a table from what went wrong to
the code, the ``ErrorInfo`` reason and the details a caller receives.

The layers below say what went wrong (:mod:`gateway.failures`: a backend's ``Failure`` kind,
an invalid field, a passed deadline); this module alone says how a caller hears of it::

    status = to_status(BackendFailure(Failure.NOT_FOUND, http_status=404, upstream_code=1006))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]

Every status carries exactly one ``google.rpc.ErrorInfo`` (domain ``identity-gateway.whatsapp``,
metadata ``upstreamStatus`` and ``whatsappCode`` when the upstream answered), plus
``BadRequest`` for invalid fields and ``RetryInfo`` where the rule says so. Anything the table
does not know is a gateway bug: ``INTERNAL`` / ``GATEWAY_INTERNAL`` with a generic message.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from gateway.failures import (
    BackendFailure,
    BusClosed,
    DeadlineExceeded,
    Failure,
    FieldViolation,
    InvalidArgument,
    UnknownSender,
    WatcherTooSlow,
)
from gateway.serving.authz import PermissionDenied, Unauthenticated

DOMAIN = "identity-gateway.whatsapp"

# How long a caller should wait when the upstream asks to slow down but says not for how long.
DEFAULT_RETRY_DELAY = 1.0
_MAX_RETRY_DELAY = 24 * 3600.0


class Reason(enum.StrEnum):
    """The stable ``ErrorInfo.reason`` values callers may branch on."""

    INVALID_WA_ID = "INVALID_WA_ID"
    INVALID_HASH = "INVALID_HASH"
    INVALID_SENDER = "INVALID_SENDER"
    INVALID_CREATE_TIME = "INVALID_CREATE_TIME"
    SENDER_NOT_FOUND = "SENDER_NOT_FOUND"
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
    """What one kind of failure becomes: a gRPC code, a reason, RetryInfo or not, a message.

    An empty ``message`` lets the failure's own (caller-safe) text through.
    """

    code: grpc.StatusCode
    reason: Reason
    retry_info: bool = False
    message: str = ""


_C = grpc.StatusCode

# The table: every failure kind and failure class a caller can be told of, and what it becomes.
RULES: Mapping[Failure | type[Exception], Rule] = {
    Failure.NOT_FOUND: Rule(_C.NOT_FOUND, Reason.CONTACT_NOT_FOUND, message="unknown contact"),
    Failure.HASH_MISMATCH: Rule(
        _C.FAILED_PRECONDITION,
        Reason.HASH_MISMATCH,
        message="the hash is not the user's current identity: read the identity again",
    ),
    Failure.REJECTED: Rule(_C.INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
    Failure.AUTH: Rule(_C.INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
    Failure.LOGIN_BACKOFF: Rule(_C.INTERNAL, Reason.UPSTREAM_AUTH_FAILED, True),
    Failure.RATE_LIMITED: Rule(_C.RESOURCE_EXHAUSTED, Reason.UPSTREAM_RATE_LIMITED, True),
    Failure.UNAVAILABLE: Rule(_C.UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, True),
    Failure.UNREACHABLE: Rule(_C.UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE),
    Failure.TIMEOUT: Rule(
        _C.UNAVAILABLE, Reason.UPSTREAM_TIMEOUT, message="WhatsApp did not answer in time"
    ),
    Failure.UPSTREAM_INTERNAL: Rule(_C.INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
    Failure.BAD_ANSWER: Rule(_C.INTERNAL, Reason.UPSTREAM_BAD_RESPONSE),
    Failure.UNEXPECTED: Rule(_C.INTERNAL, Reason.UPSTREAM_ERROR),
    Failure.CIRCUIT_OPEN: Rule(_C.UNAVAILABLE, Reason.CIRCUIT_OPEN, True),
    Failure.PACED: Rule(
        _C.RESOURCE_EXHAUSTED,
        Reason.UPSTREAM_RATE_LIMITED,
        True,
        "the gateway's pace toward WhatsApp cannot serve this call before its deadline",
    ),
    Failure.OVERLOADED: Rule(
        _C.RESOURCE_EXHAUSTED,
        Reason.GATEWAY_OVERLOADED,
        True,
        "too many requests to WhatsApp in flight; try again shortly",
    ),
    DeadlineExceeded: Rule(
        _C.DEADLINE_EXCEEDED,
        Reason.DEADLINE_EXCEEDED,
        message="the call's deadline elapsed before WhatsApp answered",
    ),
    WatcherTooSlow: Rule(
        _C.RESOURCE_EXHAUSTED,
        Reason.WATCHER_TOO_SLOW,
        message="this watcher fell too far behind: reconnect, and read what you need with "
        "GetIdentity to catch up",
    ),
    BusClosed: Rule(
        _C.UNAVAILABLE,
        Reason.GATEWAY_SHUTTING_DOWN,
        message="the gateway is shutting down: reconnect",
    ),
    UnknownSender: Rule(_C.NOT_FOUND, Reason.SENDER_NOT_FOUND),
    Unauthenticated: Rule(_C.UNAUTHENTICATED, Reason.CALLER_UNAUTHENTICATED),
    PermissionDenied: Rule(_C.PERMISSION_DENIED, Reason.CALLER_NOT_PERMITTED),
}

# An invalid request's reason is named by its first bad field.
FIELD_REASONS: Mapping[str, Reason] = {
    "wa_id": Reason.INVALID_WA_ID,
    "wa_ids": Reason.INVALID_WA_ID,
    "hash": Reason.INVALID_HASH,
    "sender": Reason.INVALID_SENDER,
    "senders": Reason.INVALID_SENDER,
    "create_time": Reason.INVALID_CREATE_TIME,
    "request": Reason.MALFORMED_REQUEST,
}

BUG = Rule(_C.INTERNAL, Reason.GATEWAY_INTERNAL, message="internal gateway error")


def rule_for(error: BaseException) -> Rule:
    """The rule for any exception; anything the table does not know is a gateway bug."""
    if isinstance(error, BackendFailure):
        return RULES[error.kind]
    if isinstance(error, InvalidArgument):
        field = error.violations[0].field if error.violations else "request"
        return Rule(_C.INVALID_ARGUMENT, FIELD_REASONS.get(field, Reason.MALFORMED_REQUEST))
    for kind, rule in RULES.items():
        if isinstance(kind, type) and isinstance(error, kind):
            return rule
    return BUG


def to_status(error: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` a caller receives for ``error`` (spec 4.5)."""
    rule = rule_for(error)
    metadata: dict[str, str] = {}
    details: list[any_pb2.Any] = []
    message = rule.message or rule.reason.replace("_", " ").lower()
    if isinstance(error, BackendFailure):
        message = rule.message or error.message or message
        if error.http_status is not None:
            metadata["upstreamStatus"] = str(error.http_status)
        if error.upstream_code is not None:
            metadata["whatsappCode"] = str(error.upstream_code)
        if error.kind is Failure.PACED:
            metadata["limitedBy"] = "gateway"  # not the upstream: no 429 was received
        elif error.kind is Failure.RATE_LIMITED and error.http_status is None:
            metadata["limitedBy"] = "upstream"  # its 429 paused the sender: nothing was sent
    if isinstance(error, Unauthenticated | PermissionDenied):
        message = str(error)  # fixed text, never the credential
        metadata.update(error.metadata)
    if isinstance(error, UnknownSender):
        message = str(error)
        metadata["sender"] = error.sender
    details.append(
        _pack(error_details_pb2.ErrorInfo(reason=rule.reason, domain=DOMAIN, metadata=metadata))
    )
    if isinstance(error, InvalidArgument):
        message = str(error)
        details.append(_pack(_bad_request(error.violations)))
    if rule.retry_info:
        delay = DEFAULT_RETRY_DELAY
        if isinstance(error, BackendFailure) and error.retry_after is not None:
            delay = error.retry_after
        details.append(_pack(_retry_info(delay)))
    return status_pb2.Status(code=_code_number(rule.code), message=message, details=details)


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


__all__ = ["DOMAIN", "FIELD_REASONS", "RULES", "Reason", "Rule", "rule_for", "to_status"]
