"""whatsapp-identity-gateway: a gRPC gateway over the WhatsApp Business API's identity endpoints.

The data path, top to bottom: :mod:`gateway.serving.servicer` (RPCs in, statuses out) →
:mod:`gateway.serving.validation` → :mod:`gateway.store.cache` (the store: this process or
:mod:`gateway.store.redis_store`; single flight) → :mod:`gateway.backends.onprem.client` (the WhatsApp API client,
with :mod:`gateway.backends.onprem.login` and the safeguards of :mod:`gateway.backends.safeguards`) →
:mod:`gateway.backends.onprem.parse` → :mod:`gateway.serving.status` (the one status mapping). :mod:`gateway.app.server`
wires it into a ``grpc.aio`` server with health, reflection, metrics, the webhook endpoint
(:mod:`gateway.serving.webhooks`) and the change bus (:mod:`gateway.store.changes`); :mod:`gateway.app.cli` is
the command line.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
