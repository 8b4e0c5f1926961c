"""The identity-change webhook the WhatsApp On-Premises client POSTs, parsed.

The on-premises client POSTs ``{"messages": [...], "contacts": [...], "statuses": [...]}`` (any
subset) to the business's webhook URL. Two kinds of message tell of an identity change:

- a ``user_identity_changed`` system message::

      {"from": "16315553601", "id": "ABGG...", "timestamp": "1602535356", "type": "system",
       "system": {"type": "user_identity_changed", "identity": "Rc/eg9Rl0JA=",
                  "user": "16315553601"}}

- with ``show_security_notifications`` on, any inbound message whose ``identity`` object is not
  yet acknowledged: ``"identity": {"acknowledged": false, "created_timestamp": 1602535356000,
  "hash": "Rc/eg9Rl0JA="}``.

:func:`parse_webhook` picks those out as :class:`IdentityChangeReport` and ignores everything else
(text messages, statuses, other system messages). A payload that is not a JSON object, whose
``messages`` is not a list, or in which any picked-out change has a bad wa_id, hash or timestamp
is refused whole with :class:`WebhookError`::

    parse_webhook(b'{"messages": [...]}')    # [IdentityChangeReport("16315553601", ...)]
    parse_webhook(b"[]")                     # raises WebhookError("the payload must be ...")
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.identifiers import HASH_RULE, WA_ID_RULE, hash_violation, normalized_wa_id

# 9999-12-31T23:59:59Z: anything later is not a time the WhatsApp client could have written.
_MAX_EPOCH_SECONDS = 253_402_300_799
_MAX_EPOCH_MS = _MAX_EPOCH_SECONDS * 1000 + 999
_DIGITS = re.compile(r"[0-9]{1,15}", re.ASCII)


class WebhookError(ValueError):
    """A webhook payload that cannot be trusted; the message names the field, never its value."""


@dataclasses.dataclass(frozen=True)
class IdentityChangeReport:
    """One user's identity changed: ``wa_id`` (normalised digits) now has ``hash``.

    ``create_time_ms`` is when the WhatsApp client detected the change, in epoch milliseconds, or
    None when the webhook did not say. A system message gives it in whole seconds only.
    """

    wa_id: str
    hash: str
    create_time_ms: int | None


def parse_webhook(body: bytes) -> list[IdentityChangeReport]:
    """The identity changes a webhook POST body reports, in order, duplicates collapsed.

    Raises :class:`WebhookError` if the body is not a JSON object, ``messages`` is not a list of
    objects, or an identity change in it has a bad wa_id, hash or timestamp. Duplicates (same
    wa_id and hash) are collapsed into the first, which takes the earliest time any of them gave.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 too
        raise WebhookError("the payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise WebhookError("the payload must be a JSON object")
    messages = payload.get("messages", [])
    if not isinstance(messages, list):
        raise WebhookError("messages must be a list")
    reports: dict[tuple[str, str], IdentityChangeReport] = {}
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise WebhookError(f"{where} must be an object")
        report = _identity_change(message, where)
        if report is not None:
            key = (report.wa_id, report.hash)
            reports[key] = _earlier(reports[key], report) if key in reports else report
    return list(reports.values())


def _identity_change(message: Mapping[str, Any], where: str) -> IdentityChangeReport | None:
    """The identity change one message reports, or None if it reports none."""
    if message.get("type") == "system":
        system = message.get("system")
        if not isinstance(system, dict):
            raise WebhookError(f"{where}.system must be an object")
        if system.get("type") != "user_identity_changed":
            return None
        # Current payloads name the user in "user", older and Cloud-era ones in "customer".
        if system.get("user") is not None:
            wa_id = _wa_id(system["user"], f"{where}.system.user")
        elif system.get("customer") is not None:
            wa_id = _wa_id(system["customer"], f"{where}.system.customer")
        else:
            wa_id = _wa_id(message.get("from"), f"{where}.from")
        return IdentityChangeReport(
            wa_id,
            _hash(system.get("identity"), f"{where}.system.identity"),
            _seconds_as_ms(message.get("timestamp"), f"{where}.timestamp"),
        )
    identity = message.get("identity")
    if identity is None:
        return None
    if not isinstance(identity, dict):
        raise WebhookError(f"{where}.identity must be an object")
    if _acknowledged(identity.get("acknowledged"), f"{where}.identity.acknowledged"):
        return None  # the business already accepted this identity: nothing changed
    return IdentityChangeReport(
        _wa_id(message.get("from"), f"{where}.from"),
        _hash(identity.get("hash"), f"{where}.identity.hash"),
        _ms(identity.get("created_timestamp"), f"{where}.identity.created_timestamp"),
    )


def _earlier(first: IdentityChangeReport, again: IdentityChangeReport) -> IdentityChangeReport:
    times = [t for t in (first.create_time_ms, again.create_time_ms) if t is not None]
    return dataclasses.replace(first, create_time_ms=min(times) if times else None)


def _wa_id(value: object, field: str) -> str:
    normalized = normalized_wa_id(value) if isinstance(value, str) else None
    if normalized is None:
        raise WebhookError(f"{field} {WA_ID_RULE}")
    return normalized


def _hash(value: object, field: str) -> str:
    if not isinstance(value, str) or hash_violation(value) is not None:
        raise WebhookError(f"{field} {HASH_RULE}")
    return value


def _acknowledged(value: object, field: str) -> bool:
    # Documented as a String, sent as a JSON boolean: accept both, as the identity GET does.
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise WebhookError(f"{field} must be true or false")


def _epoch(value: object, field: str, unit: str, maximum: int) -> int | None:
    """A non-negative integer or string of digits up to ``maximum``; None if absent."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):  # JSON true is not a number
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    if number is None or not 0 <= number <= maximum:
        raise WebhookError(f"{field} must be epoch {unit} as an integer or a string of digits")
    return number


def _seconds_as_ms(value: object, field: str) -> int | None:
    seconds = _epoch(value, field, "seconds", _MAX_EPOCH_SECONDS)
    return None if seconds is None else seconds * 1000


def _ms(value: object, field: str) -> int | None:
    return _epoch(value, field, "milliseconds", _MAX_EPOCH_MS)
