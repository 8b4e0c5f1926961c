"""Backends: where identities come from, one :class:`~gateway.backends.base.Backend` per sender.

- :mod:`gateway.backends.base`: the protocol, its result type and its observer.
- :mod:`gateway.backends.safeguards`: retries, retry budget, circuit breaker, admission,
  pacing and the upstream's 429 pause, for any HTTP backend, deciding by the failure kinds of
  :mod:`gateway.failures`.
- :mod:`gateway.backends.http`: one HTTP exchange over aiohttp's pool, its body caps, the
  classification of transport failures and HTTP statuses, and ``Retry-After``.
- :mod:`gateway.backends.onprem`: the WhatsApp On-Premises API (login, parsing, its codes).
- :mod:`gateway.backends.infobip`: Infobip's identity API (an ``App`` key, parsing).

Nothing here imports the serving or store layers, or gRPC.
"""
