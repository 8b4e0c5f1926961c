"""The HTTP listener for identity-change webhooks (spec §7), feeding the servicer.

``POST /webhook`` is the default sender's, ``POST /webhook/{number}`` a named sender's: both
take the On-Premises client's webhook, authenticated by that sender's webhook secret, sent as
``Authorization: Bearer <secret>`` or as the password of HTTP Basic (so a webhook URL
``https://hook:<secret>@host/webhook`` works; the secret is never accepted as the user name).
Anything else is ``401`` and changes nothing; the comparison takes constant time. ``GET
/healthz`` answers probes. Each body is parsed by
:func:`gateway.backends.onprem.webhook.parse_webhook` and every non-empty batch of reports is
handed to a callback with the sender's number::

    async def on_changes(sender: str, reports: list[IdentityChangeReport]) -> None: ...

    senders = {"15550001111": WebhookSender("15550001111", secret)}
    async with WebhookServer("0.0.0.0", 8081, on_changes, senders=senders,
                             default="15550001111") as webhooks:
        ...  # give the WhatsApp client webhooks.url (or webhooks.url_of(number))

A sender whose secret is None takes unauthenticated pushes: the gateway allows that only with
``--webhook-allow-unauthenticated``, logged as a warning at start.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from gateway.backends.onprem.webhook import IdentityChangeReport, WebhookError, parse_webhook
from gateway.serving.appserver import AppServer, ListenerLimits
from gateway.telemetry.logs import RateLimitedLog

__all__ = [
    "MAX_WEBHOOK_BODY_BYTES",
    "WEBHOOK_LIMITS",
    "OnChanges",
    "WebhookSender",
    "WebhookServer",
    "create_webhook_app",
]

logger = logging.getLogger(__name__)

# Real webhooks batch a few messages; a quarter of a MiB is plenty and bounds the parse.
MAX_WEBHOOK_BODY_BYTES = 256 * 1024
# aiohttp waits this long for a handler in flight, then as long again after cancelling it.
_SHUTDOWN_TIMEOUT = 0.5
# What the webhook listener lets clients hold (spec §7): 256 connections at most (and never more
# than a quarter of the process's descriptors), 10 s for a request's headers (and an idle
# keep-alive), 10 s for its body. A WebhookServer made without limits reads this when made.
WEBHOOK_LIMITS = ListenerLimits(max_connections=256, header_timeout=10.0, body_timeout=10.0)


OnChanges = Callable[[str, list[IdentityChangeReport]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class WebhookSender:
    """An On-Premises sender taking webhooks: its number ("" in flag mode) and its secret
    (None: unauthenticated, which the gateway allows only when told to)."""

    number: str
    secret: str | None = dataclasses.field(default=None, repr=False)


_ON_CHANGES = web.AppKey[OnChanges]("on_changes")
_SENDERS = web.AppKey[Mapping[str, WebhookSender]]("senders")
_DEFAULT = web.AppKey[str | None]("default")
_REFUSED = web.AppKey[RateLimitedLog]("refused")


def create_webhook_app(
    on_changes: OnChanges,
    *,
    senders: Mapping[str, WebhookSender] | None = None,
    default: str | None = "",
) -> web.Application:
    """An aiohttp application taking On-Premises webhooks for ``senders`` (by number).

    ``POST /webhook`` is ``default``'s (404 when None or not among ``senders``), ``POST
    /webhook/{number}`` that sender's (404 for a number not among them). Without ``senders``
    there is one unnamed sender with no secret (tools and tests). A push that is not
    authenticated gets ``401``; a valid payload ``200 {"accepted": N}`` once ``await
    on_changes(number, reports)`` returns (not called when N is 0); a malformed one ``400
    {"error": ...}``; a body over :data:`MAX_WEBHOOK_BODY_BYTES` ``413``; and if
    ``on_changes`` raises, ``500`` (the WhatsApp client delivers it again). Other methods get
    ``405``.
    """
    app = web.Application(client_max_size=MAX_WEBHOOK_BODY_BYTES)
    app[_ON_CHANGES] = on_changes
    app[_SENDERS] = senders if senders is not None else {"": WebhookSender("")}
    app[_DEFAULT] = default
    # A client can send refused pushes at will: their lines are bounded to one a second per kind.
    app[_REFUSED] = RateLimitedLog(logger, interval=1.0)
    app.router.add_post("/webhook", _receive_webhook)
    app.router.add_post("/webhook/{number}", _receive_webhook)
    app.router.add_get("/healthz", _healthz)
    return app


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def authenticated(authorization: str | None, secret: str) -> bool:
    """Whether an ``Authorization`` value carries ``secret``: as a bearer token, or as the
    password of HTTP Basic. Constant time in the secret's content."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    offered: str | None = None
    if scheme.lower() == "bearer":
        offered = credentials
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # not base64 (or not ASCII), or not UTF-8
            return False
        _user, colon, password = decoded.partition(":")
        offered = password if colon else None
    if offered is None:
        return False
    try:
        offered_bytes = offered.encode("utf-8")
    except UnicodeEncodeError:  # a header byte that was not UTF-8 arrives as a lone surrogate
        return False
    return hmac.compare_digest(offered_bytes, secret.encode("utf-8"))


async def _receive_webhook(request: web.Request) -> web.Response:
    number = request.match_info.get("number", request.app[_DEFAULT])
    sender = request.app[_SENDERS].get(number) if number is not None else None
    if sender is None:
        return _error(404, "no On-Premises sender takes webhooks here")
    if sender.secret is not None and not authenticated(
        request.headers.get("Authorization"), sender.secret
    ):
        request.app[_REFUSED].warning(
            "unauthenticated", "refused an unauthenticated webhook from %s", request.remote
        )
        return _error(
            401,
            "authenticate with the sender's webhook secret (Bearer, or HTTP Basic password)",
            {"WWW-Authenticate": 'Basic realm="identity-gateway webhook"'},
        )
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
        request.app[_REFUSED].warning(
            "malformed", "refused a webhook from %s: %s", request.remote, exc
        )
        return _error(400, str(exc))
    if reports:
        try:
            await request.app[_ON_CHANGES](sender.number, reports)
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

    ``limits`` bound its connections and how long a request may take to arrive
    (:data:`WEBHOOK_LIMITS` unless given); see :mod:`gateway.serving.appserver`.
    """

    name = "identity-change webhook"

    def __init__(
        self,
        host: str,
        port: int,
        on_changes: OnChanges,
        *,
        senders: Mapping[str, WebhookSender] | None = None,
        default: str | None = "",
        ssl_context: ssl.SSLContext | None = None,
        limits: ListenerLimits | None = None,
    ) -> None:
        # A short grace: on_changes should be quick, and one that hangs must not hold up a stop.
        super().__init__(
            host,
            port,
            ssl_context=ssl_context,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            limits=limits or WEBHOOK_LIMITS,
        )
        self._on_changes = on_changes
        self._senders = senders
        self._default = default

    def create_app(self) -> web.Application:
        return create_webhook_app(self._on_changes, senders=self._senders, default=self._default)

    @property
    def url(self) -> str:
        """The default sender's webhook URL, such as ``http://10.0.0.5:8081/webhook``."""
        return self.base_url + "/webhook"

    def url_of(self, number: str) -> str:
        """A named sender's webhook URL, ``.../webhook/{number}``."""
        return f"{self.base_url}/webhook/{number}"
