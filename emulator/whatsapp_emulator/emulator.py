"""The bundled WhatsApp Business API emulator: a real HTTP server for tests, demos and development.

It answers the upstream calls the gateway makes, with the paths of two upstreams over one store
of contacts:

- the on-premises API: ``POST /v1/users/login`` (HTTP Basic auth, issues bearer tokens), and
  ``GET`` / ``PUT /v1/contacts/{wa_id}/identity`` (read and acknowledge an identity; bearer token
  required; WhatsApp's error envelope, :func:`error_envelope`);
- Infobip's identity API: ``GET`` / ``PUT /whatsapp/1/{sender}/contacts/{wa_id}/identity``
  (``Authorization: App <api key>``, the key given as ``infobip_api_key``; ``createdAt`` in ISO
  8601; ``204`` on acknowledge, ``409`` for a stale hash; Infobip's error envelope,
  :func:`infobip_error_envelope`). Any digits-only ``sender`` is served, so one emulator stands
  for several Infobip senders; all of them see the same contacts.

It starts with :data:`DEMO_CONTACTS` and can serve every response variant the gateway must
tolerate. Acknowledging through either API acknowledges the one stored identity.

In tests, run it on a free port and script it through its state::

    async with RunningEmulator() as emu:
        emu.state.set_identity("15551234567", "Rc/eg9Rl0JA=", acknowledged=False)
        emu.state.add_fault(
            Fault("/v1/contacts/*/identity", status=503, json=error_envelope(1016))
        )
        ...  # point the gateway at emu.url
        assert emu.state.count("GET", "/v1/contacts/15551234567/identity") == 2

By hand, drive the same state through the control API under ``/_emulator/`` (JSON, no auth)::

    curl -X PUT localhost:9090/_emulator/contacts/16315551234 -d '{"hash": "Rc/eg9Rl0JA="}'
    curl -X POST localhost:9090/_emulator/faults -d '{"path": "/v1/*", "drop": true}'
    curl localhost:9090/_emulator/requests?method=PUT
    curl -H 'Authorization: App infobip-dev-key' \\
        localhost:9090/whatsapp/1/447860099299/contacts/16315551234/identity

Control API: ``PUT|GET|DELETE /_emulator/contacts/{wa_id}``, ``POST|DELETE /_emulator/faults``,
``POST /_emulator/tokens/revoke``, ``GET|PUT /_emulator/settings``, ``GET|DELETE
/_emulator/requests``, ``GET|DELETE /_emulator/webhooks`` and ``POST /_emulator/reset``. The JSON
fields are those of :class:`Contact`, :class:`Fault` and :class:`Settings`; bad input gets
``400 {"error": ...}``. Every path outside ``/_emulator/`` is upstream, on-premises or Infobip
alike: recorded, then open to faults (whose ``status``/``json`` bodies are sent as they are, so a
test can play an Infobip-shaped error too), then authenticated as its API does.

With the ``webhook_url`` setting, the emulator plays the WhatsApp client's identity-change webhook:
when a contact's identity changes (an existing contact gets a different hash, or a new contact is
stored unacknowledged), it POSTs a ``user_identity_changed`` system message (see
:func:`identity_changed_webhook`) to that URL in the background, one delivery at a time, in order,
without retries. With the ``webhook_secret`` setting too, each POST carries ``Authorization:
Bearer <secret>``, as an on-premises client configured with a webhook secret sends it (the
settings show a secret as ``"set"``, never its value). Each attempt is recorded as a
:class:`WebhookDelivery`::

    curl -X PUT localhost:9090/_emulator/settings -d '{"webhook_url": "http://127.0.0.1:8081/webhook"}'
    curl -X PUT localhost:9090/_emulator/contacts/16315551234 -d '{"hash": "Su9l2C1YsAk="}'
    curl localhost:9090/_emulator/webhooks
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import logging
import secrets
import signal
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

import aiohttp
from aiohttp import BasicAuth, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from gateway.serving.appserver import AppServer

__all__ = [
    "DEFAULT_INFOBIP_API_KEY",
    "DEFAULT_PASSWORD",
    "DEFAULT_TOKEN_LIFETIME",
    "DEFAULT_USERNAME",
    "DEMO_CONTACTS",
    "ERROR_TITLES",
    "INFOBIP_ERROR_TEXTS",
    "META",
    "Contact",
    "EmulatorState",
    "Fault",
    "RecordedRequest",
    "RunningEmulator",
    "Settings",
    "WebhookDelivery",
    "create_app",
    "error_envelope",
    "identity_changed_webhook",
    "infobip_error_envelope",
    "run_emulator",
]

logger = logging.getLogger("whatsapp_emulator.emulator")

META: Mapping[str, str] = MappingProxyType({"api_status": "stable", "version": "v2.45.1"})

ERROR_TITLES: Mapping[int, str] = MappingProxyType(
    {
        1000: "Generic error",
        1004: "Resource already exists",
        1005: "Access denied",
        1006: "Resource not found",
        1008: "Required parameter is missing",
        1009: "Parameter value is not valid",
        1010: "Parameter is not required",
        1011: "Service not ready",
        1013: "User is not valid",
        1014: "Internal error",
        1015: "Too many requests",
        1016: "System overloaded",
        1017: "Not primary master",
        1018: "Not primary Coreapp",
        1021: "Bad user",
        1023: "Database error occurred",
        1024: "Password change required",
        1025: "Invalid request",
        1026: "Receiver incapable",
        1028: "A user_identity_changed system notification requires acknowledgement",
        1031: "Sender account has been locked",
    }
)

# Infobip's error envelope: messageId -> its text. Infobip documents the envelope and the
# statuses (400, 401, 403, 404, 409, 429, 500); the messageIds other than BAD_REQUEST and
# UNAUTHORIZED, and every text but those two, are this emulator's choice.
INFOBIP_ERROR_TEXTS: Mapping[str, str] = MappingProxyType(
    {
        "BAD_REQUEST": "Bad request",
        "UNAUTHORIZED": "Invalid login details",
        "FORBIDDEN": "Forbidden",
        "NOT_FOUND": "Identity or recipient not found",
        "CONFLICT": "Incorrect identity hash",
        "TOO_MANY_REQUESTS": "Too many requests",
        "GENERAL_ERROR": "Something went wrong. Please contact support.",
    }
)

_LOGIN_PATH = "/v1/users/login"
_INFOBIP_PREFIX = "/whatsapp/1/"
_CONTROL_PREFIX = "/_emulator/"
DEFAULT_USERNAME = "admin"
DEFAULT_PASSWORD = "secret"
DEFAULT_TOKEN_LIFETIME = 7 * 24 * 3600.0
DEFAULT_INFOBIP_API_KEY = "infobip-dev-key"

Shape = Literal["object", "array"]
AcknowledgedAs = Literal["bool", "string"]
TimestampAs = Literal["int", "string"]
LoginMode = Literal["ok", "reject", "password_change", "locked"]
ExpiresFormat = Literal["space", "iso"]
AckSuccessBody = Literal["null", "{}", "empty", "meta"]
AckMismatch = Literal["400", "409"]
FaultMethod = Literal["GET", "PUT", "POST", "DELETE"]

_SHUTDOWN_TIMEOUT = 1.0
# A webhook receiver that does not answer in this time counts as a failed delivery.
_WEBHOOK_TIMEOUT = 5.0
_MAX_WEBHOOK_URL_LENGTH = 2048
# The last millisecond of year 9999, the last a createdAt in ISO 8601 can name.
_MAX_TIMESTAMP_MS = 253402300799999


def error_envelope(code: int, details: str | None = None) -> dict[str, Any]:
    """The upstream error body: ``{"errors": [{code, title, details?}], "meta": {...}}``."""
    error: dict[str, Any] = {"code": code, "title": ERROR_TITLES.get(code, "Generic error")}
    if details is not None:
        error["details"] = details
    return {"errors": [error], "meta": dict(META)}


def infobip_error_envelope(message_id: str, text: str | None = None) -> dict[str, Any]:
    """Infobip's error body: ``{"requestError": {"serviceException": {messageId, text}}}``.

    ``text`` defaults to the one :data:`INFOBIP_ERROR_TEXTS` gives ``message_id``::

        Fault("/whatsapp/1/*", status=429, json=infobip_error_envelope("TOO_MANY_REQUESTS"))
    """
    if text is None:
        text = INFOBIP_ERROR_TEXTS.get(message_id, "Something went wrong")
    return {"requestError": {"serviceException": {"messageId": message_id, "text": text}}}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but JSON true is never a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _one_of(value: object, choices: Any, name: str) -> None:
    allowed = get_args(choices)
    _require(value in allowed, f"{name} must be one of {', '.join(map(repr, allowed))}")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True)
class Contact:
    """A contact's identity as stored, plus the shape its ``GET`` answer takes.

    ``shape``, ``acknowledged_as``, ``timestamp_as`` and ``meta`` pick the tolerated variants
    of the on-premises answer: ``contacts`` as an object or a one-element array, ``acknowledged``
    as a bool or a string, ``created_timestamp`` (epoch ms, up to year 9999) as an int or a
    numeric string, with or without ``meta``. Infobip's answer has one shape only.
    """

    hash: str
    created_timestamp: int = dataclasses.field(default_factory=_now_ms)
    acknowledged: bool = False
    shape: Shape = "object"
    acknowledged_as: AcknowledgedAs = "bool"
    timestamp_as: TimestampAs = "int"
    meta: bool = True

    def __post_init__(self) -> None:
        # Checked at run time too: the control API builds contacts from untrusted JSON.
        _require(isinstance(self.hash, str) and self.hash != "", "hash must be a non-empty string")
        _require(
            _is_int(self.created_timestamp) and 0 <= self.created_timestamp <= _MAX_TIMESTAMP_MS,
            "created_timestamp must be a non-negative integer (epoch milliseconds) "
            "no later than year 9999",
        )
        _require(isinstance(self.acknowledged, bool), "acknowledged must be a boolean")
        _one_of(self.shape, Shape, "shape")
        _one_of(self.acknowledged_as, AcknowledgedAs, "acknowledged_as")
        _one_of(self.timestamp_as, TimestampAs, "timestamp_as")
        _require(isinstance(self.meta, bool), "meta must be a boolean")

    def identity_body(self) -> dict[str, Any]:
        """The body of ``GET /v1/contacts/{wa_id}/identity`` for this contact."""
        contact = {
            "hash": self.hash,
            "created_timestamp": (
                str(self.created_timestamp)
                if self.timestamp_as == "string"
                else self.created_timestamp
            ),
            "acknowledged": (
                str(self.acknowledged).lower()
                if self.acknowledged_as == "string"
                else self.acknowledged
            ),
        }
        body: dict[str, Any] = {"contacts": [contact] if self.shape == "array" else contact}
        if self.meta:
            body["meta"] = dict(META)
        return body

    def infobip_identity_body(self) -> dict[str, Any]:
        """The body of Infobip's ``GET /whatsapp/1/{sender}/contacts/{wa_id}/identity``, with
        ``created_timestamp`` as ISO 8601 UTC to the millisecond::

            {"acknowledged": true, "hash": "eU2Fdi4EMUw=", "createdAt": "2022-02-18T08:12:26.422Z"}
        """
        seconds, millis = divmod(self.created_timestamp, 1000)
        created = dt.datetime.fromtimestamp(seconds, dt.UTC)
        return {
            "acknowledged": self.acknowledged,
            "hash": self.hash,
            "createdAt": f"{created:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z",
        }


DEMO_CONTACTS: Mapping[str, Contact] = MappingProxyType(
    {
        # An identity change not yet acknowledged: sends to this user would be blocked.
        "16315551234": Contact("UKD6Y/5SqDU=", 1600132094000, acknowledged=False),
        # An identity already acknowledged.
        "16315550000": Contact("Su9l2C1YsAk=", 1598000000000, acknowledged=True),
        # The user of the documented user_identity_changed webhook example.
        "16315553601": Contact("Rc/eg9Rl0JA=", 1602535356000, acknowledged=False),
        # Every tolerated variant at once: one-element array, strings, no meta.
        "16315557777": Contact(
            "7ip6vdrEfSg=",
            1610000000000,
            acknowledged=True,
            shape="array",
            acknowledged_as="string",
            timestamp_as="string",
            meta=False,
        ),
    }
)


@dataclasses.dataclass(frozen=True)
class _SampleAnswer:
    """What drop_mid_body, stall_after_headers, malformed and body_size send when the fault
    names no body: a valid identity answer of one API, cut, broken or padded."""

    body: dict[str, Any]

    @property
    def whole(self) -> bytes:
        return json.dumps(self.body).encode()

    @property
    def malformed(self) -> bytes:
        return self.whole[: len(self.whole) // 2]

    @property
    def min_padded_size(self) -> int:
        return len(json.dumps({**self.body, "padding": ""}).encode())

    def padded(self, size: int) -> bytes:
        """The answer padded to exactly ``size`` (>= :attr:`min_padded_size`) bytes of JSON."""
        padding = "x" * (size - self.min_padded_size)
        return json.dumps({**self.body, "padding": padding}).encode()


_ONPREM_SAMPLE = _SampleAnswer(DEMO_CONTACTS["16315551234"].identity_body())
_INFOBIP_SAMPLE = _SampleAnswer(DEMO_CONTACTS["16315551234"].infobip_identity_body())
_MIN_BODY_SIZE = max(_ONPREM_SAMPLE.min_padded_size, _INFOBIP_SAMPLE.min_padded_size)


def _sample_answer(path: str) -> _SampleAnswer:
    """The sample answer of the API a request path belongs to."""
    return _INFOBIP_SAMPLE if path.startswith(_INFOBIP_PREFIX) else _ONPREM_SAMPLE


@dataclasses.dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for upstream requests whose path matches ``path`` (fnmatch).

    It applies to ``method`` (any if None) for ``times`` requests (forever if None), before any
    normal handling, auth included. It waits ``delay`` seconds, then does one of: answer
    ``status`` with ``body`` (raw text) or ``json`` and ``headers``; ``drop`` the connection
    without a response; ``drop_mid_body`` (headers with the full Content-Length, half the body,
    close); ``stall_after_headers`` for that many seconds (headers and one byte, then silence,
    then close); ``malformed`` (200 with invalid JSON); ``body_size`` (200 with valid JSON of
    exactly that many bytes). With none of those, the request is answered normally after the delay.
    The bodies it makes up are identity answers in the shape of the path's API (on-premises or
    Infobip); ``status`` with ``json`` sends that JSON as it is, in whichever API's envelope.
    """

    path: str
    method: FaultMethod | None = None
    times: int | None = 1
    delay: float = 0.0
    status: int | None = None
    body: str | None = None
    json: Any = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop: bool = False
    drop_mid_body: bool = False
    stall_after_headers: float | None = None
    malformed: bool = False
    body_size: int | None = None

    def __post_init__(self) -> None:
        # Checked at run time too: the control API builds faults from untrusted JSON.
        _require(isinstance(self.path, str) and self.path != "", "path must be a non-empty pattern")
        if self.method is not None:
            _one_of(self.method, FaultMethod, "method")
        _require(
            self.times is None or (_is_int(self.times) and self.times >= 1),
            "times must be a positive integer, or null for forever",
        )
        _require(_is_number(self.delay) and self.delay >= 0, "delay must be seconds >= 0")
        _require(
            self.status is None or (_is_int(self.status) and 100 <= self.status <= 599),
            "status must be an HTTP status code",
        )
        _require(self.body is None or isinstance(self.body, str), "body must be a string")
        _require(self.body is None or self.json is None, "give body or json, not both")
        _require(
            isinstance(self.headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()),
            "headers must map names to string values",
        )
        for flag in ("drop", "drop_mid_body", "malformed"):
            _require(isinstance(getattr(self, flag), bool), f"{flag} must be a boolean")
        _require(
            self.stall_after_headers is None
            or (_is_number(self.stall_after_headers) and self.stall_after_headers >= 0),
            "stall_after_headers must be seconds >= 0",
        )
        _require(
            self.body_size is None
            or (_is_int(self.body_size) and self.body_size >= _MIN_BODY_SIZE),
            f"body_size must be an integer >= {_MIN_BODY_SIZE}",
        )
        self._check_one_action()

    def _check_one_action(self) -> None:
        kinds = [
            self.drop,
            self.drop_mid_body,
            self.stall_after_headers is not None,
            self.malformed,
            self.body_size is not None,
        ]
        _require(
            sum(kinds) <= 1,
            "give at most one of drop, drop_mid_body, stall_after_headers, malformed, body_size",
        )
        has_response = self.body is not None or self.json is not None or bool(self.headers)
        if self.drop or self.malformed or self.body_size is not None:
            _require(
                self.status is None and not has_response,
                "status, body, json and headers go with a plain answer, drop_mid_body or a stall",
            )
        elif not (self.drop_mid_body or self.stall_after_headers is not None):
            _require(not has_response or self.status is not None, "body/json/headers need status")
            _require(self.status is not None or self.delay > 0, "the fault does nothing")

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (self.method is None or self.method == method) and fnmatch.fnmatchcase(
            path, self.path
        )

    def payload(self, default: bytes = b"") -> bytes:
        """The response body this fault sends: ``json``, ``body`` or ``default``."""
        if self.json is not None:
            return json.dumps(self.json).encode()
        if self.body is not None:
            return self.body.encode()
        return default

    def response_headers(self, payload: bytes) -> CIMultiDict[str]:
        """The fault's headers, with a JSON Content-Type unless it names one or has no body."""
        headers = CIMultiDict(self.headers)
        if payload:
            headers.setdefault("Content-Type", "application/json")
        return headers


