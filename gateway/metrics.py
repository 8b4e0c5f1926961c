"""Prometheus metrics: the go-grpc-prometheus names dashboards expect, plus the gateway's own.

Each :class:`Metrics` owns its registry, so several gateways can live in one test process.

    metrics = Metrics()
    metrics.rpc_handled("GetIdentity", grpc.StatusCode.OK, 0.0012)
    text = metrics.exposition()            # what GET /metrics returns
"""

from __future__ import annotations

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SERVICE = "whatsapp.identity.v1.IdentityService"
METHODS = ("GetIdentity", "AcknowledgeIdentity")
# Latency buckets from 0.5 ms (a cache hit) to 10 s (a slow upstream with a long deadline).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the gateway exports, with the label sets of the hot path bound once."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=r
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self._handling = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            grpc_labels,
            buckets=_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "identity_gateway_cache_hits", "GetIdentity calls answered from the cache.", registry=r
        )
        self.cache_misses = Counter(
            "identity_gateway_cache_misses",
            "GetIdentity calls that found no fresh cached identity.",
            registry=r,
        )
        self.cache_bypasses = Counter(
            "identity_gateway_cache_bypasses",
            "GetIdentity calls with bypass_cache set.",
            registry=r,
        )
        self.cache_evictions = Counter(
            "identity_gateway_cache_evictions",
            "Cached identities evicted to respect --cache-max-entries.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "identity_gateway_cache_entries", "Identities currently cached.", registry=r
        )
        self.singleflight_joins = Counter(
            "identity_gateway_singleflight_joins",
            "Cache misses that joined an upstream read already in flight for the same wa_id.",
            registry=r,
        )
        self._upstream_requests = Counter(
            "identity_gateway_upstream_requests",
            "HTTP requests sent to the WhatsApp API, by operation and HTTP status "
            "('none' when no answer came).",
            ("operation", "status"),
            registry=r,
        )
        self._upstream_seconds = Histogram(
            "identity_gateway_upstream_request_seconds",
            "Latency of HTTP requests to the WhatsApp API.",
            ("operation",),
            buckets=_BUCKETS,
            registry=r,
        )
        self._logins = Counter(
            "identity_gateway_upstream_logins",
            "Logins to the WhatsApp API, by outcome.",
            ("outcome",),
            registry=r,
        )
        # Bind the hot path's children once instead of looking labels up on every RPC.
        self._started_by_method = {m: self._started.labels("unary", SERVICE, m) for m in METHODS}
        self._handling_by_method = {m: self._handling.labels("unary", SERVICE, m) for m in METHODS}
        self._handled_children: dict[tuple[str, grpc.StatusCode], Counter] = {}
        for method in METHODS:
            for code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND):
                self._handled_child(method, code)

    def rpc_started(self, method: str) -> None:
        self._started_by_method[method].inc()

    def rpc_handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self._handled_child(method, code).inc()
        self._handling_by_method[method].observe(seconds)

    def _handled_child(self, method: str, code: grpc.StatusCode) -> Counter:
        child = self._handled_children.get((method, code))
        if child is None:
            child = self._handled.labels("unary", SERVICE, method, code.name)
            self._handled_children[(method, code)] = child
        return child

    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None:
        self._upstream_requests.labels(operation, str(status) if status else "none").inc()
        self._upstream_seconds.labels(operation).observe(seconds)

    def login(self, outcome: str) -> None:
        self._logins.labels(outcome).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return prometheus_client.generate_latest(self.registry)
