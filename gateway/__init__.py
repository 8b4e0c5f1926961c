"""whatsapp-identity-gateway: a gRPC gateway over the WhatsApp Business API's identity endpoints.

The data path, top to bottom: :mod:`gateway.service` (RPCs in, statuses out) →
:mod:`gateway.validation` → :mod:`gateway.cache` (the store: this process or
:mod:`gateway.redis_store`; single flight) → :mod:`gateway.upstream` (the WhatsApp API client,
with :mod:`gateway.auth` and the safeguards of :mod:`gateway.resilience`) →
:mod:`gateway.parse` → :mod:`gateway.errors` (the one status mapping). :mod:`gateway.server`
wires it into a ``grpc.aio`` server with health, reflection, metrics, the webhook endpoint
(:mod:`gateway.webhooks`) and the change bus (:mod:`gateway.changes`); :mod:`gateway.cli` is
the command line.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
