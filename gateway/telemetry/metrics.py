"""Prometheus metrics: the go-grpc-prometheus names dashboards expect, plus the gateway's own.

Each :class:`Metrics` owns its registry, so several gateways can live in one test process.

The per-RPC series (``grpc_server_*``, cache hits, misses, bypasses, single-flight joins) are
counted in plain integers, in batches, by :class:`gateway.serving.journal.RpcJournal`, and
turned into Prometheus families by a collector at scrape time, which first has the journal count
what it holds: a prometheus-client counter takes a lock and several calls per increment, which at
thousands of cache hits a second costs more than the hit itself. Everything else (upstream
requests, logins, evictions) uses prometheus-client's own counters and histograms.

    metrics = Metrics()
    metrics.rpc_handled("GetIdentity", grpc.StatusCode.OK, 0.0012)
    text = prometheus_client.generate_latest(metrics.registry)   # what GET /metrics returns
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.contract import METHODS, SERVICE_NAME, STREAMING_METHODS

# The circuit breaker's states (gateway.backends.safeguards.BreakerState values) as a gauge.
_BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}
GRPC_TYPES = {
    method: "server_stream" if method in STREAMING_METHODS else "unary" for method in METHODS
}
# Which cache counters a GetIdentity's cache outcome (RpcRecord.cache) adds to.
_CACHE_COUNTS = {
    "hit": ("hits",),
    "miss": ("misses",),
    "joined": ("misses", "singleflight_joins"),
    "bypass": ("bypasses",),
}
# Latency buckets from 0.5 ms (a cache hit) to 10 s (a slow upstream with a long deadline).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LatencyHistogram:
    """Bucket counts in a list: observing is a bisect and two additions."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def family_buckets(self) -> list[tuple[str, float]]:
        cumulative, total = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return cumulative


