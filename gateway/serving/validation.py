"""Validation of callers' requests (spec 4.2), done before anything is sent upstream.

    normalize_wa_id("+16315551234")      # "16315551234"
    normalize_wa_id("../users/login")    # raises InvalidArgument naming wa_id

The rules themselves are :mod:`gateway.identifiers`; this module turns a broken one into the
caller's :class:`~gateway.failures.InvalidArgument`.
"""

from __future__ import annotations

from gateway.failures import FieldViolation, InvalidArgument
from gateway.identifiers import (
    WA_ID_RULE,
    hash_violation,
    normalized_wa_id,
    sender_violation,
    wa_id_violation,
)


def normalize_wa_id(wa_id: str, field: str = "wa_id") -> str:
    """The cache key and URL form of ``wa_id``: its digits without the '+'."""
    normalized = normalized_wa_id(wa_id)
    if normalized is None:
        raise InvalidArgument([FieldViolation(field, WA_ID_RULE)])
    return normalized


def validate_get(wa_id: str, sender: str = "") -> str:
    """Check a read's fields; every bad field is named. Returns the normalised id."""
    violations = [v for v in (wa_id_violation(wa_id), sender_violation(sender)) if v]
    if violations:
        raise InvalidArgument(violations)
    return normalize_wa_id(wa_id)


# 0001..9999 are the years a Timestamp may hold; spec 4.2 asks for 1970 to 9999.
_EARLIEST_SECONDS = 0  # 1970-01-01T00:00:00Z
_LATEST_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
CREATE_TIME_RULE = "must be a time from 1970 to 9999, with nanos from 0 to 999,999,999"


def create_time_violation(seconds: int, nanos: int) -> FieldViolation | None:
    """Why a report's ``create_time`` (a Timestamp's fields) is impossible, or None."""
    if not _EARLIEST_SECONDS <= seconds <= _LATEST_SECONDS or not 0 <= nanos < 1_000_000_000:
        return FieldViolation("create_time", CREATE_TIME_RULE)
    return None


def validate_acknowledge(
    wa_id: str,
    identity_hash: str,
    sender: str = "",
    create_time: tuple[int, int] | None = None,
) -> str:
    """Check an acknowledge's (or a report's, with its ``create_time`` as seconds and nanos)
    fields; every bad field is named. Returns the normalised id."""
    checks = [wa_id_violation(wa_id), hash_violation(identity_hash), sender_violation(sender)]
    if create_time is not None:
        checks.append(create_time_violation(*create_time))
    violations = [v for v in checks if v]
    if violations:
        raise InvalidArgument(violations)
    return normalize_wa_id(wa_id)
