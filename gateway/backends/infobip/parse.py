"""Parsing Infobip's WhatsApp identity answers, tolerant of the variants ``whatsapp-api.md`` lists.

Every function takes raw body bytes and either returns typed data or raises :class:`BadAnswer`
with a short reason (never the body itself, which may hold anything). Nothing here does I/O.

    identity = parse_identity(b'{"acknowledged": true, "hash": "eU2Fdi4EMUw=", '
                              b'"createdAt": "2022-02-18T08:12:26.422Z"}')
    assert identity.create_time_ms == 1645171946422
    parse_error_text(b'{"requestError": {"serviceException": {"text": "Bad request"}}}')
    # "Bad request"
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.backends.base import UpstreamIdentity
from gateway.identifiers import HASH_RULE, is_identity_hash


class BadAnswer(ValueError):
    """An Infobip answer that cannot be used; the message is a short, body-free reason."""


# "2022-02-18T08:12:26.422+01:00" is 29 characters; nanoseconds and a space cannot need 64.
_MAX_CREATED_AT_LENGTH = 64
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)

# ISO 8601 as Infobip writes it (``2022-02-18T08:12:26.422Z``) and the variants worth
# tolerating: no fraction, a longer or shorter one, an offset with or without its colon, a
# space or lowercase separators, or no zone at all. Written out rather than left to
# datetime.fromisoformat, which also takes week dates, bare dates and any separator character.
# re.ASCII: \d alone would also match other scripts' digits.
_CREATED_AT = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[Tt ]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})"
    r"(?:\.(?P<fraction>\d{1,9}))?"
    r"(?:[Zz]|(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2}))?",
    re.ASCII,
)

# JSON strings some upstreams send for booleans; anything else that is not a boolean is broken.
_BOOLEAN_WORDS: Mapping[str, bool] = {"true": True, "false": False}


def parse_identity(body: bytes) -> UpstreamIdentity:
    """The identity in a ``GET /whatsapp/1/{sender}/contacts/{wa_id}/identity`` 200 answer."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise BadAnswer("body is not a JSON object")
    return UpstreamIdentity(
        hash=_identity_hash(document.get("hash")),
        create_time_ms=parse_created_at(document.get("createdAt")),
        acknowledged=_acknowledged(document.get("acknowledged")),
    )


def parse_created_at(value: Any) -> int:
    """``createdAt`` (ISO 8601, ``Z`` or an offset) as epoch milliseconds, UTC.

    A time without a zone is taken as UTC: Infobip documents ``Z``, and guessing the gateway's
    own zone would be worse. Digits past milliseconds are dropped; times before 1970 or past
    year 9999 (after applying the offset) are refused.
    """
    if not isinstance(value, str) or len(value) > _MAX_CREATED_AT_LENGTH:
        raise BadAnswer("createdAt is missing or not a string")
    match = _CREATED_AT.fullmatch(value.strip())
    if match is None:
        raise BadAnswer("createdAt is not an ISO 8601 date and time")
    fraction = match["fraction"] or ""
    try:
        zone = dt.UTC
        if match["sign"] is not None:
            offset = _offset(int(match["hours"]), int(match["minutes"]))
            zone = dt.timezone(-offset if match["sign"] == "-" else offset)
        year, month, day, hour, minute, second = (
            int(match[part]) for part in ("year", "month", "day", "hour", "minute", "second")
        )
        millisecond = int(fraction[:3].ljust(3, "0"))
        moment = dt.datetime(
            year, month, day, hour, minute, second, millisecond * 1000, tzinfo=zone
        )
    except ValueError:  # month 13, hour 24, second 60, year 0, an offset of a day or more
        raise BadAnswer("createdAt is not a valid date and time") from None
    # Aware comparison and subtraction are exact integer arithmetic (no float rounding of the
    # milliseconds), and do not overflow when an offset carries a time past year 9999.
    if not _EPOCH <= moment <= _LATEST:
        raise BadAnswer("createdAt is out of range")
    return (moment - _EPOCH) // _MILLISECOND


def check_acknowledge_body(body: bytes) -> None:
    """Accept a ``PUT .../identity`` success body: none (204), ``null``, ``{}`` or an object
    of other fields; an object carrying an error envelope, or any other JSON, is refused."""
    document = _load_json(body) if body.strip() else None
    if document is None:
        return
    if not isinstance(document, dict):
        raise BadAnswer("acknowledge answer is not an object")
    if "requestError" in document:
        raise BadAnswer("acknowledge answer holds an error")


def parse_error_text(body: bytes) -> str | None:
    """The ``text`` of Infobip's error envelope; None for HTML, empty or foreign bodies.

    The envelope is ``{"requestError": {"serviceException": {"messageId", "text"}}}``; Infobip's
    other APIs put refusals under ``policyException`` in the same place, so that is read too.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    request_error = document.get("requestError") if isinstance(document, dict) else None
    if not isinstance(request_error, dict):
        return None
    for name in ("serviceException", "policyException"):
        exception = request_error.get(name)
        if isinstance(exception, dict) and isinstance(exception.get("text"), str):
            text: str = exception["text"]
            return text
    return None


def _offset(hours: int, minutes: int) -> dt.timedelta:
    if minutes > 59:  # timedelta would carry them into the hours
        raise ValueError("offset minutes out of range")
    return dt.timedelta(hours=hours, minutes=minutes)


def _load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # also NaN, lone surrogates, bad UTF-8, nesting past 1,024
        raise BadAnswer("body is not JSON") from None


def _identity_hash(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadAnswer("hash is missing or not a string")
    # Held to the rule callers' hashes are (gateway.identifiers): one the gateway hands out can
    # always be acknowledged.
    if not is_identity_hash(value):
        raise BadAnswer(f"hash {HASH_RULE}")
    return value


def _acknowledged(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value]
    raise BadAnswer("acknowledged is missing or not a boolean")


__all__ = [
    "BadAnswer",
    "check_acknowledge_body",
    "parse_created_at",
    "parse_error_text",
    "parse_identity",
]