@dataclasses.dataclass
class _ArmedFault:
    fault: Fault
    remaining: int | None


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the emulated upstream behaves beyond its stored contacts.

    ``login_mode`` makes every login fail: ``reject`` (401, empty body), ``password_change``
    (401, code 1024) or ``locked`` (401, code 1031). ``expires_format`` is ``space``
    (``2026-03-01 15:29:26+00:00``, documented) or ``iso`` (``2026-03-01T15:29:26.000Z``).
    ``token_lifetime`` is in seconds. ``ack_success_body`` is the body of a successful
    acknowledge; ``ack_mismatch`` how a stale hash fails: ``400`` (code 1009) or ``409``.
    ``password_change_required`` refuses logins (401, code 1024) until one sends ``new_password``.
    ``synthetic_contacts`` makes every unknown digit-only wa_id a known contact (benchmarks).
    ``webhook_url`` (http or https) receives a ``user_identity_changed`` webhook for every
    identity change; None sends none. ``webhook_secret``, when set, goes with every webhook as
    ``Authorization: Bearer <secret>``; it is left out of the repr, and the control API shows it
    only as ``"set"`` or null (see :meth:`to_json`).

    These settings shape the on-premises API only (login, tokens, acknowledge variants); the
    Infobip API always answers as Infobip documents it.
    """

    login_mode: LoginMode = "ok"
    expires_format: ExpiresFormat = "space"
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME
    ack_success_body: AckSuccessBody = "null"
    ack_mismatch: AckMismatch = "400"
    password_change_required: bool = False
    synthetic_contacts: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Checked at run time too: the control API builds settings from untrusted JSON.
        _one_of(self.login_mode, LoginMode, "login_mode")
        _one_of(self.expires_format, ExpiresFormat, "expires_format")
        _require(
            _is_number(self.token_lifetime) and self.token_lifetime > 0,
            "token_lifetime must be seconds > 0",
        )
        _one_of(self.ack_success_body, AckSuccessBody, "ack_success_body")
        _one_of(self.ack_mismatch, AckMismatch, "ack_mismatch")
        _require(
            isinstance(self.password_change_required, bool),
            "password_change_required must be a boolean",
        )
        _require(isinstance(self.synthetic_contacts, bool), "synthetic_contacts must be a boolean")
        _require(
            self.webhook_url is None or _is_http_url(self.webhook_url),
            "webhook_url must be an http or https URL, or null",
        )
        _require(
            self.webhook_secret is None or _is_header_token(self.webhook_secret),
            "webhook_secret must be a non-empty string of printable ASCII without spaces, or null",
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as the control API shows them: ``webhook_secret`` is ``"set"`` or null."""
        shown = dataclasses.asdict(self)
        shown["webhook_secret"] = None if self.webhook_secret is None else "set"
        return shown


