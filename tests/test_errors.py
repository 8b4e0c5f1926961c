"""Every row of the spec 4.5 error table, through the same two steps as in production.

An upstream HTTP answer becomes a :class:`~gateway.failures.BackendFailure` the way the
On-Premises backend builds it (``gateway.backends.onprem.client._failure``: the error body and
``Retry-After`` parsed, the kind from ``outcomes.classify``), and the RPC boundary turns that
failure into a status (``gateway.serving.status.to_status``). Failures with no answer (transport,
timeout, a broken 2xx, the gateway's own safeguards) are built as their kind.

Each case is named for its row (and, where a row lists several outcomes, for the outcome).
The WhatsApp code cases use an HTTP status that would map elsewhere on its own, so that
they pin the code table rather than pass by way of the status table.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from gateway.backends.http import Answer
from gateway.backends.onprem.client import _failure
from gateway.backends.onprem.outcomes import Operation, classify
from gateway.failures import (
    BackendFailure,
    BusClosed,
    DeadlineExceeded,
    Failure,
    FieldViolation,
    InvalidArgument,
    WatcherTooSlow,
)
from gateway.serving.status import BUG, DOMAIN, FIELD_REASONS, RULES, Reason, to_status

GET = Operation.GET
ACK = Operation.ACKNOWLEDGE
LOGIN = Operation.LOGIN

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Row:
    """One expected outcome of spec 4.5.

    ``operation`` is set for an upstream answer: the call whose answer ``error`` was built from.
    """

    error: BaseException
    code: grpc.StatusCode
    reason: Reason
    metadata: dict[str, str]
    bad_request_fields: list[str] | None = None  # None: no BadRequest detail
    retry_seconds: float | None = None  # None: no RetryInfo detail
    operation: Operation | None = None


@dataclasses.dataclass
class Decoded:
    error_infos: list[error_details_pb2.ErrorInfo]
    bad_requests: list[error_details_pb2.BadRequest]
    retry_infos: list[error_details_pb2.RetryInfo]
    others: list[Any]


def _decode(details: list[Any]) -> Decoded:
    decoded = Decoded([], [], [], [])
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            decoded.error_infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            decoded.bad_requests.append(bad_request)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            decoded.retry_infos.append(retry)
        else:
            decoded.others.append(detail)
    return decoded


def _body(code: int | None = None, title: str | None = None, details: str | None = None) -> bytes:
    """A WhatsApp error envelope with the given first error; empty without any field."""
    error: dict[str, object] = {}
    if code is not None:
        error["code"] = code
    if title is not None:
        error["title"] = title
    if details is not None:
        error["details"] = details
    return json.dumps({"errors": [error]}).encode() if error else b""


def _answered(
    status: int,
    code: int | None = None,
    *,
    operation: Operation,
    title: str | None = None,
    retry_after: str | None = None,
) -> BackendFailure:
    """The failure the On-Premises backend raises for this error answer to ``operation``."""
    headers = httpx.Headers({"Retry-After": retry_after} if retry_after is not None else {})
    return _failure(Answer(status, headers, _body(code, title)), operation)


def _row(
    status: int,
    code: int | None,
    operation: Operation,
    grpc_code: grpc.StatusCode,
    reason: Reason,
    *,
    title: str | None = None,
    retry_after: str | None = None,
    retry_seconds: float | None = None,
) -> Row:
    """A row for an upstream error answer; its metadata is the answer's status and code."""
    return Row(
        _answered(status, code, operation=operation, title=title, retry_after=retry_after),
        grpc_code,
        reason,
        _meta(status, code),
        retry_seconds=retry_seconds,
        operation=operation,
    )


def _meta(status: int, code: int | None = None) -> dict[str, str]:
    metadata = {"upstreamStatus": str(status)}
    if code is not None:
        metadata["whatsappCode"] = str(code)
    return metadata


INTERNAL = grpc.StatusCode.INTERNAL
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

