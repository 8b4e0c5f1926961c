"""Unit tests for gateway.backends.onprem.parse: every variant whatsapp-api.md tolerates, every
malformed answer.

Malformed 2xx answers must raise BadAnswer (which the backend reports as a BAD_ANSWER failure,
spec 4.5: UPSTREAM_BAD_RESPONSE), never another exception, which the service would report as a
gateway bug.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.base import UpstreamIdentity
from gateway.backends.http import parse_retry_after
from gateway.backends.infobip.parse import BadAnswer as InfobipBadAnswer
from gateway.backends.infobip.parse import parse_identity as parse_infobip_identity
from gateway.backends.onprem.parse import (
    BadAnswer,
    LoginToken,
    UpstreamErrorBody,
    check_acknowledge_body,
    parse_error_body,
    parse_expires_after,
    parse_identity,
    parse_login,
)
from gateway.identifiers import hash_violation

DOCUMENTED_CONTACT: dict[str, Any] = {
    "hash": "UKD6Y/5SqDU=",
    "created_timestamp": 1600132094000,
    "acknowledged": True,
}
META = {"api_status": "stable", "version": "v2.45.1"}
DOCUMENTED_IDENTITY = UpstreamIdentity(
    hash="UKD6Y/5SqDU=", create_time_ms=1600132094000, acknowledged=True
)
EXPECTED_EXPIRY = dt.datetime(2018, 3, 1, 15, 29, 26, tzinfo=dt.UTC)
A_DAY = 24 * 3600.0
_ABSENT: Any = object()  # marks a field to leave out
# Nested deeper than any recursion limit the interpreter might be configured with.
DEEPLY_NESTED = b"[" * 100_000


def _body(document: Any) -> bytes:
    return json.dumps(document).encode()


def _contact_body(**overrides: Any) -> bytes:
    """An identity answer: the documented contact with some fields replaced or (_ABSENT) removed."""
    contact = dict(DOCUMENTED_CONTACT)
    for key, value in overrides.items():
        if value is _ABSENT:
            contact.pop(key, None)
        else:
            contact[key] = value
    return _body({"contacts": contact, "meta": META})


# --- GET identity: tolerated variants ---------------------------------------------------------


def test_documented_object_contacts_is_parsed() -> None:
    assert parse_identity(_body({"contacts": DOCUMENTED_CONTACT, "meta": META})) == (
        DOCUMENTED_IDENTITY
    )


def test_array_of_one_contact_is_accepted() -> None:
    assert parse_identity(_body({"contacts": [DOCUMENTED_CONTACT], "meta": META})) == (
        DOCUMENTED_IDENTITY
    )


def test_answer_without_meta_is_accepted() -> None:
    assert parse_identity(_body({"contacts": DOCUMENTED_CONTACT})) == DOCUMENTED_IDENTITY


@pytest.mark.parametrize(
    ("acknowledged", "expected"),
    [
        pytest.param(True, True, id="bool-true"),
        pytest.param(False, False, id="bool-false"),
        pytest.param("true", True, id="string-true"),
        pytest.param("false", False, id="string-false"),
    ],
)
def test_acknowledged_accepts_booleans_and_their_strings(acknowledged: Any, expected: bool) -> None:
    assert parse_identity(_contact_body(acknowledged=acknowledged)).acknowledged is expected


def test_integer_timestamp_is_kept_as_milliseconds() -> None:
    assert parse_identity(_contact_body(created_timestamp=1600132094000)).create_time_ms == (
        1600132094000
    )


def test_numeric_string_timestamp_is_accepted() -> None:
    identity = parse_identity(_contact_body(created_timestamp="1600132094000"))
    assert identity.create_time_ms == 1600132094000
    assert isinstance(identity.create_time_ms, int)


def test_hash_is_kept_verbatim() -> None:
    assert parse_identity(_contact_body(hash="Rc/eg9Rl0JA=")).hash == "Rc/eg9Rl0JA="


def test_array_of_one_contact_with_string_fields_is_accepted() -> None:
    contact = {
        "hash": "Rc/eg9Rl0JA=",
        "created_timestamp": "1602535356000",
        "acknowledged": "false",
    }
    assert parse_identity(_body({"contacts": [contact]})) == UpstreamIdentity(
        hash="Rc/eg9Rl0JA=", create_time_ms=1602535356000, acknowledged=False
    )


# --- GET identity: malformed answers ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>502 Bad Gateway</body></html>", id="html-not-json"),
        pytest.param(b"", id="empty-body"),
        pytest.param(b'{"contacts": ', id="truncated-json"),
        pytest.param(b"\xff\xfe\xfa{}", id="not-utf8"),
        pytest.param(b"[]", id="top-level-array"),
        pytest.param(b"null", id="top-level-null"),
        pytest.param(b'"contacts"', id="top-level-string"),
        pytest.param(b"42", id="top-level-number"),
        pytest.param(_body({"meta": META}), id="contacts-missing"),
        pytest.param(_body({"contacts": None}), id="contacts-null"),
        pytest.param(_body({"contacts": "UKD6Y/5SqDU="}), id="contacts-string"),
        pytest.param(_body({"contacts": []}), id="array-of-zero-contacts"),
        pytest.param(
            _body({"contacts": [DOCUMENTED_CONTACT, DOCUMENTED_CONTACT]}),
            id="array-of-two-contacts",
        ),
        pytest.param(_body({"contacts": ["UKD6Y/5SqDU="]}), id="array-of-one-non-object"),
        pytest.param(_body({"contacts": [[DOCUMENTED_CONTACT]]}), id="nested-array"),
    ],
)
def test_malformed_identity_document_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_identity(body)


@pytest.mark.parametrize(
    "hash_value",
    [
        pytest.param(_ABSENT, id="missing"),
        pytest.param("", id="empty"),
        pytest.param(None, id="null"),
        pytest.param(12345678, id="number"),
        pytest.param(True, id="bool"),
        pytest.param(["UKD6Y/5SqDU="], id="array"),
        pytest.param({"value": "UKD6Y/5SqDU="}, id="object"),
    ],
)
def test_missing_empty_or_non_string_hash_is_a_bad_response(hash_value: Any) -> None:
    with pytest.raises(BadAnswer):
        parse_identity(_contact_body(hash=hash_value))


def test_hash_with_lone_surrogate_is_a_bad_response() -> None:
    # Valid JSON escape, but not Unicode: it cannot be put in a proto string (UnicodeEncodeError).
    body = b'{"contacts": {"hash": "\\ud800", "created_timestamp": 1, "acknowledged": true}}'
    with pytest.raises(BadAnswer):
        parse_identity(body)


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param(_ABSENT, id="missing"),
        pytest.param(None, id="null"),
        pytest.param(True, id="bool-true"),
        pytest.param(False, id="bool-false"),
        pytest.param(-1, id="negative"),
        pytest.param(1600132094000.5, id="float"),
        pytest.param(1.6e12, id="float-exponent"),
        pytest.param("soon", id="non-numeric-string"),
        pytest.param("", id="empty-string"),
        pytest.param("-1600132094000", id="negative-string"),
        pytest.param("1600132094000.0", id="float-string"),
        pytest.param(" 1600132094000", id="string-with-space"),
        pytest.param("١٦٠٠١٣٢٠٩٤٠٠٠", id="arabic-indic-digit-string"),
        pytest.param(10**20, id="beyond-year-9999"),
        pytest.param([1600132094000], id="array"),
    ],
)
def test_unusable_timestamp_is_a_bad_response(timestamp: Any) -> None:
    with pytest.raises(BadAnswer):
        parse_identity(_contact_body(created_timestamp=timestamp))


def test_numeric_string_timestamp_too_long_for_int_is_a_bad_response() -> None:
    # int() refuses strings of more than 4300 digits with ValueError; it must not escape.
    with pytest.raises(BadAnswer):
        parse_identity(_contact_body(created_timestamp="9" * 5000))


@pytest.mark.parametrize(
    "acknowledged",
    [
        pytest.param(_ABSENT, id="missing"),
        pytest.param(None, id="null"),
        pytest.param("yes", id="string-yes"),
        pytest.param("True", id="string-capitalised"),
        pytest.param("", id="empty-string"),
        pytest.param(1, id="integer-1"),
        pytest.param(0, id="integer-0"),
        pytest.param([True], id="array"),
    ],
)
def test_acknowledged_other_than_boolean_or_its_string_is_a_bad_response(
    acknowledged: Any,
) -> None:
    with pytest.raises(BadAnswer):
        parse_identity(_contact_body(acknowledged=acknowledged))


def test_deeply_nested_identity_body_is_a_bad_response() -> None:
    with pytest.raises(BadAnswer):
        parse_identity(DEEPLY_NESTED)


# --- PUT identity (acknowledge) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"null", id="null"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b"", id="empty"),
        pytest.param(b"  \r\n\t ", id="whitespace"),
        pytest.param(b" null\n", id="null-with-whitespace"),
        pytest.param(_body({"meta": META}), id="meta-only"),
    ],
)
def test_tolerated_acknowledge_body_is_accepted(body: bytes) -> None:
    check_acknowledge_body(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>OK</html>", id="not-json"),
        pytest.param(b"\xff\xfe\xfa", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"ok"', id="string"),
        pytest.param(b"true", id="boolean"),
        pytest.param(b"0", id="number"),
        pytest.param(
            _body({"errors": [{"code": 1009, "title": "Parameter value is not valid"}]}),
            id="errors-in-200",
        ),
        pytest.param(
            _body({"errors": [{"code": 1006, "title": "Resource not found"}], "meta": META}),
            id="errors-and-meta-in-200",
        ),
        pytest.param(DEEPLY_NESTED, id="deeply-nested"),
    ],
)
def test_malformed_acknowledge_body_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(BadAnswer):
        check_acknowledge_body(body)


# --- Login ------------------------------------------------------------------------------------


def _login_body(**user: Any) -> bytes:
    return _body({"users": [user], "meta": META})


def test_login_token_and_documented_expiry_are_parsed() -> None:
    body = _login_body(token="eyJhbGciOi.x.y", expires_after="2018-03-01 15:29:26+00:00")
    assert parse_login(body) == LoginToken(token="eyJhbGciOi.x.y", expires_at=EXPECTED_EXPIRY)


@pytest.mark.parametrize(
    "expires_after",
    [
        pytest.param("2018-03-01 15:29:26+00:00", id="documented-space-and-offset"),
        pytest.param("2018-03-01T15:29:26.000Z", id="iso-8601-z"),
        pytest.param("2018-03-01T17:29:26+02:00", id="non-utc-offset"),
        pytest.param("2018-03-01 15:29:26", id="no-offset-means-utc"),
    ],
)
def test_both_expires_after_formats_give_the_same_utc_instant(expires_after: str) -> None:
    expires_at = parse_login(_login_body(token="t", expires_after=expires_after)).expires_at
    assert expires_at == EXPECTED_EXPIRY
    assert expires_at.utcoffset() == dt.timedelta(0)


def test_login_uses_the_first_user_of_the_array() -> None:
    body = _body(
        {
            "users": [
                {"token": "first", "expires_after": "2018-03-01 15:29:26+00:00"},
                {"token": "second", "expires_after": "2019-03-01 15:29:26+00:00"},
            ]
        }
    )
    assert parse_login(body).token == "first"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(_body({"meta": META}), id="users-missing"),
        pytest.param(_body({"users": []}), id="users-empty"),
        pytest.param(_body({"users": ["token"]}), id="users-of-non-object"),
        pytest.param(_body({"users": None}), id="users-null"),
        pytest.param(_login_body(expires_after="2018-03-01 15:29:26+00:00"), id="token-missing"),
        pytest.param(
            _login_body(token="", expires_after="2018-03-01 15:29:26+00:00"), id="token-empty"
        ),
        pytest.param(
            _login_body(token=12345, expires_after="2018-03-01 15:29:26+00:00"), id="token-number"
        ),
        pytest.param(
            _login_body(token="abc\r\nX-Injected: 1", expires_after="2018-03-01 15:29:26+00:00"),
            id="token-with-crlf",
        ),
        pytest.param(
            _login_body(token="abc\x00def", expires_after="2018-03-01 15:29:26+00:00"),
            id="token-with-nul",
        ),
        pytest.param(
            _login_body(token="abc\x7fdef", expires_after="2018-03-01 15:29:26+00:00"),
            id="token-with-del",
        ),
        pytest.param(
            _login_body(token="tökén", expires_after="2018-03-01 15:29:26+00:00"),
            id="token-non-ascii",
        ),
        pytest.param(_login_body(token="t"), id="expires-after-missing"),
        pytest.param(_login_body(token="t", expires_after=None), id="expires-after-null"),
        pytest.param(_login_body(token="t", expires_after=1519918166), id="expires-after-number"),
        pytest.param(_login_body(token="t", expires_after="in 7 days"), id="expires-after-text"),
        pytest.param(_login_body(token="t", expires_after=""), id="expires-after-empty"),
        pytest.param(DEEPLY_NESTED, id="deeply-nested"),
    ],
)
def test_malformed_login_answer_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_login(body)


@pytest.mark.parametrize(
    "expires_after",
    [
        pytest.param("9999-12-31T23:59:59-23:59", id="past-year-9999-in-utc"),
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
    ],
)
def test_expires_after_outside_the_calendar_in_utc_is_a_bad_response(expires_after: str) -> None:
    # Converting these to UTC overflows the datetime range (OverflowError must not escape).
    with pytest.raises(BadAnswer):
        parse_expires_after(expires_after)


# --- Error envelope ---------------------------------------------------------------------------


def test_error_envelope_code_and_title_are_read() -> None:
    body = _body(
        {
            "errors": [{"code": 1006, "title": "Resource not found", "details": "unknown contact"}],
            "meta": META,
        }
    )
    assert parse_error_body(body) == UpstreamErrorBody(code=1006, title="Resource not found")


def test_error_envelope_without_details_is_read() -> None:
    body = _body({"errors": [{"code": 1015, "title": "Too many requests"}]})
    assert parse_error_body(body) == UpstreamErrorBody(code=1015, title="Too many requests")


def test_error_envelope_uses_the_first_error() -> None:
    body = _body({"errors": [{"code": 1009, "title": "first"}, {"code": 1000, "title": "second"}]})
    assert parse_error_body(body) == UpstreamErrorBody(code=1009, title="first")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body><h1>401 Authorization Required</h1></body></html>", id="html"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\xfa", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(_body({"meta": META}), id="no-errors"),
        pytest.param(_body({"errors": []}), id="errors-empty"),
        pytest.param(_body({"errors": {"code": 1006}}), id="errors-not-a-list"),
        pytest.param(_body({"errors": ["Resource not found"]}), id="error-not-an-object"),
        pytest.param(_body({"error": {"message": "foreign", "code": 190}}), id="foreign-envelope"),
        pytest.param(DEEPLY_NESTED, id="deeply-nested"),
    ],
)
def test_body_without_a_usable_envelope_gives_an_empty_error(body: bytes) -> None:
    assert parse_error_body(body) == UpstreamErrorBody()


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("1006", id="string"),
        pytest.param(1006.0, id="float"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param([1006], id="array"),
    ],
)
def test_non_integer_error_code_is_dropped_but_title_kept(code: Any) -> None:
    body = _body({"errors": [{"code": code, "title": "Resource not found"}]})
    assert parse_error_body(body) == UpstreamErrorBody(code=None, title="Resource not found")


def test_non_string_error_title_is_dropped_but_code_kept() -> None:
    body = _body({"errors": [{"code": 1006, "title": {"text": "Resource not found"}}]})
    assert parse_error_body(body) == UpstreamErrorBody(code=1006, title=None)


# --- Retry-After ------------------------------------------------------------------------------

NOW = dt.datetime(2015, 10, 21, 7, 27, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("120", 120.0, id="delta-seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(" 7 ", 7.0, id="delta-seconds-with-whitespace"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 30.0, id="http-date-in-the-future"),
        pytest.param("Wed, 21 Oct 2015 07:27:00 GMT", 0.0, id="http-date-in-the-past"),
        pytest.param("Wednesday, 21-Oct-15 07:28:00 GMT", 30.0, id="rfc850-date"),
    ],
)
def test_retry_after_is_read_as_seconds(header: str, expected: float) -> None:
    assert parse_retry_after(header, now=NOW) == expected


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("soon", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("-5", id="negative"),
        pytest.param("1.5", id="fraction"),
        pytest.param("١٢٠", id="arabic-indic-digits"),
        pytest.param("Wed, 32 Foo 2015 07:28:00 GMT", id="broken-date"),
    ],
)
def test_unusable_retry_after_is_ignored(header: str) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_absent_retry_after_is_ignored() -> None:
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("99999999999", id="huge-delta-seconds"),
        pytest.param("9" * 5000, id="delta-seconds-longer-than-int-limit"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", id="far-future-date"),
    ],
)
def test_huge_retry_after_is_capped_at_a_day(header: str) -> None:
    assert parse_retry_after(header, now=NOW) == A_DAY


def test_retry_after_date_with_absurd_year_does_not_raise() -> None:
    result = parse_retry_after("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", now=NOW)
    assert result is None or result == A_DAY


@pytest.mark.parametrize(
    "identity_hash",
    ["not base64!", "a" * 129, "UKD6Y/5SqDU=x", "has space=", "Üml4ut=="],
)
def test_a_hash_callers_could_not_acknowledge_is_a_bad_answer(identity_hash: str) -> None:
    """One hash rule (gateway.identifiers): the gateway never hands out a hash that
    AcknowledgeIdentity would refuse, from WhatsApp or from Infobip."""
    onprem = json.dumps(
        {"contacts": {"hash": identity_hash, "created_timestamp": 1, "acknowledged": True}}
    ).encode()
    infobip = json.dumps(
        {"acknowledged": True, "hash": identity_hash, "createdAt": "2022-02-18T08:12:26.422Z"}
    ).encode()
    with pytest.raises(BadAnswer):
        parse_identity(onprem)
    with pytest.raises(InfobipBadAnswer):
        parse_infobip_identity(infobip)


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_every_hash_the_parsers_accept_can_be_acknowledged(identity_hash: str) -> None:
    body = orjson.dumps(
        {"contacts": {"hash": identity_hash, "created_timestamp": 1, "acknowledged": True}}
    )
    try:
        parsed = parse_identity(body)
    except BadAnswer:
        return
    assert hash_violation(parsed.hash) is None
