"""The Infobip backend: WhatsApp identities through a Business Solution Provider, one sender
each (``GET``/``PUT /whatsapp/1/{sender}/contacts/{wa_id}/identity``).

- :mod:`~gateway.backends.infobip.client`: :class:`InfobipBackend`, the two calls, what their
  error answers mean, and Infobip's documented rate limit.
- :mod:`~gateway.backends.infobip.parse`: tolerant parsing of its answers.
"""

from gateway.backends.infobip.client import InfobipBackend

__all__ = ["InfobipBackend"]
