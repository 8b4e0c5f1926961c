"""Parsing the WhatsApp API's answers, tolerant of the variants ``whatsapp-api.md`` lists.

Every function takes raw body bytes and either returns typed data or raises
:class:`BadAnswer` with a short reason (never the body itself, which may
hold anything). Nothing here does I/O.

    identity = parse_identity(b'{"contacts": {"hash": "UKD6Y/5SqDU=", '
                              b'"created_timestamp": 1600132094000, "acknowledged": true}}')
    assert identity.create_time_ms == 1600132094000
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import orjson

from gateway.backends.base import UpstreamIdentity
from gateway.identifiers import HASH_RULE, is_identity_hash


class BadAnswer(ValueError):
    """A WhatsApp answer that cannot be used; the message is a short, body-free reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class LoginToken:
    """A bearer token and when WhatsApp says it stops working."""

    token: str
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamErrorBody:
    """What an error answer's envelope says, when it says anything."""

    code: int | None = None
    title: str | None = None


# Bounds that no real identity exceeds; larger values are a broken answer, not data.
_MAX_TIMESTAMP_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
# Python's int() refuses longer digit strings anyway; no timestamp or delay needs more.
_MAX_DIGITS = 20


def _load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # also not UTF-8, and nesting deeper than 1,024
        raise BadAnswer("body is not JSON") from None


def parse_identity(body: bytes) -> UpstreamIdentity:
    """The identity in a ``GET /v1/contacts/{wa_id}/identity`` 200 answer."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise BadAnswer("body is not a JSON object")
    contacts = document.get("contacts")
    if isinstance(contacts, list):
        if len(contacts) != 1:
            raise BadAnswer(f"contacts holds {len(contacts)} entries, expected 1")
        contacts = contacts[0]
    if not isinstance(contacts, dict):
        raise BadAnswer("contacts is missing or not an object")
    return UpstreamIdentity(
        hash=_parse_hash(contacts.get("hash")),
        create_time_ms=_parse_timestamp_ms(contacts.get("created_timestamp")),
        acknowledged=_parse_acknowledged(contacts.get("acknowledged")),
    )


def _parse_hash(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadAnswer("hash is missing or not a string")
    # Opaque, but held to the rule callers' hashes are (gateway.identifiers): a hash the
    # gateway hands out can always be acknowledged.
    if not is_identity_hash(value):
        raise BadAnswer(f"hash {HASH_RULE}")
    return value


def _parse_timestamp_ms(value: Any) -> int:
    # bool is an int subclass in Python; true is not a timestamp.
    if isinstance(value, bool):
        raise BadAnswer("created_timestamp is not a number")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value) > _MAX_DIGITS:
            raise BadAnswer("created_timestamp is out of range")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= _MAX_TIMESTAMP_MS:
        raise BadAnswer("created_timestamp is missing or not epoch milliseconds")
    return value


def _parse_acknowledged(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    raise BadAnswer("acknowledged is missing or not a boolean")


def check_acknowledge_body(body: bytes) -> None:
    """Accept a ``PUT .../identity`` 200 answer: empty, ``null``, ``{}`` or an object of meta."""
    if not body.strip():
        return
    document = _load_json(body)
    if document is None:
        return
    if not isinstance(document, dict):
        raise BadAnswer("acknowledge answer is not an object")
    if document.get("errors"):
        raise BadAnswer("acknowledge answer holds errors")


def parse_login(body: bytes) -> LoginToken:
    """The token of a ``POST /v1/users/login`` 200 answer."""
    document = _load_json(body)
    users = document.get("users") if isinstance(document, dict) else None
    if not isinstance(users, list) or not users or not isinstance(users[0], dict):
        raise BadAnswer("login answer has no users")
    token = users[0].get("token")
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
        raise BadAnswer("login answer has no usable token")
    return LoginToken(token=token, expires_at=parse_expires_after(users[0].get("expires_after")))


def parse_expires_after(value: Any) -> dt.datetime:
    """``2018-03-01 15:29:26+00:00`` (documented) or ``2018-03-01T15:29:26.000Z``, as UTC."""
    if not isinstance(value, str):
        raise BadAnswer("login answer has no expires_after")
    try:
        moment = dt.datetime.fromisoformat(value.strip())
        if moment.tzinfo is None:  # no offset given: WhatsApp's clocks are UTC
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset past year 1 or 9999
        raise BadAnswer("expires_after is not a date and time") from None


def parse_error_body(body: bytes) -> UpstreamErrorBody:
    """The first error of a WhatsApp error envelope; empty for HTML, empty or foreign bodies."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UpstreamErrorBody()
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return UpstreamErrorBody()
    first = errors[0]
    code = first.get("code")
    title = first.get("title")
    return UpstreamErrorBody(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        title=title if isinstance(title, str) else None,
    )
