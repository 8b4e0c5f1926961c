"""The Infobip backend over httpx.MockTransport: requests sent, answers read, failures typed and
carried through the one status table to what a caller hears."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backends.http import HttpUpstream
from gateway.backends.infobip import InfobipBackend
from gateway.backends.infobip.client import DEFAULT_BURST, DEFAULT_RATE_LIMIT, UPSTREAM_NAME
from gateway.backends.infobip.parse import (
    BadAnswer,
    check_acknowledge_body,
    parse_error_text,
    parse_identity,
)
from gateway.backends.safeguards import RetryPolicy, Safeguards, TokenBucket
from gateway.deadline import NO_DEADLINE, Deadline
from gateway.failures import BackendFailure, Failure
from gateway.serving.status import DOMAIN, Reason, to_status

BASE_URL = "https://xyz.api.infobip.test"
SENDER = "447796344125"
WA_ID = "16315551234"
HASH = "eU2Fdi4EMUw="
API_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0-8a7b6c5d-1234-5678-9abc-def012345678"
IDENTITY_PATH = f"/whatsapp/1/{SENDER}/contacts/{WA_ID}/identity"
# The documented 200 answer; 2022-02-18T08:12:26.422Z is 1645171946422 ms after the epoch.
IDENTITY_BODY = {"acknowledged": True, "hash": HASH, "createdAt": "2022-02-18T08:12:26.422Z"}
CREATED_MS = 1645171946422

Reply = Callable[[httpx.Request], httpx.Response]


def json_reply(status: int, body: object, headers: dict[str, str] | None = None) -> Reply:
    """A reply of ``status`` with ``body`` as JSON (bytes are sent as they are)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return reply


def infobip_error(text: object, message_id: str = "BAD_REQUEST") -> dict[str, object]:
    """Infobip's documented error envelope."""
    return {"requestError": {"serviceException": {"messageId": message_id, "text": text}}}


