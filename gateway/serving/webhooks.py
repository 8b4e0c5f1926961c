"""The HTTP listener for identity-change webhooks (``POST /webhook``), feeding the servicer.

:func:`create_webhook_app` serves it (``POST /webhook``, ``GET /healthz``), parses each body
with the On-Premises parser (:func:`gateway.backends.onprem.webhook.parse_webhook`) and hands
every non-empty batch of reports to a callback; :class:`WebhookServer` runs that app on a
socket::

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

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.backends.onprem.webhook import IdentityChangeReport, WebhookError, parse_webhook
from gateway.serving.appserver import AppServer

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
# aiohttp waits this long for a handler in flight, then as long again after cancelling it.
_SHUTDOWN_TIMEOUT = 0.5


OnChanges = Callable[[list[IdentityChangeReport]], Awaitable[None]]


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
