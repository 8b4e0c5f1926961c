"""gateway.serving.status.to_status against every row of the spec 4.5 error table.

Each case is named for its row (and, where a row lists several outcomes, for the outcome).
The WhatsApp code cases use an HTTP status that would map elsewhere on its own, so that
they pin the code table rather than pass by way of the status table.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway.serving.status import (
    DOMAIN,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    LoginFailed,
    Operation,
    Reason,
    UpstreamBadResponse,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamTransportError,
    to_status,
)
from gateway.backends.onprem.parse import parse_error_body

GET = Operation.GET
ACK = Operation.ACKNOWLEDGE
LOGIN = Operation.LOGIN


@dataclasses.dataclass(frozen=True)
class Row:
    """One expected outcome of spec 4.5."""

    error: BaseException
    operation: Operation
    code: grpc.StatusCode
    reason: Reason
    metadata: dict[str, str]
    bad_request_fields: list[str] | None = None  # None: no BadRequest detail
    retry_seconds: float | None = None  # None: no RetryInfo detail


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


def _status(
    status: int, code: int | None = None, *, retry_after: float | None = None
) -> UpstreamStatusError:
    return UpstreamStatusError(status, whatsapp_code=code, retry_after=retry_after)


def _meta(status: int, code: int | None = None) -> dict[str, str]:
    metadata = {"upstreamStatus": str(status)}
    if code is not None:
        metadata["whatsappCode"] = str(code)
    return metadata


INTERNAL = grpc.StatusCode.INTERNAL
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

ROWS = [
    # invalid request (4.2) -> INVALID_ARGUMENT, BadRequest
    pytest.param(
        Row(
            InvalidArgument(Reason.INVALID_WA_ID, [FieldViolation("wa_id", "6 to 15 digits")]),
            GET,
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_WA_ID,
            {},
            bad_request_fields=["wa_id"],
        ),
        id="invalid-request-wa-id",
    ),
    pytest.param(
        Row(
            InvalidArgument(Reason.INVALID_HASH, [FieldViolation("hash", "base64")]),
            ACK,
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_HASH,
            {},
            bad_request_fields=["hash"],
        ),
        id="invalid-request-hash",
    ),
    # 404 (e.g. 1006) -> NOT_FOUND
    pytest.param(
        Row(
            _status(404, 1006),
            GET,
            grpc.StatusCode.NOT_FOUND,
            Reason.CONTACT_NOT_FOUND,
            _meta(404, 1006),
        ),
        id="404-1006-get",
    ),
    pytest.param(
        Row(_status(404), GET, grpc.StatusCode.NOT_FOUND, Reason.CONTACT_NOT_FOUND, _meta(404)),
        id="404-without-body-get",
    ),
    pytest.param(
        Row(
            _status(404, 1006),
            ACK,
            grpc.StatusCode.NOT_FOUND,
            Reason.CONTACT_NOT_FOUND,
            _meta(404, 1006),
        ),
        id="404-1006-acknowledge",
    ),
    # acknowledge: 409, or 400 with 1009 -> FAILED_PRECONDITION HASH_MISMATCH
    pytest.param(
        Row(
            _status(409), ACK, grpc.StatusCode.FAILED_PRECONDITION, Reason.HASH_MISMATCH, _meta(409)
        ),
        id="acknowledge-409-hash-mismatch",
    ),
    pytest.param(
        Row(
            _status(400, 1009),
            ACK,
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.HASH_MISMATCH,
            _meta(400, 1009),
        ),
        id="acknowledge-400-1009-hash-mismatch",
    ),
    # other 400 / 422 -> INTERNAL UPSTREAM_REJECTED_REQUEST
    pytest.param(
        Row(_status(400, 1009), GET, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST, _meta(400, 1009)),
        id="get-400-1009-is-rejected-request-not-hash-mismatch",
    ),
    pytest.param(
        Row(_status(400), ACK, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST, _meta(400)),
        id="acknowledge-400-without-1009-is-rejected-request",
    ),
    pytest.param(
        Row(_status(400, 1008), GET, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST, _meta(400, 1008)),
        id="400-rejected-request",
    ),
    pytest.param(
        Row(_status(422), GET, INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST, _meta(422)),
        id="422-rejected-request",
    ),
    pytest.param(
        Row(_status(409), GET, INTERNAL, Reason.UPSTREAM_ERROR, _meta(409)),
        id="get-409-is-not-hash-mismatch",
    ),
    # 401 after re-login, 403, 1005, failed login, 1024, 1031 -> INTERNAL UPSTREAM_AUTH_FAILED
    pytest.param(
        Row(_status(401), GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(401)),
        id="401-auth-failed",
    ),
    pytest.param(
        Row(_status(403), ACK, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(403)),
        id="403-auth-failed",
    ),
    pytest.param(
        Row(_status(400, 1005), GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(400, 1005)),
        id="code-1005-auth-failed",
    ),
    pytest.param(
        Row(LoginFailed(401), LOGIN, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(401)),
        id="failed-login-401-auth-failed",
    ),
    pytest.param(
        Row(LoginFailed(401), GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(401)),
        id="failed-login-during-get-auth-failed",
    ),
    pytest.param(
        Row(LoginFailed(404), GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(404)),
        id="failed-login-404-is-auth-failed-not-contact-not-found",
    ),
    pytest.param(
        Row(
            LoginFailed(401, whatsapp_code=1024, title="Password change required"),
            LOGIN,
            INTERNAL,
            Reason.UPSTREAM_AUTH_FAILED,
            _meta(401, 1024),
        ),
        id="failed-login-1024-auth-failed",
    ),
    pytest.param(
        Row(_status(400, 1024), LOGIN, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(400, 1024)),
        id="code-1024-auth-failed",
    ),
    pytest.param(
        Row(_status(400, 1031), GET, INTERNAL, Reason.UPSTREAM_AUTH_FAILED, _meta(400, 1031)),
        id="code-1031-auth-failed",
    ),
    # 429 / 1015 -> RESOURCE_EXHAUSTED, RetryInfo (Retry-After, else 1 s)
    pytest.param(
        Row(
            _status(429),
            GET,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            _meta(429),
            retry_seconds=1.0,
        ),
        id="429-rate-limited-default-retry",
    ),
    pytest.param(
        Row(
            _status(429, retry_after=30.0),
            GET,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            _meta(429),
            retry_seconds=30.0,
        ),
        id="429-rate-limited-honours-retry-after",
    ),
    pytest.param(
        Row(
            _status(429, retry_after=2.5),
            ACK,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            _meta(429),
            retry_seconds=2.5,
        ),
        id="429-rate-limited-fractional-retry-after",
    ),
    pytest.param(
        Row(
            _status(400, 1015),
            GET,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            _meta(400, 1015),
            retry_seconds=1.0,
        ),
        id="code-1015-rate-limited",
    ),
    pytest.param(
        Row(
            LoginFailed(429, retry_after=7.0),
            LOGIN,
            EXHAUSTED,
            Reason.UPSTREAM_RATE_LIMITED,
            _meta(429),
            retry_seconds=7.0,
        ),
        id="login-429-rate-limited",
    ),
    # 502, 503, 504 / 1011, 1016, 1017, 1018 -> UNAVAILABLE, RetryInfo
    pytest.param(
        Row(
            _status(502),
            GET,
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            _meta(502),
            retry_seconds=1.0,
        ),
        id="502-unavailable",
    ),
    pytest.param(
        Row(
            _status(503),
            GET,
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            _meta(503),
            retry_seconds=1.0,
        ),
        id="503-unavailable",
    ),
    pytest.param(
        Row(
            _status(503, retry_after=10.0),
            ACK,
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            _meta(503),
            retry_seconds=10.0,
        ),
        id="503-unavailable-honours-retry-after",
    ),
    pytest.param(
        Row(
            _status(504),
            GET,
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            _meta(504),
            retry_seconds=1.0,
        ),
        id="504-unavailable",
    ),
    *[
        pytest.param(
            Row(
                _status(500, code),
                GET,
                UNAVAILABLE,
                Reason.UPSTREAM_UNAVAILABLE,
                _meta(500, code),
                retry_seconds=1.0,
            ),
            id=f"code-{code}-unavailable",
        )
        for code in (1011, 1016, 1017, 1018)
    ],
    # connection refused/reset, TLS failure, DNS failure -> UNAVAILABLE, no RetryInfo
    pytest.param(
        Row(
            UpstreamTransportError("connection failed (Connection refused)"),
            GET,
            UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            {},
        ),
        id="transport-error-unavailable-without-retry-info",
    ),
    # --upstream-timeout elapsed -> UNAVAILABLE UPSTREAM_TIMEOUT
    pytest.param(
        Row(UpstreamTimeout("no answer"), GET, UNAVAILABLE, Reason.UPSTREAM_TIMEOUT, {}),
        id="upstream-timeout",
    ),
    # caller's deadline elapsed -> DEADLINE_EXCEEDED
    pytest.param(
        Row(
            DeadlineExceeded(), ACK, grpc.StatusCode.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED, {}
        ),
        id="caller-deadline-exceeded",
    ),
    # 500 / 1000, 1014, 1023 and other 5xx -> INTERNAL UPSTREAM_INTERNAL_ERROR
    pytest.param(
        Row(_status(500), GET, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR, _meta(500)),
        id="500-internal-error",
    ),
    *[
        pytest.param(
            Row(
                _status(400, code), GET, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR, _meta(400, code)
            ),
            id=f"code-{code}-internal-error",
        )
        for code in (1000, 1014, 1023)
    ],
    pytest.param(
        Row(_status(501), GET, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR, _meta(501)),
        id="other-5xx-501-internal-error",
    ),
    pytest.param(
        Row(_status(599), ACK, INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR, _meta(599)),
        id="other-5xx-599-internal-error",
    ),
    # 2xx that cannot be parsed -> INTERNAL UPSTREAM_BAD_RESPONSE
    pytest.param(
        Row(
            UpstreamBadResponse("body is not JSON"), GET, INTERNAL, Reason.UPSTREAM_BAD_RESPONSE, {}
        ),
        id="bad-2xx-response",
    ),
    # any other status -> INTERNAL UPSTREAM_ERROR
    pytest.param(
        Row(_status(302), GET, INTERNAL, Reason.UPSTREAM_ERROR, _meta(302)),
        id="other-status-302-upstream-error",
    ),
    pytest.param(
        Row(_status(418), ACK, INTERNAL, Reason.UPSTREAM_ERROR, _meta(418)),
        id="other-status-418-upstream-error",
    ),
    pytest.param(
        Row(_status(418, 1013), GET, INTERNAL, Reason.UPSTREAM_ERROR, _meta(418, 1013)),
        id="other-status-with-unmapped-code-upstream-error",
    ),
    # a bug in the gateway -> INTERNAL GATEWAY_INTERNAL, generic message
    pytest.param(
        Row(KeyError("secret"), GET, INTERNAL, Reason.GATEWAY_INTERNAL, {}),
        id="gateway-bug",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_error_table_row(row: Row) -> None:
    status = to_status(row.error, row.operation)

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


def test_hash_mismatch_message_tells_the_caller_to_read_the_identity_again() -> None:
    status = to_status(_status(409), ACK)
    assert "read the identity again" in status.message


def test_gateway_bug_message_is_generic_and_hides_the_exception() -> None:
    status = to_status(KeyError("secret"), GET)
    assert "secret" not in status.message
    assert "KeyError" not in status.message
    assert "Traceback" not in status.message


def test_gateway_bug_with_token_in_message_does_not_leak_it() -> None:
    status = to_status(RuntimeError("Authorization: Bearer eyJhbGciOi.secret.token"), ACK)
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
    ],
)
def test_message_never_contains_the_upstream_details_text(
    http_status: int, operation: Operation
) -> None:
    body = json.dumps(
        {"errors": [{"code": 1009, "title": "Parameter value is not valid", "details": DETAILS}]}
    ).encode()
    envelope = parse_error_body(body)
    error = UpstreamStatusError(http_status, whatsapp_code=envelope.code, title=envelope.title)
    status = to_status(error, operation)
    assert DETAILS not in status.message
    assert "7f3a9c" not in status.message
    assert "16315551234" not in status.message


def test_whatsapp_title_may_appear_in_the_message() -> None:
    error = UpstreamStatusError(422, whatsapp_code=1025, title="Invalid request")
    assert "Invalid request" in to_status(error, GET).message


HOSTILE_TITLE = "Bad\x1b[31m\r\nX-Injected: yes\x00\u202eevil\ud800" + "x" * 10_000


@pytest.mark.parametrize(
    ("http_status", "operation"),
    [
        pytest.param(400, GET, id="rejected-request"),
        pytest.param(500, GET, id="internal-error"),
        pytest.param(418, ACK, id="other-status"),
        pytest.param(503, GET, id="unavailable"),
    ],
)
def test_whatsapp_title_is_made_printable_and_bounded(
    http_status: int, operation: Operation
) -> None:
    error = UpstreamStatusError(http_status, whatsapp_code=1000, title=HOSTILE_TITLE)
    message = to_status(error, operation).message
    assert all(" " <= character <= "~" for character in message), repr(message[:200])
    assert len(message) < 1_000
    for control in ("\x1b", "\r", "\n", "\x00", "\u202e", "\ud800"):
        assert control not in message


def test_status_serialises_for_grpc_status_details_bin() -> None:
    error = UpstreamStatusError(429, whatsapp_code=1015, title="Too many requests\n" * 50)
    status = to_status(error, GET)
    assert status.SerializeToString()