ROWS = [
    # invalid request (4.2) -> INVALID_ARGUMENT, BadRequest; the first bad field names the reason
    pytest.param(
        Row(
            InvalidArgument([FieldViolation("wa_id", "6 to 15 digits")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_WA_ID,
            {},
            bad_request_fields=["wa_id"],
        ),
        id="invalid-request-wa-id",
    ),
    pytest.param(
        Row(
            InvalidArgument([FieldViolation("wa_ids", "6 to 15 digits")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_WA_ID,
            {},
            bad_request_fields=["wa_ids"],
        ),
        id="invalid-request-wa-ids-filter",
    ),
    pytest.param(
        Row(
            InvalidArgument([FieldViolation("hash", "base64")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_HASH,
            {},
            bad_request_fields=["hash"],
        ),
        id="invalid-request-hash",
    ),
    pytest.param(
        Row(
            InvalidArgument([FieldViolation("wa_id", "digits"), FieldViolation("hash", "base64")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_WA_ID,
            {},
            bad_request_fields=["wa_id", "hash"],
        ),
        id="invalid-request-both-fields-first-names-the-reason",
    ),
    pytest.param(
        Row(
            InvalidArgument([FieldViolation("request", "not a request")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.MALFORMED_REQUEST,
            {},
            bad_request_fields=["request"],
        ),
        id="invalid-request-malformed",
    ),
    # 404 (e.g. 1006) -> NOT_FOUND
    pytest.param(
        _row(404, 1006, GET, NOT_FOUND, Reason.CONTACT_NOT_FOUND),
        id="404-1006-get",
    ),
    pytest.param(
        _row(404, None, GET, NOT_FOUND, Reason.CONTACT_NOT_FOUND),
        id="404-without-body-get",
    ),
    pytest.param(
        _row(404, 1006, ACK, NOT_FOUND, Reason.CONTACT_NOT_FOUND),
        id="404-1006-acknowledge",
    ),
    # acknowledge: 409, or 400 with 1009 -> FAILED_PRECONDITION HASH_MISMATCH
    pytest.param(
        _row(409, None, ACK, PRECONDITION, Reason.HASH_MISMATCH),
        id="acknowledge-409-hash-mismatch",
    ),
    pytest.param(
        _row(400, 1009, ACK, PRECONDITION, Reason.HASH_MISMATCH),
        id="acknowledge-400-1009-hash-mismatch",
    ),
    # ... and only those: 1009 on another status is not a hash mismatch
    pytest.param(
        _row(422, 1009, ACK, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
        id="acknowledge-422-1009-is-rejected-request-not-hash-mismatch",
    ),
    pytest.param(
        _row(500, 1009, ACK, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
        id="acknowledge-500-1009-is-internal-error-not-hash-mismatch",
    ),
    # other 400 / 422 -> INTERNAL UPSTREAM_REJECTED_REQUEST
    pytest.param(
        _row(400, 1009, GET, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
        id="get-400-1009-is-rejected-request-not-hash-mismatch",
    ),
    pytest.param(
        _row(400, None, ACK, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
        id="acknowledge-400-without-1009-is-rejected-request",
    ),
    pytest.param(
        _row(400, 1008, GET, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
        id="400-rejected-request",
    ),
    pytest.param(
        _row(422, None, GET, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
        id="422-rejected-request",
    ),
    pytest.param(
        _row(409, None, GET, INTERNAL, Reason.UPSTREAM_ERROR),
        id="get-409-is-upstream-error-not-hash-mismatch",
    ),
    # 401 after re-login, 403, 1005, failed login, 1024, 1031 -> INTERNAL UPSTREAM_AUTH_FAILED
    pytest.param(
        _row(401, None, GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="401-auth-failed",
    ),
    pytest.param(
        _row(403, None, ACK, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="403-auth-failed",
    ),
    pytest.param(
        _row(400, 1005, GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="code-1005-auth-failed",
    ),
    pytest.param(
        _row(401, None, LOGIN, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="failed-login-401-auth-failed",
    ),
    pytest.param(
        _row(400, None, LOGIN, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="failed-login-400-is-auth-failed-not-rejected-request",
    ),
    pytest.param(
        _row(404, None, LOGIN, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="failed-login-404-is-auth-failed-not-contact-not-found",
    ),
    pytest.param(
        _row(
            401,
            1024,
            LOGIN,
            INTERNAL,
            Reason.UPSTREAM_AUTH_FAILED,
            title="Password change required",
        ),
        id="failed-login-1024-auth-failed",
    ),
    pytest.param(
        _row(400, 1024, GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="code-1024-auth-failed",
    ),
    pytest.param(
        _row(400, 1031, GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
        id="code-1031-auth-failed",
    ),
    # 429 / 1015 -> RESOURCE_EXHAUSTED, RetryInfo (Retry-After, else 1 s)
    pytest.param(
        _row(429, None, GET, EXHAUSTED, Reason.UPSTREAM_RATE_LIMITED, retry_seconds=1.0),
        id="429-rate-limited-default-retry",
    ),
    pytest.param(
        _row(
            429,
            None,
            GET,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            retry_after="30",
            retry_seconds=30.0,
        ),
        id="429-rate-limited-honours-retry-after",
    ),
    pytest.param(
        # Retry-After carries whole seconds (or a date): a fractional delay is built directly.
        Row(
            BackendFailure(
                classify(429, upstream_code=None, operation=ACK),
                "WhatsApp API answered HTTP 429",
                http_status=429,
                retry_after=2.5,
            ),
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            _meta(429),
            retry_seconds=2.5,
            operation=ACK,
        ),
        id="429-rate-limited-fractional-retry-after",
    ),
    pytest.param(
        _row(400, 1015, GET, EXHAUSTED, Reason.UPSTREAM_RATE_LIMITED, retry_seconds=1.0),
        id="code-1015-rate-limited",
    ),
    pytest.param(
        _row(
            429,
            None,
            LOGIN,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            retry_after="7",
            retry_seconds=7.0,
        ),
        id="login-429-rate-limited",
    ),
    # 502, 503, 504 / 1011, 1016, 1017, 1018 -> UNAVAILABLE, RetryInfo
    pytest.param(
        _row(502, None, GET, UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, retry_seconds=1.0),
        id="502-unavailable",
    ),
    pytest.param(
        _row(503, None, GET, UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, retry_seconds=1.0),
        id="503-unavailable",
    ),
    pytest.param(
        _row(
            503,
            None,
            ACK,
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            retry_after="10",
            retry_seconds=10.0,
        ),
        id="503-unavailable-honours-retry-after",
    ),
    pytest.param(
        _row(504, None, GET, UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, retry_seconds=1.0),
        id="504-unavailable",
    ),
    pytest.param(
        _row(503, None, LOGIN, UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, retry_seconds=1.0),
        id="login-503-unavailable-not-auth-failed",
    ),
    *[
        pytest.param(
            _row(500, code, GET, UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, retry_seconds=1.0),
            id=f"code-{code}-unavailable",
        )
        for code in (1011, 1016, 1017, 1018)
    ],
    # connection refused/reset, TLS failure, DNS failure -> UNAVAILABLE, no RetryInfo
    pytest.param(
        Row(
            BackendFailure(
                Failure.UNREACHABLE, "WhatsApp API unreachable: connection failed (refused)"
            ),
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            {},
        ),
        id="transport-error-unavailable-without-retry-info",
    ),
    # --upstream-timeout elapsed -> UNAVAILABLE UPSTREAM_TIMEOUT
    pytest.param(
        Row(BackendFailure(Failure.TIMEOUT, "no answer"), UNAVAILABLE, Reason.UPSTREAM_TIMEOUT, {}),
        id="upstream-timeout",
    ),
    # caller's deadline elapsed -> DEADLINE_EXCEEDED
    pytest.param(
        Row(DeadlineExceeded(), grpc.StatusCode.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED, {}),
        id="caller-deadline-exceeded",
    ),
    # 500 / 1000, 1014, 1023 and other 5xx -> INTERNAL UPSTREAM_INTERNAL_ERROR
    pytest.param(
        _row(500, None, GET, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
        id="500-internal-error",
    ),
    *[
        pytest.param(
            _row(400, code, GET, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
            id=f"code-{code}-internal-error",
        )
        for code in (1000, 1014, 1023)
    ],
    pytest.param(
        _row(501, None, GET, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
        id="other-5xx-501-internal-error",
    ),
    pytest.param(
        _row(599, None, ACK, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
        id="other-5xx-599-internal-error",
    ),
    # 2xx that cannot be parsed -> INTERNAL UPSTREAM_BAD_RESPONSE, upstreamStatus too
    pytest.param(
        Row(
            BackendFailure(
                Failure.BAD_ANSWER,
                "WhatsApp API gave a malformed answer: body is not JSON",
                http_status=200,
            ),
            INTERNAL,
            Reason.UPSTREAM_BAD_RESPONSE,
            _meta(200),
        ),
        id="bad-2xx-response",
    ),
    # any other status -> INTERNAL UPSTREAM_ERROR
    pytest.param(
        _row(302, None, GET, INTERNAL, Reason.UPSTREAM_ERROR),
        id="other-status-302-upstream-error",
    ),
    pytest.param(
        _row(418, None, ACK, INTERNAL, Reason.UPSTREAM_ERROR),
        id="other-status-418-upstream-error",
    ),
    pytest.param(
        _row(418, 1013, GET, INTERNAL, Reason.UPSTREAM_ERROR),
        id="other-status-with-unmapped-code-upstream-error",
    ),
    # the gateway's own safeguards
    pytest.param(
        Row(
            BackendFailure(Failure.CIRCUIT_OPEN, retry_after=5.0),
            UNAVAILABLE,
            Reason.CIRCUIT_OPEN,
            {},
            retry_seconds=5.0,
        ),
        id="circuit-open",
    ),
    pytest.param(
        Row(
            BackendFailure(Failure.PACED, retry_after=0.25),
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            {"limitedBy": "gateway"},
            retry_seconds=0.25,
        ),
        id="paced-by-the-gateway-rate-limited",
    ),
    pytest.param(
        Row(
            BackendFailure(Failure.OVERLOADED),
            EXHAUSTED,
            Reason.GATEWAY_OVERLOADED,
            {},
            retry_seconds=1.0,
        ),
        id="overloaded",
    ),
    # watchers
    pytest.param(
        Row(WatcherTooSlow(), EXHAUSTED, Reason.WATCHER_TOO_SLOW, {}),
        id="watcher-too-slow",
    ),
    pytest.param(
        Row(BusClosed(), UNAVAILABLE, Reason.GATEWAY_SHUTTING_DOWN, {}),
        id="gateway-shutting-down",
    ),
    # a bug in the gateway -> INTERNAL GATEWAY_INTERNAL, generic message
    pytest.param(
        Row(KeyError("secret"), INTERNAL, Reason.GATEWAY_INTERNAL, {}),
        id="gateway-bug",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_error_table_row(row: Row) -> None:
    if row.operation is not None:  # an upstream answer: classified as the backend does
        assert isinstance(row.error, BackendFailure)
        assert row.error.http_status is not None
        assert row.error.kind is classify(
            row.error.http_status, upstream_code=row.error.upstream_code, operation=row.operation
        )
        assert row.error.login is (row.operation is LOGIN)

    status = to_status(row.error)

    assert status.code == row.code.value[0]
    assert status.code != grpc.StatusCode.OK.value[0]
    assert status.message

    decoded = _decode(list(status.details))
    assert len(decoded.error_infos) == 1
    info = decoded.error_infos[0]
    assert info.domain == DOMAIN == "identity-gateway.whatsapp"
    assert info.reason == row.reason.value
    assert dict(info.metadata) == row.metadata

    if row.bad_request_fields is None:
        assert decoded.bad_requests == []
    else:
        assert len(decoded.bad_requests) == 1
        fields = [v.field for v in decoded.bad_requests[0].field_violations]
        assert fields == row.bad_request_fields
        assert all(v.description for v in decoded.bad_requests[0].field_violations)

    if row.retry_seconds is None:
        assert decoded.retry_infos == []
    else:
        assert len(decoded.retry_infos) == 1
        delay = decoded.retry_infos[0].retry_delay
        assert delay.ToNanoseconds() == int(row.retry_seconds * 1e9)

    assert decoded.others == []


@pytest.mark.parametrize("kind", list(Failure), ids=lambda kind: kind.name)
def test_every_failure_kind_has_a_rule(kind: Failure) -> None:
    assert kind in RULES
    rule = RULES[kind]
    assert rule.reason is not BUG.reason

    status = to_status(BackendFailure(kind))
    assert status.code == rule.code.value[0] != grpc.StatusCode.OK.value[0]
    assert status.message
    decoded = _decode(list(status.details))
    assert [info.reason for info in decoded.error_infos] == [rule.reason.value]
    assert len(decoded.retry_infos) == (1 if rule.retry_info else 0)


UPPER_SNAKE = re.compile(r"\b[A-Z]+(?:_[A-Z]+)+\b")


def _readme_error_table_reasons() -> set[str]:
    """The UPPER_SNAKE reasons in the third column of the README's "## Errors" table."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## Errors")
    reasons: set[str] = set()
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.lstrip().startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3:
            reasons.update(UPPER_SNAKE.findall(cells[2]))  # "`A` / `B`" holds two
    return reasons


def _proto_comment_tokens() -> set[str]:
    """The UPPER_SNAKE words in the comments of the public contract."""
    proto = REPO / "protos" / "whatsapp" / "identity" / "v1" / "identity.proto"
    tokens: set[str] = set()
    for line in proto.read_text(encoding="utf-8").splitlines():
        _, slashes, comment = line.partition("//")
        if slashes:
            tokens.update(UPPER_SNAKE.findall(comment))
    return tokens


def test_every_reason_the_gateway_can_produce_is_listed_in_the_readme() -> None:
    produced = {rule.reason.value for rule in RULES.values()}
    produced |= {reason.value for reason in FIELD_REASONS.values()}
    produced.add(BUG.reason.value)

    # (a) the enum is exactly what the code can produce: no dead reason, none unlisted
    assert produced == {reason.value for reason in Reason}

    # (c) every reason the contract's comments name is a real one. The proto also names gRPC
    # codes (INVALID_ARGUMENT, ...) and the format itself ("a stable UPPER_SNAKE reason").
    grpc_codes = {code.name for code in grpc.StatusCode}
    named = _proto_comment_tokens() - grpc_codes - {"UPPER_SNAKE"}
    assert named, "the proto's comments name no reason: has the parser broken?"
    assert named <= produced, f"the proto names unknown reasons: {sorted(named - produced)}"

    # (b) the README's error table lists every reason, and only those
    listed = _readme_error_table_reasons()
    assert listed == produced, (
        f"missing from the README: {sorted(produced - listed)}; "
        f"listed but never produced: {sorted(listed - produced)}"
    )


def test_hash_mismatch_message_tells_the_caller_to_read_the_identity_again() -> None:
    status = to_status(_answered(409, operation=ACK))
    assert "read the identity again" in status.message


def test_failed_login_message_says_the_gateway_could_not_log_in() -> None:
    error = _answered(401, 1024, operation=LOGIN, title="Password change required")
    assert error.login
    message = to_status(error).message
    assert message.startswith("the gateway could not log in to WhatsApp: ")
    assert "HTTP 401 with code 1024: Password change required" in message


def test_gateway_bug_message_is_generic_and_hides_the_exception() -> None:
    status = to_status(KeyError("secret"))
    assert "secret" not in status.message
    assert "KeyError" not in status.message
    assert "Traceback" not in status.message


def test_gateway_bug_with_token_in_message_does_not_leak_it() -> None:
    status = to_status(RuntimeError("Authorization: Bearer eyJhbGciOi.secret.token"))
    assert "eyJ" not in status.message
    assert "Bearer" not in status.message


DETAILS = "contact 16315551234 unknown; internal trace id 7f3a9c"


@pytest.mark.parametrize(
    ("http_status", "operation"),
    [
        pytest.param(404, GET, id="not-found"),
        pytest.param(400, GET, id="rejected-request"),
        pytest.param(400, ACK, id="hash-mismatch"),
        pytest.param(503, GET, id="unavailable"),
        pytest.param(401, LOGIN, id="failed-login"),
    ],
)
def test_message_never_contains_the_upstream_details_text(
    http_status: int, operation: Operation
) -> None:
    body = _body(1009, "Parameter value is not valid", DETAILS)
    error = _failure(Answer(http_status, httpx.Headers(), body), operation)
    assert error.upstream_code == 1009  # the body was read
    status = to_status(error)
    assert DETAILS not in status.message
    assert "7f3a9c" not in status.message
    assert "16315551234" not in status.message


def test_whatsapp_title_may_appear_in_the_message() -> None:
    error = _answered(422, 1025, operation=GET, title="Invalid request")
    assert "Invalid request" in to_status(error).message


# A lone surrogate makes the whole JSON body unreadable (the title never arrives), so the
# hostile title that does arrive is the one without it; both must give a clean message.
READABLE_HOSTILE_TITLE = "Bad\x1b[31m\r\nX-Injected: yes\x00\u202eevil" + "x" * 10_000
UNREADABLE_HOSTILE_TITLE = "Bad\x1b[31m\r\nX-Injected: yes\x00\u202eevil\ud800" + "x" * 10_000


@pytest.mark.parametrize(
    ("http_status", "operation"),
    [
        pytest.param(400, GET, id="rejected-request"),
        pytest.param(500, GET, id="internal-error"),
        pytest.param(418, ACK, id="other-status"),
        pytest.param(503, GET, id="unavailable"),
    ],
)
@pytest.mark.parametrize(
    "title",
    [
        pytest.param(READABLE_HOSTILE_TITLE, id="readable"),
        pytest.param(UNREADABLE_HOSTILE_TITLE, id="lone-surrogate"),
    ],
)
def test_whatsapp_title_is_made_printable_and_bounded(
    http_status: int, operation: Operation, title: str
) -> None:
    error = _answered(http_status, 1000, operation=operation, title=title)
    message = to_status(error).message
    if title is READABLE_HOSTILE_TITLE:
        assert "X-Injected: yes" in message  # the title did reach the message, cleaned
    assert all(" " <= character <= "~" for character in message), repr(message[:200])
    assert len(message) < 1_000
    for control in ("\x1b", "\r", "\n", "\x00", "\u202e", "\ud800"):
        assert control not in message


def test_status_serialises_for_grpc_status_details_bin() -> None:
    error = _answered(429, 1015, operation=GET, title="Too many requests\n" * 50)
    status = to_status(error)
    assert status.SerializeToString()
