"""What a valid wa_id, identity hash and sender look like (spec 4.2), for every layer that meets
one: the same hash rule holds for what callers send, what an upstream answers and what a
webhook reports, so the gateway never hands out a hash it would refuse back.

    normalized_wa_id("+16315551234")     # "16315551234"
    normalized_wa_id("../users/login")   # None
    hash_violation("not base64!")        # FieldViolation("hash", HASH_RULE)

Only normalised digits ever reach an upstream URL path.
"""

from __future__ import annotations

import re

from gateway.failures import FieldViolation

# [0-9], not \d: in Python \d also matches Arabic-Indic and other Unicode digits.
_WA_ID = re.compile(r"\+?([0-9]{6,15})")
_HASH = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
MAX_HASH_LENGTH = 128

_SENDER = re.compile(r"[0-9]{6,15}")

WA_ID_RULE = "must be 6 to 15 ASCII digits with an optional leading '+'"
SENDER_RULE = "must be a business phone number: 6 to 15 ASCII digits, no '+' (empty: the default)"
HASH_RULE = f"must be 1 to {MAX_HASH_LENGTH} characters of base64 or base64url, '=' padding allowed"


def normalized_wa_id(wa_id: str) -> str | None:
    """The cache key and URL form of ``wa_id`` (its digits, without the '+'); None if invalid."""
    match = _WA_ID.fullmatch(wa_id)
    return None if match is None else match.group(1)


def wa_id_violation(wa_id: str, field: str = "wa_id") -> FieldViolation | None:
    """Why ``wa_id`` is invalid, or None."""
    return FieldViolation(field, WA_ID_RULE) if normalized_wa_id(wa_id) is None else None


def sender_violation(sender: str, field: str = "sender") -> FieldViolation | None:
    """Why a request's ``sender`` is malformed, or None (empty means the default sender)."""
    if sender and _SENDER.fullmatch(sender) is None:
        return FieldViolation(field, SENDER_RULE)
    return None


def is_sender_number(value: str) -> bool:
    """Whether ``value`` is a business phone number as a senders file must give it."""
    return _SENDER.fullmatch(value) is not None


def hash_violation(identity_hash: str, field: str = "hash") -> FieldViolation | None:
    """Why an identity ``hash`` is invalid, or None."""
    if not is_identity_hash(identity_hash):
        return FieldViolation(field, HASH_RULE)
    return None


def is_identity_hash(value: object) -> bool:
    """Whether ``value`` is an identity hash by the one rule (:data:`HASH_RULE`)."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_HASH_LENGTH
        and _HASH.fullmatch(value) is not None
    )
