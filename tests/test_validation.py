"""Unit tests for gateway.serving.validation and gateway.identifiers (spec 4.2): what may reach
the upstream URL, and what not."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway.failures import InvalidArgument
from gateway.identifiers import MAX_HASH_LENGTH, hash_violation, wa_id_violation
from gateway.serving.status import Reason, rule_for, to_status
from gateway.serving.validation import normalize_wa_id, validate_acknowledge

GOOD_WA_ID = "16315551234"
GOOD_HASH = "UKD6Y/5SqDU="


def _fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


def _reason(error: InvalidArgument) -> Reason:
    """The reason a caller receives: derived at the boundary from the first bad field."""
    return rule_for(error).reason


# --- wa_id ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wa_id", "expected"),
    [
        pytest.param("16315551234", "16315551234", id="digits"),
        pytest.param("+16315551234", "16315551234", id="leading-plus"),
        pytest.param("123456", "123456", id="six-digits"),
        pytest.param("+123456", "123456", id="six-digits-with-plus"),
        pytest.param("123456789012345", "123456789012345", id="fifteen-digits"),
        pytest.param("+123456789012345", "123456789012345", id="fifteen-digits-with-plus"),
        pytest.param("000000", "000000", id="leading-zeros-kept"),
    ],
)
def test_good_wa_id_normalises_to_its_ascii_digits(wa_id: str, expected: str) -> None:
    assert normalize_wa_id(wa_id) == expected
    assert wa_id_violation(wa_id) is None


HOSTILE_WA_IDS = [
    pytest.param("../users/login", id="path-traversal"),
    pytest.param("123456/../../x", id="digits-then-traversal"),
    pytest.param("1234%2F5678", id="percent-encoded-slash"),
    pytest.param("1234%2f5678", id="percent-encoded-slash-lowercase"),
    pytest.param("123456?x=1", id="query-string"),
    pytest.param("123456#frag", id="fragment"),
    pytest.param("١٢٣٤٥٦٧٨", id="arabic-indic-digits"),
    pytest.param("۱۲۳۴۵۶۷۸", id="extended-arabic-indic-digits"),
    pytest.param("\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18", id="fullwidth-digits"),
    pytest.param("12345", id="five-digits"),
    pytest.param("+12345", id="five-digits-with-plus"),
    pytest.param("1234567890123456", id="sixteen-digits"),
    pytest.param("++123456", id="double-plus"),
    pytest.param("123456+", id="trailing-plus"),
    pytest.param("-123456", id="leading-minus"),
    pytest.param("1631 555 1234", id="inner-spaces"),
    pytest.param(" 16315551234", id="leading-space"),
    pytest.param("16315551234 ", id="trailing-space"),
    pytest.param("1234567\n", id="trailing-newline"),
    pytest.param("\n1234567", id="leading-newline"),
    pytest.param("1234567\x00", id="trailing-nul"),
    pytest.param("123\x00456", id="inner-nul"),
    pytest.param("", id="empty"),
    pytest.param("+", id="plus-only"),
    pytest.param("1" * 10_000, id="very-long-digits"),
    pytest.param("../" * 5_000, id="very-long-traversal"),
    pytest.param("1631-555-1234", id="dashes"),
]


@pytest.mark.parametrize("wa_id", HOSTILE_WA_IDS)
def test_hostile_wa_id_is_rejected_as_invalid_wa_id(wa_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_wa_id(wa_id)
    assert _reason(caught.value) is Reason.INVALID_WA_ID
    assert _fields(caught.value) == ["wa_id"]
    assert caught.value.violations[0].description
    violation = wa_id_violation(wa_id)
    assert violation is not None
    assert violation.field == "wa_id"


@pytest.mark.parametrize("wa_id", HOSTILE_WA_IDS)
def test_hostile_wa_id_is_rejected_by_acknowledge_validation(wa_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_acknowledge(wa_id, GOOD_HASH)
    assert _reason(caught.value) is Reason.INVALID_WA_ID
    assert _fields(caught.value) == ["wa_id"]


def test_invalid_wa_id_becomes_invalid_argument_with_bad_request_on_wa_id() -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_wa_id("../users/login")
    status = to_status(caught.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_requests = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    assert len(bad_requests) == 1
    bad_request = error_details_pb2.BadRequest()
    bad_requests[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["wa_id"]


# --- hash -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identity_hash",
    [
        pytest.param("UKD6Y/5SqDU=", id="base64-with-padding"),
        pytest.param("UKD6Y_5SqDU-", id="base64url"),
        pytest.param("UKD6Y_5SqDU=", id="base64url-with-padding"),
        pytest.param("YQ==", id="double-padding"),
        pytest.param("Rc+eg9Rl0JA", id="base64-without-padding"),
        pytest.param("a", id="one-character"),
        pytest.param("A" * MAX_HASH_LENGTH, id="128-characters"),
        pytest.param("A" * (MAX_HASH_LENGTH - 2) + "==", id="128-characters-with-padding"),
    ],
)
def test_good_hash_is_accepted(identity_hash: str) -> None:
    assert hash_violation(identity_hash) is None
    assert validate_acknowledge("+" + GOOD_WA_ID, identity_hash) == GOOD_WA_ID


def test_max_hash_length_is_128() -> None:
    assert MAX_HASH_LENGTH == 128


@pytest.mark.parametrize(
    "identity_hash",
    [
        pytest.param("", id="empty"),
        pytest.param("A" * (MAX_HASH_LENGTH + 1), id="129-characters"),
        pytest.param("A" * (MAX_HASH_LENGTH - 1) + "==", id="129-characters-with-padding"),
        pytest.param("A" * 100_000, id="very-long"),
        pytest.param("a b", id="space"),
        pytest.param("abc$", id="dollar"),
        pytest.param("=abc", id="leading-padding"),
        pytest.param("ab=c", id="inner-padding"),
        pytest.param("abc===", id="three-padding"),
        pytest.param("==", id="padding-only"),
        pytest.param("héllo", id="unicode-letter"),
        pytest.param("\uff11\uff12\uff13\uff14", id="fullwidth-digits"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param("abc\x00", id="nul"),
        pytest.param("abc%2F", id="percent-encoding"),
        pytest.param("abc.def", id="dot"),
    ],
)
def test_bad_hash_is_rejected_as_invalid_hash(identity_hash: str) -> None:
    violation = hash_violation(identity_hash)
    assert violation is not None
    assert violation.field == "hash"
    with pytest.raises(InvalidArgument) as caught:
        validate_acknowledge(GOOD_WA_ID, identity_hash)
    assert _reason(caught.value) is Reason.INVALID_HASH
    assert _fields(caught.value) == ["hash"]


def test_both_fields_invalid_names_both_and_reports_invalid_wa_id() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_acknowledge("../users/login", "a b")
    assert _reason(caught.value) is Reason.INVALID_WA_ID
    assert _fields(caught.value) == ["wa_id", "hash"]


def test_both_fields_invalid_status_carries_both_field_violations() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_acknowledge("12345", "")
    status = to_status(caught.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    packed = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    assert len(packed) == 1
    packed[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["wa_id", "hash"]


def test_acknowledge_validation_returns_the_normalised_wa_id() -> None:
    assert validate_acknowledge("+123456789012345", GOOD_HASH) == "123456789012345"
