"""Property tests: the parsers fail only in the one documented way, and to_status always answers.

The explicit ``@example``s are inputs random generation rarely reaches (deep nesting, numbers past
int()'s digit limit, an infinite delay); they are part of "for any input".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.backends.onprem.outcomes import Operation, classify
from gateway.backends.onprem.parse import (
    BadAnswer,
    check_acknowledge_body,
    parse_error_body,
    parse_identity,
    parse_login,
)
from gateway.failures import BackendFailure, InvalidArgument, clean_title
from gateway.identifiers import wa_id_violation
from gateway.serving.status import DOMAIN, RULES, Reason, rule_for, to_status
from gateway.serving.validation import normalize_wa_id

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
# Near-miss documents: the right keys with arbitrary values, so parsing gets past the first checks.
_field_values = st.one_of(
    _json_values,
    st.just("UKD6Y/5SqDU="),
    st.just("true"),
    st.just("false"),
    st.integers(min_value=-1, max_value=10**16),
    st.integers(min_value=0, max_value=10**16).map(str),
)
_contact = st.dictionaries(
    st.sampled_from(["hash", "created_timestamp", "acknowledged"]), _field_values
)
_user = st.dictionaries(
    st.sampled_from(["token", "expires_after"]),
    st.one_of(
        _field_values,
        st.datetimes().map(lambda moment: moment.isoformat(sep=" ")),
        st.text(max_size=40),
    ),
)
_documents = st.one_of(
    _json_values,
    st.fixed_dictionaries({"contacts": st.one_of(_contact, st.lists(_contact, max_size=3))}),
    st.fixed_dictionaries({"users": st.one_of(st.lists(_user, max_size=2), _user)}),
    st.fixed_dictionaries(
        {"errors": st.lists(st.dictionaries(st.sampled_from(["code", "title"]), _field_values))}
    ),
)
bodies = st.one_of(
    st.binary(max_size=256),
    _documents.map(lambda document: json.dumps(document).encode()),
)

DEEPLY_NESTED = b"[" * 100_000
HUGE_TIMESTAMP_STRING = (
    b'{"contacts": {"hash": "x", "created_timestamp": "'
    + b"9" * 5000
    + b'", "acknowledged": true}}'
)
LOGIN_PAST_YEAR_9999 = json.dumps(
    {"users": [{"token": "t", "expires_after": "9999-12-31T23:59:59-23:59"}]}
).encode()

PARSERS: list[Any] = [
    pytest.param(parse_identity, id="parse_identity"),
    pytest.param(parse_login, id="parse_login"),
    pytest.param(check_acknowledge_body, id="check_acknowledge_body"),
]


@pytest.mark.parametrize("parser", PARSERS)
@PROPERTY_SETTINGS
@given(body=bodies)
@example(body=DEEPLY_NESTED)
@example(body=HUGE_TIMESTAMP_STRING)
@example(body=LOGIN_PAST_YEAR_9999)
def test_parsers_return_or_raise_only_bad_response(
    parser: Callable[[bytes], object], body: bytes
) -> None:
    with contextlib.suppress(BadAnswer):
        parser(body)


@PROPERTY_SETTINGS
@given(body=bodies)
@example(body=DEEPLY_NESTED)
def test_parse_error_body_never_raises(body: bytes) -> None:
    envelope = parse_error_body(body)
    assert envelope.code is None or (
        isinstance(envelope.code, int) and not isinstance(envelope.code, bool)
    )
    assert envelope.title is None or isinstance(envelope.title, str)


REASONS = {reason.value for reason in Reason}


def _answered(
    http_status: int,
    whatsapp_code: int | None,
    title: str | None,
    retry_after: float | None,
    operation: Operation,
) -> BackendFailure:
    """The failure the On-Premises backend builds for such an answer (any delay, any code)."""
    message = f"WhatsApp API answered HTTP {http_status}"
    if whatsapp_code is not None:
        message += f" with code {whatsapp_code}"
    if clean_title(title):
        message += f": {clean_title(title)}"
    login = operation is Operation.LOGIN
    if login:
        message = "the gateway could not log in to WhatsApp: " + message
    return BackendFailure(
        classify(http_status, upstream_code=whatsapp_code, operation=operation),
        message,
        http_status=http_status,
        upstream_code=whatsapp_code,
        retry_after=retry_after,
        login=login,
    )


@PROPERTY_SETTINGS
@given(
    http_status=st.integers(min_value=100, max_value=599),
    whatsapp_code=st.none() | st.integers(),
    title=st.none() | st.text(),
    retry_after=st.none() | st.floats(min_value=0.0, allow_nan=False),
    operation=st.sampled_from(Operation),
)
@example(
    http_status=429,
    whatsapp_code=None,
    title=None,
    retry_after=float("inf"),
    operation=Operation.GET,
)
def test_to_status_always_gives_one_error_info_and_never_ok(
    http_status: int,
    whatsapp_code: int | None,
    title: str | None,
    retry_after: float | None,
    operation: Operation,
) -> None:
    error = _answered(http_status, whatsapp_code, title, retry_after, operation)
    status = to_status(error)

    assert isinstance(status, status_pb2.Status)
    assert status.code != grpc.StatusCode.OK.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == DOMAIN
    assert info.reason in REASONS
    assert info.reason == RULES[error.kind].reason
    assert info.metadata["upstreamStatus"] == str(http_status)
    assert ("whatsappCode" in info.metadata) == (whatsapp_code is not None)
    assert status.SerializeToString() is not None


@PROPERTY_SETTINGS
@given(wa_id=st.text(max_size=30) | st.from_regex(r"\+?[0-9]{4,17}", fullmatch=True))
def test_wa_id_normalises_to_6_to_15_ascii_digits_or_is_rejected(wa_id: str) -> None:
    if wa_id_violation(wa_id) is not None:
        with pytest.raises(InvalidArgument) as caught:
            normalize_wa_id(wa_id)
        assert rule_for(caught.value).reason is Reason.INVALID_WA_ID
        return
    normalized = normalize_wa_id(wa_id)
    assert 6 <= len(normalized) <= 15
    assert all("0" <= character <= "9" for character in normalized)
    assert wa_id in (normalized, "+" + normalized)
