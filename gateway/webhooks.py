"""The identity-change webhook: what the WhatsApp client POSTs when a user's identity changes.

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

:func:`create_webhook_app` serves it (``POST /webhook``, ``GET /healthz``) and hands every non-empty
batch of reports to a callback; :class:`WebhookServer` runs that app on a socket::

    async def on_changes(reports: list[IdentityChangeReport]) -> None:
        for report in reports:
            cache.invalidate(report.wa_id)

    async with WebhookServer("0.0.0.0", 8081, on_changes) as webhooks:
        ...  # configure webhooks.url as the WhatsApp client's webhook URL

The on-premises client does not sign its webhooks, so the endpoint has no authentication: anyone
who can reach it can make the gateway forget cached identities. Expose it only to the WhatsApp
client (a Kubernetes NetworkPolicy, a firewall rule, a private listener).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.appserver import AppServer
from gateway.validation import (
    HASH_RULE,
    WA_ID_RULE,
    hash_violation,
    normalize_wa_id,
    wa_id_violation,
)

__all__ = [
    "MAX_WEBHOOK_BODY_BYTES",
    "IdentityChangeReport",
    "OnChanges",
    "WebhookError",
    "WebhookServer",
    "create_webhook_app",
    "parse_webhook",
]

logger = logging.getLogger(__name__)

# Real webhooks batch a few messages; a quarter of a MiB is plenty and bounds the parse.
MAX_WEBHOOK_BODY_BYTES = 256 * 1024
# 9999-12-31T23:59:59Z: anything later is not a time the WhatsApp client could have written.
_MAX_EPOCH_SECONDS = 253_402_300_799
_MAX_EPOCH_MS = _MAX_EPOCH_SECONDS * 1000 + 999
_DIGITS = re.compile(r"[0-9]{1,15}", re.ASCII)
# aiohttp waits this long for a handler in flight, then as long again after cancelling it.
_SHUTDOWN_TIMEOUT = 0.5


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


OnChanges = Callable[[list[IdentityChangeReport]], Awaitable[None]]


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
    if not isinstance(value, str) or wa_id_violation(value) is not None:
        raise WebhookError(f"{field} {WA_ID_RULE}")
    return normalize_wa_id(value)


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


# The HTTP endpoint.

_ON_CHANGES = web.AppKey[OnChanges]("on_changes")


def create_webhook_app(on_changes: OnChanges, *, path: str = "/webhook") -> web.Application:
    """An aiohttp application taking identity-change webhooks at ``POST {path}``.

    A valid payload gets ``200 {"accepted": N}`` once ``await on_changes(reports)`` returns (it is
    not called when N is 0); a malformed one ``400 {"error": ...}``, a body over
    :data:`MAX_WEBHOOK_BODY_BYTES` ``413``, and if ``on_changes`` raises, ``500`` (the WhatsApp
    client retries failed deliveries). Other methods get ``405``. ``GET /healthz`` answers 200
    for probes. There is no authentication: see the module docstring.
    """
    if not path.startswith("/"):
        raise ValueError("path must start with '/'")
    app = web.Application(client_max_size=MAX_WEBHOOK_BODY_BYTES)
    app[_ON_CHANGES] = on_changes
    app.router.add_post(path, _receive_webhook)
    app.router.add_get("/healthz", _healthz)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _receive_webhook(request: web.Request) -> web.Response:
    too_large = f"the body must be at most {MAX_WEBHOOK_BODY_BYTES} bytes"
    # Refuse a declared oversize at once; a chunked one is cut off by client_max_size on read.
    if (request.content_length or 0) > MAX_WEBHOOK_BODY_BYTES:
        return _error(413, too_large)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, too_large)
    try:
        reports = parse_webhook(body)
    except WebhookError as exc:
        logger.warning("refused a webhook from %s: %s", request.remote, exc)
        return _error(400, str(exc))
    if reports:
        try:
            await request.app[_ON_CHANGES](reports)
        except Exception:
            logger.exception("handling %d identity change(s) from a webhook failed", len(reports))
            return _error(500, "the identity changes could not be handled")
        logger.info("webhook reported %d identity change(s)", len(reports))
    return web.json_response({"accepted": len(reports)})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class WebhookServer(AppServer):
    """The webhook endpoint serving on a socket for the life of an ``async with`` block.

    Leaving the block stops it within about a second, cancelling an ``on_changes`` that hangs::

        async with WebhookServer("127.0.0.1", 0, on_changes) as webhooks:
            await client.post(webhooks.url, json={"messages": []})  # url ends in /webhook
    """

    name = "identity-change webhook"

    def __init__(
        self, host: str, port: int, on_changes: OnChanges, *, path: str = "/webhook"
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        # A short grace: on_changes should be quick, and one that hangs must not hold up a stop.
        super().__init__(host, port, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        self._on_changes = on_changes
        self._path = path

    def create_app(self) -> web.Application:
        return create_webhook_app(self._on_changes, path=self._path)

    @property
    def url(self) -> str:
        """The webhook URL to give the WhatsApp client, such as ``http://10.0.0.5:8081/webhook``."""
        return self.base_url + self._path
