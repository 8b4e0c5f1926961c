"""Validation of callers' requests (spec 4.2), done before anything is sent upstream.

    normalize_wa_id("+16315551234")      # "16315551234"
    normalize_wa_id("../users/login")    # raises InvalidArgument(INVALID_WA_ID)

Only the normalised digits ever reach the upstream URL path.
"""

from __future__ import annotations

import re

from gateway.errors import FieldViolation, InvalidArgument, Reason

# ``re.ASCII`` is deliberate: without it ``\d`` also matches Arabic-Indic and other digits.
_WA_ID = re.compile(r"\+?([0-9]{6,15})", re.ASCII)
_HASH = re.compile(r"[A-Za-z0-9+/_-]+={0,2}", re.ASCII)
MAX_HASH_LENGTH = 128

WA_ID_RULE = "must be 6 to 15 ASCII digits with an optional leading '+'"
HASH_RULE = f"must be 1 to {MAX_HASH_LENGTH} characters of base64 or base64url, '=' padding allowed"


def wa_id_violation(wa_id: str) -> FieldViolation | None:
    """Why ``wa_id`` is invalid, or None."""
    if _WA_ID.fullmatch(wa_id) is None:
        return FieldViolation("wa_id", WA_ID_RULE)
    return None


def hash_violation(identity_hash: str) -> FieldViolation | None:
    """Why an acknowledge ``hash`` is invalid, or None."""
    if len(identity_hash) > MAX_HASH_LENGTH or _HASH.fullmatch(identity_hash) is None:
        return FieldViolation("hash", HASH_RULE)
    return None


def normalize_wa_id(wa_id: str) -> str:
    """The cache key and URL form of ``wa_id``: its digits without the '+'."""
    match = _WA_ID.fullmatch(wa_id)
    if match is None:
        raise InvalidArgument(Reason.INVALID_WA_ID, [FieldViolation("wa_id", WA_ID_RULE)])
    return match.group(1)


def validate_acknowledge(wa_id: str, identity_hash: str) -> str:
    """Check both fields of an acknowledge; every bad field is named. Returns the normalised id."""
    violations = [v for v in (wa_id_violation(wa_id), hash_violation(identity_hash)) if v]
    if violations:
        reason = Reason.INVALID_WA_ID if violations[0].field == "wa_id" else Reason.INVALID_HASH
        raise InvalidArgument(reason, violations)
    return normalize_wa_id(wa_id)
