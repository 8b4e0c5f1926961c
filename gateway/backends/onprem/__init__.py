"""The WhatsApp On-Premises API backend (``GET``/``PUT /v1/contacts/{wa_id}/identity``).

- :mod:`~gateway.backends.onprem.client`: :class:`OnPremBackend`, the two calls and the login.
- :mod:`~gateway.backends.onprem.login`: where the bearer token comes from (static, or a login
  session that renews it and backs off after failures).
- :mod:`~gateway.backends.onprem.parse`: tolerant parsing of its answers.
- :mod:`~gateway.backends.onprem.outcomes`: what its error answers mean.
- :mod:`~gateway.backends.onprem.webhook`: the identity-change webhook it POSTs.
"""

from gateway.backends.onprem.client import OnPremBackend

__all__ = ["OnPremBackend"]