def _is_header_token(value: object) -> bool:
    """Whether ``value`` can follow ``Bearer`` in a header as it is."""
    return (
        isinstance(value, str)
        and value != ""
        and value.isascii()
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


def _check_infobip_api_key(api_key: object) -> None:
    _require(
        _is_header_token(api_key),
        "infobip_api_key must be a non-empty string of printable ASCII without spaces",
    )


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or len(value) > _MAX_WEBHOOK_URL_LENGTH:
        return False
    if not value.isprintable() or any(c.isspace() for c in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """An upstream request as the emulator received it (control API calls are not recorded)."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names; repeated headers joined with ", "
    body: str
    time: float  # time.time() on arrival

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def to_json(self) -> dict[str, Any]:
        """The record as the control API shows it."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "body": self.body,
            "time": self.time,
        }


@dataclasses.dataclass(frozen=True)
class WebhookDelivery:
    """One attempt to POST a webhook: the receiver's HTTP ``status``, or the ``error`` if none."""

    url: str
    payload: Mapping[str, Any]
    status: int | None
    error: str | None
    time: float  # time.time() when the attempt ended

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        """The delivery as the control API shows it."""
        return {
            "url": self.url,
            "payload": self.payload,
            "status": self.status,
            "error": self.error,
            "ok": self.ok,
            "time": self.time,
        }


def identity_changed_webhook(wa_id: str, identity_hash: str, timestamp_ms: int) -> dict[str, Any]:
    """The on-premises webhook body announcing that ``wa_id`` now has ``identity_hash``.

    ``timestamp_ms`` is when the change was detected; the message's ``timestamp`` is in seconds::

        {"messages": [{"from": "16315551234", "id": "ABGG...", "timestamp": "1602535356",
          "type": "system", "system": {"type": "user_identity_changed", "identity": "Su9l2C1YsAk=",
          "user": "16315551234", "body": "User 16315551234 changed their identity"}}]}
    """
    return {
        "messages": [
            {
                "from": wa_id,
                "id": "ABGG" + secrets.token_hex(12).upper(),
                "timestamp": str(timestamp_ms // 1000),
                "type": "system",
                "system": {
                    "type": "user_identity_changed",
                    "identity": identity_hash,
                    "user": wa_id,
                    "body": f"User {wa_id} changed their identity",
                },
            }
        ]
    }


IdentityListener = Callable[[str, Contact], None]


class EmulatorState:
    """Everything the emulator remembers: contacts, faults, settings, tokens, requests and
    webhook deliveries.

    Only touch it from the event loop that serves the emulator (it has no locks).
    ``infobip_api_key`` is the key Infobip's API wants after ``Authorization: App``; it, and
    the ``webhook_url`` and ``webhook_secret`` given here, survive a :meth:`reset`.
    """

    def __init__(
        self,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        infobip_api_key: str = DEFAULT_INFOBIP_API_KEY,
    ) -> None:
        _check_infobip_api_key(infobip_api_key)
        self.username = username
        self._default_password = password
        self._infobip_api_key = infobip_api_key
        self._default_settings = Settings(
            token_lifetime=token_lifetime, webhook_url=webhook_url, webhook_secret=webhook_secret
        )
        self._tokens: dict[str, float] = {}  # token -> time.monotonic() at which it expires
        self._identity_listeners: list[IdentityListener] = []
        self.reset()

    def reset(self) -> None:
        """Restore the demo contacts, default settings and password; forget faults, requests
        and webhook deliveries.

        Issued tokens stay valid (unless revoked), so a long-lived client need not log in again.
        """
        self._password = self._default_password
        self._settings = self._default_settings
        self._contacts: dict[str, Contact] = dict(DEMO_CONTACTS)
        self._faults: list[_ArmedFault] = []
        self._records: list[RecordedRequest] = []
        self._deliveries: list[WebhookDelivery] = []

    # Contacts.

    def set_identity(
        self,
        wa_id: str,
        hash: str,
        *,
        created_timestamp: int | None = None,
        acknowledged: bool = False,
        shape: Shape = "object",
        acknowledged_as: AcknowledgedAs = "bool",
        timestamp_as: TimestampAs = "int",
        meta: bool = True,
    ) -> Contact:
        """Store a contact's identity (see :class:`Contact`), replacing any; returns it.

        A new hash with ``acknowledged=False`` is an identity change; ``created_timestamp``
        (epoch ms) defaults to now, when the change was "detected". The identity listeners hear
        of a change: a known contact's hash replaced by another, or a new unacknowledged contact.
        """
        previous = self._contacts.get(wa_id)
        contact = Contact(
            hash,
            _now_ms() if created_timestamp is None else created_timestamp,
            acknowledged,
            shape,
            acknowledged_as,
            timestamp_as,
            meta,
        )
        self._contacts[wa_id] = contact
        changed = not acknowledged if previous is None else previous.hash != contact.hash
        if changed:
            for listener in list(self._identity_listeners):
                listener(wa_id, contact)
        return contact

    def add_identity_listener(self, listener: IdentityListener) -> None:
        """Call ``listener(wa_id, contact)`` on every identity change :meth:`set_identity` makes."""
        self._identity_listeners.append(listener)

    def remove_identity_listener(self, listener: IdentityListener) -> None:
        """Stop calling a listener added with :meth:`add_identity_listener`."""
        self._identity_listeners.remove(listener)

    def identity(self, wa_id: str) -> Contact | None:
        """The stored identity of a contact, or None if unknown.

        With ``synthetic_contacts`` every well-formed wa_id is known: it gets a stable identity
        derived from its digits the first time it is asked for (benchmarks read 100,000 ids).
        """
        contact = self._contacts.get(wa_id)
        if contact is None and self._settings.synthetic_contacts and wa_id.isdigit():
            digest = hashlib.sha256(wa_id.encode()).digest()
            contact = Contact(base64.b64encode(digest[:8]).decode(), 1600000000000)
            self._contacts[wa_id] = contact
        return contact

    def remove_identity(self, wa_id: str) -> bool:
        """Forget a contact; True if it was known."""
        return self._contacts.pop(wa_id, None) is not None

    def acknowledge(self, wa_id: str) -> None:
        """Mark a known contact's identity acknowledged."""
        self._contacts[wa_id] = dataclasses.replace(self._contacts[wa_id], acknowledged=True)

    # Faults.

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault after those already armed (the first added that matches is used)."""
        self._faults.append(_ArmedFault(fault, fault.times))

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self._faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first armed fault matching a request, counted as used once; None if none."""
        for armed in self._faults:
            if armed.fault.matches(method, path):
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        self._faults.remove(armed)
                return armed.fault
        return None

    # Settings and credentials.

    @property
    def settings(self) -> Settings:
        """The current settings."""
        return self._settings

    def update_settings(self, **changes: Any) -> Settings:
        """Change some settings (names and values as in :class:`Settings`)."""
        self._settings = dataclasses.replace(self._settings, **changes)
        return self._settings

    def credentials_match(self, username: str, password: str) -> bool:
        """Whether a login's Basic credentials are right."""
        return secrets.compare_digest(username.encode(), self.username.encode()) and (
            secrets.compare_digest(password.encode(), self._password.encode())
        )

    def infobip_key_matches(self, api_key: str) -> bool:
        """Whether the key an Infobip call sends after ``Authorization: App`` is right."""
        # surrogatepass: a header's undecodable bytes never raise, and never match an ASCII key.
        sent = api_key.encode("utf-8", "surrogatepass")
        return secrets.compare_digest(sent, self._infobip_api_key.encode())

    def change_password(self, new_password: str) -> None:
        """Store a new password; a required password change is then done."""
        self._password = new_password
        self.update_settings(password_change_required=False)

    # Tokens.

    def issue_token(self) -> tuple[str, dt.datetime]:
        """A new bearer token and the time it expires, rounded down to what expires_after says."""
        lifetime = self._settings.token_lifetime
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + lifetime
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
        return token, expires_at.replace(microsecond=0)

    def token_valid(self, token: str) -> bool:
        """Whether a bearer token was issued, is not expired and was not revoked."""
        expires = self._tokens.get(token)
        if expires is not None and time.monotonic() >= expires:
            del self._tokens[token]
            return False
        return expires is not None

    def revoke_tokens(self) -> int:
        """Refuse every token issued so far; returns how many were still valid."""
        revoked = sum(1 for expires in self._tokens.values() if expires > time.monotonic())
        self._tokens.clear()
        return revoked

    # Recorded requests.

    def record(self, request: RecordedRequest) -> None:
        """Remember an upstream request."""
        self._records.append(request)

    def requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded upstream requests, oldest first, by method and path (an fnmatch pattern)."""
        return [
            r
            for r in self._records
            if (method is None or r.method == method.upper())
            and (path is None or fnmatch.fnmatchcase(r.path, path))
        ]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many recorded upstream requests match (see :meth:`requests`)."""
        return len(self.requests(method, path))

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._records.clear()

    # Webhook deliveries.

    def record_webhook_delivery(self, delivery: WebhookDelivery) -> None:
        """Remember a webhook delivery attempt."""
        self._deliveries.append(delivery)

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """The webhook delivery attempts so far, oldest first (a copy)."""
        return list(self._deliveries)

    def clear_webhook_deliveries(self) -> None:
        """Forget the webhook delivery attempts."""
        self._deliveries.clear()


# The application: upstream front door (record, fault, auth), on-premises endpoints, Infobip
# endpoints, control API.

_STATE = web.AppKey("state", EmulatorState)
# Set when the server shuts down, so delays and stalls in flight end at once.
_CLOSING = web.AppKey("closing", asyncio.Event)


def create_app(state: EmulatorState) -> web.Application:
    """The emulator as an aiohttp application serving ``state``."""
    app = web.Application(middlewares=[_upstream_front_door])
    app[_STATE] = state
    app[_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_wake_sleepers)
    app.cleanup_ctx.append(_webhook_sender)
    app.router.add_post(_LOGIN_PATH, _login)
    app.router.add_get("/v1/contacts/{wa_id}/identity", _get_identity)
    app.router.add_put("/v1/contacts/{wa_id}/identity", _acknowledge_identity)
    infobip_identity = _INFOBIP_PREFIX + "{sender}/contacts/{wa_id}/identity"
    app.router.add_get(infobip_identity, _infobip_get_identity)
    app.router.add_put(infobip_identity, _infobip_acknowledge_identity)
    control = _CONTROL_PREFIX.rstrip("/")
    app.router.add_put(control + "/contacts/{wa_id}", _control_set_contact)
    app.router.add_get(control + "/contacts/{wa_id}", _control_get_contact)
    app.router.add_delete(control + "/contacts/{wa_id}", _control_delete_contact)
    app.router.add_post(control + "/faults", _control_add_fault)
    app.router.add_delete(control + "/faults", _control_clear_faults)
    app.router.add_post(control + "/tokens/revoke", _control_revoke_tokens)
    app.router.add_get(control + "/settings", _control_get_settings)
    app.router.add_put(control + "/settings", _control_update_settings)
    app.router.add_get(control + "/requests", _control_requests)
    app.router.add_delete(control + "/requests", _control_clear_requests)
    app.router.add_get(control + "/webhooks", _control_webhooks)
    app.router.add_delete(control + "/webhooks", _control_clear_webhooks)
    app.router.add_post(control + "/reset", _control_reset)
    return app


async def _wake_sleepers(app: web.Application) -> None:
    app[_CLOSING].set()


async def _sleep_unless_closing(request: web.Request, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(request.app[_CLOSING].wait(), seconds)


async def _webhook_sender(app: web.Application) -> AsyncIterator[None]:
    """While the app runs, turn the state's identity changes into webhook deliveries."""
    state = app[_STATE]
    timeout = aiohttp.ClientTimeout(total=_WEBHOOK_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sender = _WebhookSender(state, session)
        state.add_identity_listener(sender.identity_changed)
        try:
            yield
        finally:
            state.remove_identity_listener(sender.identity_changed)
            await sender.aclose()


@dataclasses.dataclass(frozen=True)
class _QueuedWebhook:
    """A webhook waiting its turn, with the URL and secret in force when it was queued."""

    url: str
    payload: dict[str, Any]
    secret: str | None = dataclasses.field(repr=False)


class _WebhookSender:
    """POSTs identity-change webhooks one at a time, in the order the changes happened.

    Each goes where ``webhook_url`` pointed, with the ``webhook_secret`` as a bearer token if one
    was set, when the change happened: a later settings change does not redirect it.
    """

    def __init__(self, state: EmulatorState, session: aiohttp.ClientSession) -> None:
        self._state = state
        self._session = session
        self._queue: asyncio.Queue[_QueuedWebhook] = asyncio.Queue()
        self._worker = asyncio.create_task(self._deliver_in_order(), name="emulator webhooks")

    def identity_changed(self, wa_id: str, contact: Contact) -> None:
        """Queue the webhook for a change, if ``webhook_url`` is set; never blocks."""
        settings = self._state.settings
        if settings.webhook_url is not None:
            payload = identity_changed_webhook(wa_id, contact.hash, contact.created_timestamp)
            self._queue.put_nowait(
                _QueuedWebhook(settings.webhook_url, payload, settings.webhook_secret)
            )

    async def aclose(self) -> None:
        """Stop delivering; webhooks still queued are dropped."""
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if not self._queue.empty():
            logger.info("emulator stopped with %d webhook(s) undelivered", self._queue.qsize())

    async def _deliver_in_order(self) -> None:
        while True:
            webhook = await self._queue.get()
            self._state.record_webhook_delivery(await self._deliver(webhook))

    async def _deliver(self, webhook: _QueuedWebhook) -> WebhookDelivery:
        url, payload = webhook.url, webhook.payload
        headers = {} if webhook.secret is None else {"Authorization": f"Bearer {webhook.secret}"}
        try:
            async with self._session.post(url, json=payload, headers=headers) as response:
                await response.read()
        # Whatever goes wrong is the receiver's problem, to record, never the emulator's.
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            logger.warning("webhook delivery to %s failed: %s", url, error)
            return WebhookDelivery(url, payload, None, error, time.time())
        delivery = WebhookDelivery(url, payload, response.status, None, time.time())
        if not delivery.ok:
            logger.warning("webhook delivery to %s answered HTTP %d", url, response.status)
        return delivery


@web.middleware
async def _upstream_front_door(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every upstream request, play a matching fault, else check auth and route it.

    Upstream is every path outside the control API: the on-premises paths and Infobip's alike.
    """
    if request.path.startswith(_CONTROL_PREFIX):
        return await handler(request)
    state = request.app[_STATE]
    state.record(await _recorded(request))
    fault = state.take_fault(request.method, request.path)
    if fault is not None:
        logger.debug("fault for %s %s: %s", request.method, request.path, fault)
        response = await _play_fault(request, fault)
        if response is not None:
            return response
    refusal = _refuse_unauthenticated(request, state)
    if refusal is not None:
        return refusal
    return await handler(request)


def _refuse_unauthenticated(request: web.Request, state: EmulatorState) -> web.Response | None:
    """The 401 a request gets from its API for missing or wrong credentials; None if it passes.

    Login takes Basic credentials in its own handler; Infobip's paths want ``App <api key>``
    (a 401 in Infobip's envelope); every other on-premises path a valid bearer token (a bare 401).
    """
    if request.path == _LOGIN_PATH:
        return None
    if request.path.startswith(_INFOBIP_PREFIX):
        if state.infobip_key_matches(_credentials(request, "app")):
            return None
        return _infobip_error_response(401, "UNAUTHORIZED")
    if state.token_valid(_credentials(request, "bearer")):
        return None
    return web.Response(status=401)


async def _recorded(request: web.Request) -> RecordedRequest:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    body = await request.read()
    return RecordedRequest(
        method=request.method,
        path=request.path,
        headers=headers,
        body=body.decode("utf-8", errors="replace"),
        time=time.time(),
    )


def _credentials(request: web.Request, scheme: str) -> str:
    """What follows ``scheme`` (lower case; matched in any case) in the Authorization header;
    empty if the header is missing or names another scheme."""
    sent_scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if sent_scheme.lower() == scheme else ""


async def _play_fault(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """Misbehave as ``fault`` says; None when it only delays the normal answer."""
    if fault.delay > 0:
        await _sleep_unless_closing(request, fault.delay)
    if fault.drop:
        _close_connection(request)
        # aiohttp's attempt to send this fails quietly on the closed transport.
        return web.Response()
    sample = _sample_answer(request.path)
    if fault.drop_mid_body:
        payload = fault.payload(sample.whole)
        return await _send_part_then_close(request, fault, payload, len(payload) // 2, hold=0.0)
    if fault.stall_after_headers is not None:
        payload = fault.payload(sample.whole)
        return await _send_part_then_close(
            request, fault, payload, 1, hold=fault.stall_after_headers
        )
    if fault.malformed:
        return web.Response(body=sample.malformed, content_type="application/json")
    if fault.body_size is not None:
        return web.Response(body=sample.padded(fault.body_size), content_type="application/json")
    if fault.status is not None:
        payload = fault.payload()
        return web.Response(
            status=fault.status, body=payload, headers=fault.response_headers(payload)
        )
    return None


async def _send_part_then_close(
    request: web.Request, fault: Fault, payload: bytes, sent: int, *, hold: float
) -> web.StreamResponse:
    """Send headers announcing all of ``payload`` but only its first ``sent`` bytes; after
    ``hold`` seconds of silence, close the connection."""
    response = web.StreamResponse(
        status=fault.status or 200, headers=fault.response_headers(payload)
    )
    response.content_length = len(payload)
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client may already have gone
        await response.write(payload[:sent])
        if hold > 0:
            await _sleep_unless_closing(request, hold)
    _close_connection(request)
    return response


def _close_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _error_response(status: int, code: int, details: str | None = None) -> web.Response:
    return web.json_response(error_envelope(code, details), status=status)


def _infobip_error_response(status: int, message_id: str, text: str | None = None) -> web.Response:
    return web.json_response(infobip_error_envelope(message_id, text), status=status)


# On-premises endpoints.


async def _login(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    settings = state.settings
    if settings.login_mode == "reject":
        return web.Response(status=401)
    if settings.login_mode == "password_change":
        return _error_response(401, 1024)
    if settings.login_mode == "locked":
        return _error_response(401, 1031)
    try:
        auth = BasicAuth.decode(request.headers.get("Authorization", ""))
    except ValueError:
        return _error_response(401, 1005, "HTTP Basic credentials are required")
    if not state.credentials_match(auth.login, auth.password):
        return _error_response(401, 1005, "invalid credentials")
    if settings.password_change_required:
        new_password = await _new_password(request)
        if new_password is None:
            return _error_response(401, 1024)
        state.change_password(new_password)
    token, expires_at = state.issue_token()
    expires_after = expires_at.strftime(
        "%Y-%m-%dT%H:%M:%S.000Z" if settings.expires_format == "iso" else "%Y-%m-%d %H:%M:%S+00:00"
    )
    logger.debug("login succeeded; token expires %s", expires_after)
    body = {"users": [{"token": token, "expires_after": expires_after}], "meta": dict(META)}
    return web.json_response(body)


async def _new_password(request: web.Request) -> str | None:
    """The ``new_password`` a login body carries, if any."""
    try:
        body = json.loads(await request.text())
    except ValueError:
        return None
    new_password = body.get("new_password") if isinstance(body, dict) else None
    return new_password if isinstance(new_password, str) and new_password else None


async def _get_identity(request: web.Request) -> web.Response:
    contact = request.app[_STATE].identity(request.match_info["wa_id"])
    if contact is None:
        return _error_response(404, 1006, "unknown contact")
    return web.json_response(contact.identity_body())


_ACK_SUCCESS_BODIES: Mapping[str, bytes] = MappingProxyType(
    {
        "null": b"null",
        "{}": b"{}",
        "empty": b"",
        "meta": json.dumps({"meta": dict(META)}).encode(),
    }
)


async def _acknowledge_identity(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    wa_id = request.match_info["wa_id"]
    contact = state.identity(wa_id)
    if contact is None:
        return _error_response(404, 1006, "unknown contact")
    try:
        body = json.loads(await request.text())
    except ValueError:
        return _error_response(400, 1008, "a JSON body with hash is required")
    sent = body.get("hash") if isinstance(body, dict) else None
    if not isinstance(sent, str) or not sent:
        return _error_response(400, 1008, "hash is required")
    if sent != contact.hash:
        if state.settings.ack_mismatch == "409":
            return web.json_response(
                status=409, data={"errors": [{"code": 409, "title": "Incorrect identity hash"}]}
            )
        return _error_response(400, 1009, "hash is not the contact's current identity")
    state.acknowledge(wa_id)
    return web.Response(
        body=_ACK_SUCCESS_BODIES[state.settings.ack_success_body], content_type="application/json"
    )


# Infobip endpoints: the front door has already checked the App key.


def _infobip_contact(request: web.Request) -> tuple[str, Contact] | web.Response:
    """The wa_id and contact an Infobip identity path names, or the error answer: 400 if the
    sender or the wa_id is not digits only, 404 if the contact is unknown."""
    sender, wa_id = request.match_info["sender"], request.match_info["wa_id"]
    for name, number in (("sender", sender), ("user number", wa_id)):
        if not (number.isascii() and number.isdigit()):
            return _infobip_error_response(
                400, "BAD_REQUEST", f"The {name} must be digits only, in international form"
            )
    contact = request.app[_STATE].identity(wa_id)
    if contact is None:
        return _infobip_error_response(404, "NOT_FOUND")
    return wa_id, contact


async def _infobip_get_identity(request: web.Request) -> web.Response:
    """``GET /whatsapp/1/{sender}/contacts/{wa_id}/identity``: 200 with the contact's identity
    (see :meth:`Contact.infobip_identity_body`), whichever digits-only sender asks."""
    found = _infobip_contact(request)
    if isinstance(found, web.Response):
        return found
    _, contact = found
    return web.json_response(contact.infobip_identity_body())


async def _infobip_acknowledge_identity(request: web.Request) -> web.Response:
    """``PUT /whatsapp/1/{sender}/contacts/{wa_id}/identity`` with ``{"hash": "..."}``: 204 with
    no body, the identity now acknowledged, when the hash is the contact's current one; 409 when
    it is not; 400 when the body is not a JSON object with a non-empty string ``hash``."""
    found = _infobip_contact(request)
    if isinstance(found, web.Response):
        return found
    wa_id, contact = found
    try:
        body = json.loads(await request.text())
    except ValueError:
        return _infobip_error_response(400, "BAD_REQUEST", "A JSON body with hash is required")
    sent = body.get("hash") if isinstance(body, dict) else None
    if not isinstance(sent, str) or not sent:
        return _infobip_error_response(400, "BAD_REQUEST", "hash is required")
    if sent != contact.hash:
        return _infobip_error_response(409, "CONFLICT")
    request.app[_STATE].acknowledge(wa_id)
    return web.Response(status=204)


# Control API.


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _control_body(request: web.Request) -> dict[str, Any]:
    """The JSON object a control call sends (an empty body is an empty object)."""
    text = await request.text()
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise _bad_request(f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object")
    return body


def _contact_json(wa_id: str, contact: Contact) -> web.Response:
    return web.json_response({"wa_id": wa_id, **dataclasses.asdict(contact)})


async def _control_set_contact(request: web.Request) -> web.Response:
    body = await _control_body(request)
    wa_id = request.match_info["wa_id"]
    try:
        contact = request.app[_STATE].set_identity(wa_id, **body)
    except (TypeError, ValueError) as exc:  # TypeError: missing hash or an unknown field
        raise _bad_request(str(exc)) from exc
    return _contact_json(wa_id, contact)


async def _control_get_contact(request: web.Request) -> web.Response:
    wa_id = request.match_info["wa_id"]
    contact = request.app[_STATE].identity(wa_id)
    if contact is None:
        return web.json_response(status=404, data={"error": "unknown contact"})
    return _contact_json(wa_id, contact)


async def _control_delete_contact(request: web.Request) -> web.Response:
    if not request.app[_STATE].remove_identity(request.match_info["wa_id"]):
        return web.json_response(status=404, data={"error": "unknown contact"})
    return web.Response(status=204)


async def _control_add_fault(request: web.Request) -> web.Response:
    body = await _control_body(request)
    try:
        fault = Fault(**body)
    except (TypeError, ValueError) as exc:  # TypeError: missing path or an unknown field
        raise _bad_request(str(exc)) from exc
    request.app[_STATE].add_fault(fault)
    return web.json_response(status=201, data=dataclasses.asdict(fault))


async def _control_clear_faults(request: web.Request) -> web.Response:
    request.app[_STATE].clear_faults()
    return web.Response(status=204)


async def _control_revoke_tokens(request: web.Request) -> web.Response:
    return web.json_response({"revoked": request.app[_STATE].revoke_tokens()})


async def _control_get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].settings.to_json())


async def _control_update_settings(request: web.Request) -> web.Response:
    body = await _control_body(request)
    try:
        settings = request.app[_STATE].update_settings(**body)
    except (TypeError, ValueError) as exc:  # TypeError: an unknown setting
        raise _bad_request(str(exc)) from exc
    return web.json_response(settings.to_json())


async def _control_requests(request: web.Request) -> web.Response:
    records = request.app[_STATE].requests(
        request.query.get("method") or None, request.query.get("path") or None
    )
    return web.json_response({"requests": [r.to_json() for r in records]})


async def _control_clear_requests(request: web.Request) -> web.Response:
    request.app[_STATE].clear_requests()
    return web.Response(status=204)


async def _control_webhooks(request: web.Request) -> web.Response:
    deliveries = request.app[_STATE].webhook_deliveries
    return web.json_response({"webhooks": [d.to_json() for d in deliveries]})


async def _control_clear_webhooks(request: web.Request) -> web.Response:
    request.app[_STATE].clear_webhook_deliveries()
    return web.Response(status=204)


async def _control_reset(request: web.Request) -> web.Response:
    request.app[_STATE].reset()
    return web.Response(status=204)


# Running it.


class RunningEmulator(AppServer):
    """The emulator serving on a socket for the life of an ``async with`` block.

    ::

        async with RunningEmulator(port=0, infobip_api_key="k3y") as emu:
            await client.post(emu.url + "/v1/users/login", auth=("admin", "secret"))
            await client.get(
                emu.url + "/whatsapp/1/447860099299/contacts/16315551234/identity",
                headers={"Authorization": "App k3y"},
            )

    The keyword arguments are those of :class:`EmulatorState`.
    """

    name = "WhatsApp API emulator"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        ssl_context: ssl.SSLContext | None = None,
        *,
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        infobip_api_key: str = DEFAULT_INFOBIP_API_KEY,
    ) -> None:
        # A short shutdown timeout: stalls wake on shutdown, and nothing here needs a grace.
        super().__init__(host, port, ssl_context=ssl_context, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        self.state = EmulatorState(
            username,
            password,
            token_lifetime,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            infobip_api_key=infobip_api_key,
        )

    def create_app(self) -> web.Application:
        return create_app(self.state)

    @property
    def url(self) -> str:
        """Its base URL, such as ``http://127.0.0.1:9090``."""
        return self.base_url


async def run_emulator(
    host: str,
    port: int,
    *,
    username: str,
    password: str,
    token_lifetime: float,
    certfile: str | None = None,
    keyfile: str | None = None,
    synthetic_contacts: bool = False,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    infobip_api_key: str = DEFAULT_INFOBIP_API_KEY,
) -> None:
    """Serve the emulator until cancelled or sent SIGINT/SIGTERM, announcing it on stdout.

    With ``certfile`` (and ``keyfile`` unless the certificate file holds the key) it serves HTTPS.
    With ``webhook_url`` it POSTs identity-change webhooks there, with ``webhook_secret`` as a
    bearer token if given (a reset keeps both). Infobip's API takes ``infobip_api_key``. An
    invalid URL, secret or key raises ValueError before anything listens. The announcement shows
    the demo password and API key, but never a chosen one, nor the webhook secret.
    """
    if keyfile is not None and certfile is None:
        raise ValueError("keyfile needs certfile")
    # Raise ValueError for a bad URL, secret or key.
    Settings(webhook_url=webhook_url, webhook_secret=webhook_secret)
    _check_infobip_api_key(infobip_api_key)
    ssl_context = None
    if certfile is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(certfile, keyfile)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with RunningEmulator(
            host,
            port,
            username,
            password,
            ssl_context,
            token_lifetime=token_lifetime,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            infobip_api_key=infobip_api_key,
        ) as emulator:
            emulator.state.update_settings(synthetic_contacts=synthetic_contacts)
            # Only the well-known demo password and key are shown; chosen ones stay private.
            shown = password if password == DEFAULT_PASSWORD else "<the configured password>"
            shown_key = (
                infobip_api_key
                if infobip_api_key == DEFAULT_INFOBIP_API_KEY
                else "<the configured key>"
            )
            webhooks = f"; identity-change webhooks to {webhook_url}" if webhook_url else ""
            if webhook_url and webhook_secret:
                webhooks += " with the configured bearer secret"
            print(
                f"WhatsApp API emulator listening on {emulator.url} "
                f"(login {username} / {shown}; Infobip under {_INFOBIP_PREFIX} with App "
                f"{shown_key}; demo contacts {', '.join(DEMO_CONTACTS)}; "
                f"control API under {_CONTROL_PREFIX}{webhooks})",
                flush=True,
            )
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