class Upstream:
    """Records every request and answers each with ``reply`` (the documented identity)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.reply: Reply = json_reply(200, IDENTITY_BODY)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply(request)


def quick_retries() -> Safeguards:
    """Safeguards retrying once, at once: the attempt count shows what was retried."""
    return Safeguards(retry=RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.001))


def make_backend(
    upstream: Upstream, *, safeguards: Safeguards | None = None, base_url: str = BASE_URL
) -> InfobipBackend:
    http = HttpUpstream(
        httpx.MockTransport(upstream),
        base_url=base_url,
        request_timeout=5.0,
        name=UPSTREAM_NAME,
        secrets=[API_KEY],
    )
    return InfobipBackend(
        http, sender=SENDER, api_key=API_KEY, safeguards=safeguards or Safeguards()
    )


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


async def read(upstream: Upstream, safeguards: Safeguards | None = None) -> BackendFailure:
    """The failure a GET ends in (the test fails if it succeeds)."""
    async with make_backend(upstream, safeguards=safeguards) as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    return raised.value


async def acknowledge(upstream: Upstream, safeguards: Safeguards | None = None) -> BackendFailure:
    """The failure a PUT ends in (the test fails if it succeeds)."""
    async with make_backend(upstream, safeguards=safeguards) as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.acknowledge(WA_ID, HASH, deadline=NO_DEADLINE)
    return raised.value


@dataclasses.dataclass
class Heard:
    """What a caller hears of a failure: the status and its decoded details."""

    status: status_pb2.Status
    info: error_details_pb2.ErrorInfo
    retry_delay: float | None


def heard(failure: BackendFailure) -> Heard:
    status = to_status(failure)
    infos: list[error_details_pb2.ErrorInfo] = []
    delays: list[float] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            infos.append(error_details_pb2.ErrorInfo())
            detail.Unpack(infos[-1])
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delays.append(retry.retry_delay.ToNanoseconds() / 1e9)
    [info] = infos
    assert info.domain == DOMAIN
    assert len(delays) <= 1
    return Heard(status, info, delays[0] if delays else None)


# ---------------------------------------------------------------------------- request shape


async def test_get_identity_reads_the_senders_path_with_the_app_key(upstream: Upstream) -> None:
    async with make_backend(upstream, base_url=BASE_URL + "/prefix/") as backend:
        identity = await backend.get_identity(WA_ID, deadline=NO_DEADLINE)

    assert (identity.hash, identity.create_time_ms, identity.acknowledged) == (
        HASH,
        CREATED_MS,
        True,
    )
    [request] = upstream.requests
    assert request.method == "GET"
    assert str(request.url) == f"{BASE_URL}/prefix{IDENTITY_PATH}"
    assert request.headers["authorization"] == f"App {API_KEY}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("whatsapp-identity-gateway/")
    assert request.content == b""
    assert "content-type" not in request.headers


async def test_acknowledge_puts_the_hash_as_json_to_the_same_path(upstream: Upstream) -> None:
    upstream.reply = json_reply(204, b"")
    async with make_backend(upstream) as backend:
        status = await backend.acknowledge(WA_ID, HASH, deadline=NO_DEADLINE)

    assert status == 204
    [request] = upstream.requests
    assert (request.method, request.url.path) == ("PUT", IDENTITY_PATH)
    assert json.loads(request.content) == {"hash": HASH}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"App {API_KEY}"
    assert request.headers["accept"] == "application/json"


async def test_trace_headers_are_forwarded_on_both_calls(upstream: Upstream) -> None:
    trace = {"x-request-id": "req-7", "traceparent": "00-4bf92f-00f067-01"}
    async with make_backend(upstream) as backend:
        await backend.get_identity(WA_ID, deadline=NO_DEADLINE, trace=trace)
        upstream.reply = json_reply(204, b"")
        await backend.acknowledge(WA_ID, HASH, deadline=NO_DEADLINE, trace=trace)

    assert [r.method for r in upstream.requests] == ["GET", "PUT"]
    for request in upstream.requests:
        for name, value in trace.items():
            assert request.headers[name] == value


async def test_every_request_waits_for_its_turn_in_the_pace(upstream: Upstream) -> None:
    # One token, refilled once in ~17 minutes: the second call cannot be served in time.
    guards = Safeguards(bucket=TokenBucket(rate=0.001, burst=1))
    async with make_backend(upstream, safeguards=guards) as backend:
        await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=Deadline.after(0.05))

    assert raised.value.kind is Failure.PACED
    assert len(upstream.requests) == 1


def test_the_documented_rate_limit_is_exported_for_the_wiring() -> None:
    assert (DEFAULT_RATE_LIMIT, DEFAULT_BURST) == (10.0, 10)


@pytest.mark.parametrize(
    ("sender", "api_key"),
    [
        ("+447796344125", API_KEY),
        ("4477/../login", API_KEY),
        ("", API_KEY),
        ("44779634412\uff15", API_KEY),  # a fullwidth digit
        (SENDER, ""),
    ],
)
def test_a_sender_that_is_not_digits_or_an_empty_key_is_refused_at_start_up(
    sender: str, api_key: str
) -> None:
    http = HttpUpstream(httpx.MockTransport(Upstream()), base_url=BASE_URL, request_timeout=1.0)
    with pytest.raises(ValueError, match=r"sender|api_key"):
        InfobipBackend(http, sender=sender, api_key=api_key)


# ---------------------------------------------------------------------------- GET answers


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, (HASH, CREATED_MS, True)),
        ({"createdAt": "2022-02-18T09:12:26.422+01:00"}, (HASH, CREATED_MS, True)),
        ({"createdAt": "2022-02-18T09:12:26.422+0100"}, (HASH, CREATED_MS, True)),
        ({"createdAt": "2022-02-18T02:42:26.422-05:30"}, (HASH, CREATED_MS, True)),
        ({"createdAt": "2022-02-18T08:12:26Z"}, (HASH, CREATED_MS - 422, True)),
        ({"createdAt": "2022-02-18T09:12:26+01:00"}, (HASH, CREATED_MS - 422, True)),
        ({"createdAt": "2022-02-18T08:12:26.422999Z"}, (HASH, CREATED_MS, True)),
        ({"createdAt": "2022-02-18T08:12:26.4Z"}, (HASH, CREATED_MS - 22, True)),
        # No zone at all: taken as UTC (documented in parse_created_at).
        ({"createdAt": "2022-02-18T08:12:26.422"}, (HASH, CREATED_MS, True)),
        ({"createdAt": "2022-02-18 08:12:26.422z"}, (HASH, CREATED_MS, True)),
        ({"createdAt": "1970-01-01T00:00:00Z"}, (HASH, 0, True)),
        ({"acknowledged": False}, (HASH, CREATED_MS, False)),
        ({"acknowledged": "true"}, (HASH, CREATED_MS, True)),
        ({"acknowledged": "false"}, (HASH, CREATED_MS, False)),
        ({"hash": "UKD6Y/5SqDU=", "displayName": "ignored"}, ("UKD6Y/5SqDU=", CREATED_MS, True)),
    ],
)
async def test_every_documented_variant_of_the_identity_is_read(
    upstream: Upstream, fields: dict[str, object], expected: tuple[str, int, bool]
) -> None:
    upstream.reply = json_reply(200, {**IDENTITY_BODY, **fields})
    async with make_backend(upstream) as backend:
        identity = await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert (identity.hash, identity.create_time_ms, identity.acknowledged) == expected


def _without(field: str) -> dict[str, object]:
    return {name: value for name, value in IDENTITY_BODY.items() if name != field}


HOSTILE_BODIES: list[tuple[str, bytes | dict[str, object]]] = [
    ("empty", b""),
    ("html", b"<html><body>Bad Gateway</body></html>"),
    ("truncated", b'{"acknowledged": true, "hash": "eU2F'),
    ("not utf-8", b'{"hash": "\xff\xfe"}'),
    ("array", b"[]"),
    ("string", b'"eU2Fdi4EMUw="'),
    ("null", b"null"),
    ("number", b"42"),
    ("nan", b'{"acknowledged": true, "hash": "eU2Fdi4EMUw=", "createdAt": NaN}'),
    ("infinite number", b'{"acknowledged": true, "hash": "x", "createdAt": 1e400}'),
    ("deep nesting", b"[" * 5000 + b"]" * 5000),
    ("lone surrogate", b'{"acknowledged": true, "hash": "\\ud800", "createdAt": "2022-02-18"}'),
    ("error envelope", infobip_error("Bad request")),
    ("no hash", _without("hash")),
    ("no createdAt", _without("createdAt")),
    ("no acknowledged", _without("acknowledged")),
    ("hash null", {**IDENTITY_BODY, "hash": None}),
    ("hash number", {**IDENTITY_BODY, "hash": 12345}),
    ("hash empty", {**IDENTITY_BODY, "hash": ""}),
    ("hash too long", {**IDENTITY_BODY, "hash": "A" * 513}),
    ("hash control character", {**IDENTITY_BODY, "hash": "eU2F\u0007di4EMUw="}),
    ("hash object", {**IDENTITY_BODY, "hash": {"value": HASH}}),
    ("createdAt epoch ms", {**IDENTITY_BODY, "createdAt": CREATED_MS}),
    ("createdAt huge number", {**IDENTITY_BODY, "createdAt": 10**30}),
    ("createdAt boolean", {**IDENTITY_BODY, "createdAt": True}),
    ("createdAt not a date", {**IDENTITY_BODY, "createdAt": "yesterday"}),
    ("createdAt date only", {**IDENTITY_BODY, "createdAt": "2022-02-18"}),
    ("createdAt week date", {**IDENTITY_BODY, "createdAt": "2022-W07-5T08:12:26Z"}),
    ("createdAt year 0", {**IDENTITY_BODY, "createdAt": "0000-01-01T00:00:00Z"}),
    ("createdAt year 10000", {**IDENTITY_BODY, "createdAt": "10000-01-01T00:00:00Z"}),
    ("createdAt past 9999", {**IDENTITY_BODY, "createdAt": "9999-12-31T23:59:59-01:00"}),
    ("createdAt before 1970", {**IDENTITY_BODY, "createdAt": "1969-12-31T23:59:59.999Z"}),
    ("createdAt month 13", {**IDENTITY_BODY, "createdAt": "2022-13-18T08:12:26Z"}),
    ("createdAt leap second", {**IDENTITY_BODY, "createdAt": "2022-02-18T08:12:60Z"}),
    ("createdAt offset of a day", {**IDENTITY_BODY, "createdAt": "2022-02-18T08:12:26+24:00"}),
    ("createdAt offset minutes", {**IDENTITY_BODY, "createdAt": "2022-02-18T08:12:26+01:60"}),
    ("createdAt other digits", {**IDENTITY_BODY, "createdAt": "٢٠٢٢-02-18T08:12:26Z"}),
    ("createdAt very long", {**IDENTITY_BODY, "createdAt": "2022-02-18T08:12:26" + "0" * 10**5}),
    ("acknowledged number", {**IDENTITY_BODY, "acknowledged": 1}),
    ("acknowledged null", {**IDENTITY_BODY, "acknowledged": None}),
    ("acknowledged word", {**IDENTITY_BODY, "acknowledged": "yes"}),
    ("acknowledged list", {**IDENTITY_BODY, "acknowledged": ["true"]}),
]


@pytest.mark.parametrize(("case", "body"), HOSTILE_BODIES, ids=[c for c, _ in HOSTILE_BODIES])
async def test_a_hostile_identity_answer_is_a_bad_answer_keeping_the_status(
    upstream: Upstream, case: str, body: bytes | dict[str, object]
) -> None:
    upstream.reply = json_reply(200, body)
    failure = await read(upstream)

    assert (failure.kind, failure.http_status) == (Failure.BAD_ANSWER, 200)
    assert failure.message.startswith(f"{UPSTREAM_NAME} gave a malformed answer: ")
    caller = heard(failure)
    assert caller.status.code == grpc.StatusCode.INTERNAL.value[0]
    assert caller.info.reason == Reason.UPSTREAM_BAD_RESPONSE
    assert dict(caller.info.metadata) == {"upstreamStatus": "200"}
    assert len(upstream.requests) == 1  # a broken answer is not retried


async def test_a_get_success_other_than_200_is_a_bad_answer(upstream: Upstream) -> None:
    upstream.reply = json_reply(204, b"")
    failure = await read(upstream)
    assert (failure.kind, failure.http_status) == (Failure.BAD_ANSWER, 204)
    assert "unexpected success status 204" in failure.message


# Property: whatever the body, the parsers end in data or BadAnswer, never another exception.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_near_misses = st.fixed_dictionaries(
    {},
    optional={
        "hash": _json | st.just(HASH),
        "acknowledged": _json | st.sampled_from(["true", "false"]),
        "createdAt": _json
        | st.datetimes(timezones=st.timezones()).map(lambda m: m.isoformat())
        | st.datetimes().map(lambda m: m.isoformat(sep=" ", timespec="milliseconds")),
        "requestError": _json,
    },
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.binary(max_size=64)
    | (_json | _near_misses).map(lambda document: json.dumps(document).encode())
)
def test_the_parsers_raise_nothing_but_bad_answer(body: bytes) -> None:
    try:
        identity = parse_identity(body)
    except BadAnswer:
        pass
    else:
        assert 0 <= identity.create_time_ms <= 253402300799999
    with contextlib.suppress(BadAnswer):
        check_acknowledge_body(body)
    text = parse_error_text(body)
    assert text is None or isinstance(text, str)


def test_created_at_offsets_agree_with_datetime() -> None:
    moment = dt.datetime(2031, 7, 4, 23, 30, 5, 123000, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    body = json.dumps({**IDENTITY_BODY, "createdAt": moment.isoformat(timespec="milliseconds")})
    expected = round(moment.timestamp() * 1000)
    assert parse_identity(body.encode()).create_time_ms == expected


# ---------------------------------------------------------------------------- PUT answers


@pytest.mark.parametrize(
    ("status", "body"),
    [(204, b""), (200, b""), (200, b"null"), (200, b"{}"), (200, b" \r\n"), (200, b'{"a": 1}')],
)
async def test_an_acknowledgement_succeeds_with_204_or_200(
    upstream: Upstream, status: int, body: bytes
) -> None:
    upstream.reply = json_reply(status, body)
    async with make_backend(upstream) as backend:
        assert await backend.acknowledge(WA_ID, HASH, deadline=NO_DEADLINE) == status


@pytest.mark.parametrize(
    "body", [b"[]", b"true", b"<html></html>", json.dumps(infobip_error("Bad request")).encode()]
)
async def test_an_acknowledgement_with_a_broken_body_is_a_bad_answer(
    upstream: Upstream, body: bytes
) -> None:
    upstream.reply = json_reply(200, body)
    failure = await acknowledge(upstream)
    assert (failure.kind, failure.http_status) == (Failure.BAD_ANSWER, 200)


# ---------------------------------------------------------------------------- error answers


@dataclasses.dataclass(frozen=True)
class Row:
    """One error answer, the kind it is, and what a caller then hears."""

    call: str  # "GET" or "PUT"
    status: int
    kind: Failure
    code: grpc.StatusCode
    reason: Reason
    retry_delay: float | None = None  # None: no RetryInfo
    retry_after: str | None = None
    attempts: int = 1  # requests sent under quick_retries()


_C = grpc.StatusCode
ROWS = [
    Row("GET", 404, Failure.NOT_FOUND, _C.NOT_FOUND, Reason.CONTACT_NOT_FOUND),
    Row("PUT", 404, Failure.NOT_FOUND, _C.NOT_FOUND, Reason.CONTACT_NOT_FOUND),
    Row("PUT", 409, Failure.HASH_MISMATCH, _C.FAILED_PRECONDITION, Reason.HASH_MISMATCH),
    Row("GET", 409, Failure.UNEXPECTED, _C.INTERNAL, Reason.UPSTREAM_ERROR),
    Row("GET", 400, Failure.REJECTED, _C.INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
    Row("PUT", 400, Failure.REJECTED, _C.INTERNAL, Reason.UPSTREAM_REJECTED_REQUEST),
    Row("GET", 401, Failure.AUTH, _C.INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
    Row("PUT", 401, Failure.AUTH, _C.INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
    Row("GET", 403, Failure.AUTH, _C.INTERNAL, Reason.UPSTREAM_AUTH_FAILED),
    Row(
        "GET",
        429,
        Failure.RATE_LIMITED,
        _C.RESOURCE_EXHAUSTED,
        Reason.UPSTREAM_RATE_LIMITED,
        retry_delay=3.0,
        retry_after="3",
    ),
    Row(
        "PUT",
        429,
        Failure.RATE_LIMITED,
        _C.RESOURCE_EXHAUSTED,
        Reason.UPSTREAM_RATE_LIMITED,
        retry_delay=3.0,
        retry_after="3",
    ),
    Row("GET", 500, Failure.UPSTREAM_INTERNAL, _C.INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
    Row("PUT", 500, Failure.UPSTREAM_INTERNAL, _C.INTERNAL, Reason.UPSTREAM_INTERNAL_ERROR),
    Row(
        "GET",
        503,
        Failure.UNAVAILABLE,
        _C.UNAVAILABLE,
        Reason.UPSTREAM_UNAVAILABLE,
        retry_delay=1.0,
        attempts=2,
    ),
    Row(
        "PUT",
        503,
        Failure.UNAVAILABLE,
        _C.UNAVAILABLE,
        Reason.UPSTREAM_UNAVAILABLE,
        retry_delay=1.0,
        attempts=2,
    ),
    Row("GET", 418, Failure.UNEXPECTED, _C.INTERNAL, Reason.UPSTREAM_ERROR),
    Row("PUT", 418, Failure.UNEXPECTED, _C.INTERNAL, Reason.UPSTREAM_ERROR),
]


def _row_ids() -> Iterator[str]:
    for row in ROWS:
        yield f"{row.call}-{row.status}"


@pytest.mark.parametrize("row", ROWS, ids=list(_row_ids()))
async def test_an_error_answer_is_classified_and_heard_through_the_status_table(
    upstream: Upstream, row: Row
) -> None:
    headers = {"Retry-After": row.retry_after} if row.retry_after else None
    upstream.reply = json_reply(row.status, infobip_error("Something failed"), headers)
    call = read if row.call == "GET" else acknowledge
    failure = await call(upstream, safeguards=quick_retries())

    assert failure.kind is row.kind
    assert (failure.http_status, failure.upstream_code) == (row.status, None)
    assert failure.retry_after == (float(row.retry_after) if row.retry_after else None)
    assert failure.message == f"Infobip API answered HTTP {row.status}: Something failed"
    assert [r.method for r in upstream.requests] == [row.call] * row.attempts
    caller = heard(failure)
    assert caller.status.code == row.code.value[0]
    assert caller.info.reason == row.reason
    assert dict(caller.info.metadata) == {"upstreamStatus": str(row.status)}
    assert caller.retry_delay == row.retry_delay


async def test_the_service_exception_text_reaches_the_caller(upstream: Upstream) -> None:
    upstream.reply = json_reply(400, infobip_error("Invalid hash format", "INVALID_ARGUMENT"))
    failure = await acknowledge(upstream)

    assert failure.message == "Infobip API answered HTTP 400: Invalid hash format"
    assert to_status(failure).message == failure.message


async def test_a_secret_echoed_in_the_error_text_is_redacted(upstream: Upstream) -> None:
    text = f"Invalid login details for App {API_KEY}; key {API_KEY[:20]} unknown"
    upstream.reply = json_reply(401, infobip_error(text, "UNAUTHORIZED"))
    failure = await read(upstream)

    assert failure.kind is Failure.AUTH
    assert failure.message.startswith(
        "Infobip API answered HTTP 401: Invalid login details for App [redacted]"
    )
    for shown in (failure.message, str(failure), to_status(failure).message):
        assert API_KEY not in shown
        assert "[redacted]" in shown


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "Infobip API answered HTTP 400"),
        (b"<html><h1>400 Bad Request</h1></html>", "Infobip API answered HTTP 400"),
        (b'{"errors": [{"code": 1009, "title": "x"}]}', "Infobip API answered HTTP 400"),
        (b'{"requestError": "Bad request"}', "Infobip API answered HTTP 400"),
        (json.dumps(infobip_error(None)).encode(), "Infobip API answered HTTP 400"),
        (json.dumps(infobip_error(["x"])).encode(), "Infobip API answered HTTP 400"),
        (json.dumps(infobip_error("")).encode(), "Infobip API answered HTTP 400"),
        (
            b'{"requestError": {"policyException": {"messageId": "X", "text": "Not allowed"}}}',
            "Infobip API answered HTTP 400: Not allowed",
        ),
        (
            json.dumps(infobip_error("tab\there \u00e9\n" + "y" * 500)).encode(),
            "Infobip API answered HTTP 400: tab?here ??" + "y" * 109,
        ),
    ],
)
async def test_an_error_envelope_is_read_tolerantly(
    upstream: Upstream, body: bytes, expected: str
) -> None:
    upstream.reply = json_reply(400, body)
    failure = await read(upstream)
    assert (failure.kind, failure.message) == (Failure.REJECTED, expected)


async def test_a_transport_failure_is_unreachable_and_retried(upstream: Upstream) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"Connection refused to {BASE_URL}/?key={API_KEY}")

    upstream.reply = refuse
    failure = await read(upstream, safeguards=quick_retries())

    assert (failure.kind, failure.http_status) == (Failure.UNREACHABLE, None)
    assert len(upstream.requests) == 2
    assert API_KEY not in str(failure)
    assert "infobip.test" not in str(failure)
    caller = heard(failure)
    assert caller.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert caller.info.reason == Reason.UPSTREAM_UNAVAILABLE
    assert dict(caller.info.metadata) == {}
