"""The RPC boundary: requests in, statuses out.

- :mod:`gateway.serving.servicer`: ``IdentityService``: validate, authorize, cache or single
  flight, backend, answer; the one place failures become statuses (via :mod:`~.status`).
- :mod:`gateway.serving.hit_path`: the cache-hit short path of ``GetIdentity``, installed only
  when its preconditions hold.
- :mod:`gateway.serving.status`: the one table from failures to gRPC codes, reasons, details.
- :mod:`gateway.serving.journal`: each RPC noted as one record, counted and logged in batches.
- :mod:`gateway.serving.routes`: which sender answers a request, its backend and cache keys.
- :mod:`gateway.serving.decoding`, :mod:`~.validation`, :mod:`~.authz`, :mod:`~.policy`:
  requests and callers.
- :mod:`gateway.serving.cached`: whether a value from the shared store is its key's answer.
- :mod:`gateway.serving.webhooks`, :mod:`~.appserver`: the HTTP listener for pushed changes,
  with its connection bound and read timeouts.
"""
