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


def validate_acknowledge(wa_id: str, identity_hash: str, sender: str = "") -> str:
    """Check an acknowledge's (or a report's) fields; every bad field is named. Returns the
    normalised id."""
    checks = (wa_id_violation(wa_id), hash_violation(identity_hash), sender_violation(sender))
    violations = [v for v in checks if v]
    if violations:
        raise InvalidArgument(violations)
    return normalize_wa_id(wa_id)