class _RpcCounts(Collector):
    """The hot-path counts, exported in the shapes and names prometheus-client would use."""

    def __init__(self) -> None:
        self.before_collect: list[Callable[[], None]] = []
        self.started = dict.fromkeys(METHODS, 0)
        self.handled: dict[tuple[str, str], int] = {}
        self.latency = {method: _LatencyHistogram() for method in METHODS}
        self.cache = {"hits": 0, "misses": 0, "bypasses": 0, "singleflight_joins": 0}

    def collect(self) -> Iterator[Metric]:
        for fold in self.before_collect:
            fold()
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=labels
        )
        for method, count in dict(self.started).items():
            started.add_metric([GRPC_TYPES[method], SERVICE_NAME, method], count)
        yield started
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            labels=[*labels, "grpc_code"],
        )
        for (method, code), count in sorted(dict(self.handled).items()):
            handled.add_metric([GRPC_TYPES[method], SERVICE_NAME, method, code], count)
        yield handled
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels=labels,
        )
        for method, histogram in self.latency.items():
            handling.add_metric(
                [GRPC_TYPES[method], SERVICE_NAME, method],
                histogram.family_buckets(),
                histogram.sum,
            )
        yield handling
        descriptions = {
            "hits": "GetIdentity calls answered from the cache.",
            "misses": "GetIdentity calls that found no fresh cached identity.",
            "bypasses": "GetIdentity calls with bypass_cache set.",
            "singleflight_joins": "Cache misses that joined an upstream read already in flight "
            "for the same wa_id.",
        }
        for key, count in dict(self.cache).items():
            name = f"identity_gateway_{'cache_' if key != 'singleflight_joins' else ''}{key}"
            yield CounterMetricFamily(name, descriptions[key], value=count)


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._rpc = _RpcCounts()
        r.register(self._rpc)
        self.cache_evictions = Counter(
            "identity_gateway_cache_evictions",
            "Cached identities evicted to respect --cache-max-entries.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "identity_gateway_cache_entries",
            "Identities currently cached in this process (0 with the Redis store).",
            registry=r,
        )
        self._upstream_requests = Counter(
            "identity_gateway_upstream_requests",
            "HTTP requests sent upstream, by sender, operation and HTTP status "
            "('none' when no answer came).",
            ("sender", "operation", "status"),
            registry=r,
        )
        self._upstream_seconds = Histogram(
            "identity_gateway_upstream_request_seconds",
            "Latency of HTTP requests upstream, by sender and operation.",
            ("sender", "operation"),
            buckets=BUCKETS,
            registry=r,
        )
        self._retries = Counter(
            "identity_gateway_upstream_retries",
            "Upstream requests retried after an UNAVAILABLE-class outcome, by sender and method.",
            ("sender", "method"),
            registry=r,
        )
        self._rejections = Counter(
            "identity_gateway_upstream_rejections",
            "Calls the gateway did not send upstream, by sender and reason (circuit_open, "
            "rate_limited, paused, overloaded).",
            ("sender", "reason"),
            registry=r,
        )
        self._breaker_state = Gauge(
            "identity_gateway_upstream_circuit_state",
            "Each sender's upstream circuit breaker: 0 closed, 1 half-open, 2 open.",
            ("sender",),
            registry=r,
        )
        self._breaker_transitions = Counter(
            "identity_gateway_upstream_circuit_transitions",
            "Circuit breaker state changes, by sender and the state entered.",
            ("sender", "state"),
            registry=r,
        )
        self.cache_backend_degraded = Gauge(
            "identity_gateway_cache_backend_degraded",
            "1 while the shared cache (Redis) is unreachable and reads go upstream.",
            registry=r,
        )
        self._cache_backend_bad_values = Counter(
            "identity_gateway_cache_backend_bad_values",
            "Values read from the shared cache (Redis) that were no answer for their key "
            "(undecodable, oversized, another user's or sender's, or a key of another Redis "
            "type): each was a miss for that key and was deleted.",
            registry=r,
        )
        self._cache_backend_errors = Counter(
            "identity_gateway_cache_backend_errors",
            "Failed calls to the shared cache (Redis), by operation.",
            ("operation",),
            registry=r,
        )
        self._logins = Counter(
            "identity_gateway_upstream_logins",
            "Logins to an upstream, by sender and outcome.",
            ("sender", "outcome"),
            registry=r,
        )

    # per RPC (counted by gateway.journal in batches): plain integer arithmetic

    @property
    def started(self) -> dict[str, int]:
        """RPCs started, by method: the request path adds to it in place."""
        return self._rpc.started

    def rpc_handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method, code.name)
        handled = self._rpc.handled
        handled[key] = handled.get(key, 0) + 1
        self._rpc.latency[method].observe(seconds)

    def cache_outcome(self, cache: str) -> None:
        """Count a GetIdentity's way through the cache: hit, miss, joined (a miss that joined
        an upstream read in flight) or bypass."""
        for key in _CACHE_COUNTS[cache]:
            self._rpc.cache[key] += 1

    def fold_before_collect(self, fold: Callable[[], None]) -> None:
        """Have every scrape call ``fold`` first (to count RPCs noted but not yet counted)."""
        self._rpc.before_collect.append(fold)

    # next to network calls: prometheus-client's own objects

    def sender(self, label: str) -> SenderMetrics:
        """The observer of one sender's backend: its series carry ``sender="<label>"``
        (the number, or ``default`` in flag mode). Only configured senders get one, so the
        label is bounded. Its breaker starts closed, so the gauge exists from the start."""
        observer = SenderMetrics(self, label)
        self._breaker_state.labels(label).set(0)
        return observer

    def cache_backend_error(self, operation: str) -> None:
        self._cache_backend_errors.labels(operation).inc()

    def cache_backend_bad_value(self) -> None:
        self._cache_backend_bad_values.inc()

    def cache_backend_state(self, degraded: bool) -> None:
        self.cache_backend_degraded.set(1 if degraded else 0)


class SenderMetrics:
    """One sender's upstream metrics: a :class:`~gateway.backends.base.BackendObserver`."""

    def __init__(self, metrics: Metrics, label: str) -> None:
        self._metrics = metrics
        self.label = label

    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None:
        m = self._metrics
        m._upstream_requests.labels(self.label, operation, str(status) if status else "none").inc()
        m._upstream_seconds.labels(self.label, operation).observe(seconds)

    def upstream_retry(self, operation: str) -> None:
        self._metrics._retries.labels(self.label, operation).inc()

    def upstream_rejected(self, reason: str) -> None:
        self._metrics._rejections.labels(self.label, reason).inc()

    def breaker_changed(self, state: str) -> None:
        """The circuit breaker entered ``state`` (``closed``, ``half_open`` or ``open``)."""
        self._metrics._breaker_state.labels(self.label).set(_BREAKER_LEVELS[state])
        self._metrics._breaker_transitions.labels(self.label, state).inc()

    def login(self, outcome: str) -> None:
        self._metrics._logins.labels(self.label, outcome).inc()
