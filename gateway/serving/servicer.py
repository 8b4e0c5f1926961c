"""The ``IdentityService`` servicer: RPC in → validate → cache / single flight → backend → RPC out.

This is the one boundary where failures become gRPC statuses: every handler runs inside
:meth:`IdentityServicer._handle`, which turns a failure into its rich status (the table of
:mod:`gateway.serving.status`) and anything unexpected into a generic ``INTERNAL`` /
``GATEWAY_INTERNAL`` for the caller and a full traceback in the log. It also notes each RPC
in the journal, for metrics and the access log.

The caller's deadline becomes one :class:`~gateway.deadline.Deadline` here, and travels as
that value into the single flight and the backend. A hit on this process's cache is answered
before any of this, by :class:`~gateway.serving.hit_path.CacheHitPath` where it is installed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc

from gateway.backends.base import UpstreamIdentity
from gateway.contract import SERVICE_NAME
from gateway.deadline import Deadline
from gateway.failures import BackendFailure, Failure, FieldViolation, InvalidArgument
from gateway.serving.authz import Authorizer, Caller, PermissionDenied, audit_acknowledge
from gateway.serving.decoding import Undecodable, decoder
from gateway.serving.hit_path import CacheHitPath
from gateway.serving.journal import JournalEntry, RpcJournal
from gateway.serving.routes import Route, Routes, cache_key
from gateway.serving.status import Reason, rule_for, to_status
from gateway.serving.validation import normalize_wa_id, validate_acknowledge, validate_get
from gateway.store.cache import IdentityStore
from gateway.store.changes import ChangeBus
from gateway.store.fence import ReadFence
from gateway.store.single_flight import SingleFlight
from gateway.telemetry.logs import (
    MAX_FORWARDED_HEADER,
    REQUEST_ID_HEADER,
    RateLimitedLog,
    RequestIds,
    request_id,
)

log = logging.getLogger(__name__)

# Metadata copied from the caller's RPC onto the upstream request (spec 4.1).
TRACE_HEADERS = (
    REQUEST_ID_HEADER,
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
_TRACE_HEADER_SET = frozenset(TRACE_HEADERS)
_GET = "GetIdentity"
_ACKNOWLEDGE = "AcknowledgeIdentity"
_REPORT = "ReportIdentityChange"
_WATCH = "WatchIdentityChanges"
_ACK_RESPONSE = identity_pb2.AcknowledgeIdentityResponse()
_REPORT_RESPONSE = identity_pb2.ReportIdentityChangeResponse()
MAX_WATCH_FILTER = 1000


class RpcRecord:
    """What one RPC did, filled in as it runs, for its log line and metrics."""

    __slots__ = ("cache", "request_id", "trace", "upstream_status", "wa_id")

    def __init__(self, metadata: Any, ids: RequestIds, oversized: RateLimitedLog) -> None:
        self.trace: dict[str, str] = {}
        for key, value in metadata or ():
            if key in _TRACE_HEADER_SET and isinstance(value, str):
                if len(value) <= MAX_FORWARDED_HEADER:
                    self.trace[key] = value
                else:  # it could make the gateway's own upstream request invalid
                    oversized.warning(
                        key,
                        "did not forward a caller's %s of %d characters (at most %d)",
                        key,
                        len(value),
                        MAX_FORWARDED_HEADER,
                    )
        # Every upstream request and log line of this RPC carries a request id.
        self.request_id = self.trace[REQUEST_ID_HEADER] = ids.of(metadata)
        self.cache: str | None = None
        self.upstream_status: int | None = None
        self.wa_id: str | None = None


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """Serves IdentityService from the cache, the WhatsApp API and the change bus."""

    def __init__(
        self,
        routes: Routes,
        store: IdentityStore,
        journal: RpcJournal,
        authorizer: Authorizer | None = None,
        changes: ChangeBus | None = None,
    ) -> None:
        self._routes = routes
        self._store = store
        self.changes = changes or ChangeBus()
        self._journal = journal
        self._started = journal.metrics.started
        self._authorizer = authorizer
        self._request_ids: RequestIds = journal.request_ids
        # Callers can send oversized trace headers at will: said once a minute per header.
        self._oversized = RateLimitedLog(log, interval=60.0)
        self._flights: SingleFlight[bytes] = SingleFlight()
        self._fence = ReadFence()
        # A change announced on another replica (an acknowledge, a report, a webhook, a read
        # that found a new hash) overtakes this replica's reads in flight, as one made here
        # does; it is known a pub/sub hop later.
        self.changes.on_remote_change(
            lambda change: self._fence.changed(
                cache_key(change.identity.sender, change.identity.wa_id)
            )
        )
        self._in_flight = 0
        self._idle: asyncio.Event | None = None  # created when draining starts
        # Where its preconditions hold, cache hits are answered before the full path.
        self.hits = CacheHitPath.install(
            store, authorizer, journal, routes.prefixes, self._get_full
        )

    @property
    def idle(self) -> bool:
        """Whether no IdentityService RPC is running."""
        return self._in_flight == 0

    async def wait_idle(self) -> None:
        """Return once no IdentityService RPC is running (used while draining)."""
        if self._in_flight == 0:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()

    async def GetIdentity(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The serialized answer (it decodes its own request, as the hit path does)."""
        return await self._get_full(_decode_get(data), context, perf_counter())

    async def _get_full(
        self,
        request: identity_pb2.GetIdentityRequest | Undecodable,
        context: grpc.aio.ServicerContext,
        started: float,
    ) -> bytes:
        answer: bytes = await self._handle(_GET, self._get_identity, request, context, started)
        return answer

    async def AcknowledgeIdentity(
        self, request: identity_pb2.AcknowledgeIdentityRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.AcknowledgeIdentityResponse:
        return await self._handle(_ACKNOWLEDGE, self._acknowledge, request, context)

    async def ReportIdentityChange(
        self, request: identity_pb2.ReportIdentityChangeRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ReportIdentityChangeResponse:
        return await self._handle(_REPORT, self._report, request, context)

    async def WatchIdentityChanges(
        self, request: identity_pb2.WatchIdentityChangesRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._handle(_WATCH, self._watch, request, context)

    # ------------------------------------------------------------------ the operations

    async def _get_identity(
        self,
        request: identity_pb2.GetIdentityRequest,
        context: grpc.aio.ServicerContext,
        record: RpcRecord,
    ) -> bytes:
        wa_id = record.wa_id = validate_get(request.wa_id, request.sender)
        route = self._routes.resolve(request.sender)
        deadline = Deadline.after(context.time_remaining())
        if request.bypass_cache:
            record.cache = "bypass"
            async with deadline.bound():
                return await self._fetch(route, wa_id, record, deadline, compare_with_cache=True)
        cached = await self._store.get_fresh(route.key(wa_id))
        if cached is not None:
            record.cache = "hit"
            return cached
        record.cache = "miss"
        # Each caller stops waiting at its own deadline; the shared read runs against the
        # latest of theirs, and is abandoned when the last caller has gone.
        response, joined = await self._flights.run(
            route.key(wa_id),
            lambda shared: self._fetch(route, wa_id, record, shared, compare_with_cache=False),
            deadline,
        )
        if joined:
            record.cache = "joined"
        return response

    async def _fetch(
        self,
        route: Route,
        wa_id: str,
        record: RpcRecord,
        deadline: Deadline,
        *,
        compare_with_cache: bool,
    ) -> bytes:
        """Read WhatsApp, cache the answer a later hit will send, return this call's answer
        (serialized once, however many callers share it).

        With ``compare_with_cache`` (a bypass read, when the cache may hold an identity), a
        hash other than the cached one is announced to watchers. A miss has just found the
        cache empty, so it does not ask the store again. A read overtaken by an acknowledge or
        a reported change (:class:`~gateway.store.fence.ReadFence`) is answered but not cached.
        """
        key = route.key(wa_id)
        with self._fence.reading(key) as read:
            try:
                identity = await route.backend.get_identity(
                    wa_id, deadline=deadline, trace=record.trace
                )
            except BackendFailure as failure:
                if failure.kind is Failure.NOT_FOUND:
                    await self._store.invalidate(key)
                raise
            record.upstream_status = 200
            fetched_at = time.time()
            response = _response(route.number, wa_id, identity, fetched_at)
            previous = await self._store.get_fresh(key) if compare_with_cache else None
            if not read.overtaken:
                response.cache_hit = True
                await self._store.put(key, response.SerializeToString())
                response.cache_hit = False
                if previous is not None and _cached_identity(previous).hash != identity.hash:
                    self._announce(
                        response.identity, identity_pb2.IDENTITY_CHANGE_SOURCE_READ, fetched_at
                    )
        answer: bytes = response.SerializeToString()
        return answer

    async def _acknowledge(
        self,
        request: identity_pb2.AcknowledgeIdentityRequest,
        context: grpc.aio.ServicerContext,
        record: RpcRecord,
    ) -> identity_pb2.AcknowledgeIdentityResponse:
        wa_id = record.wa_id = validate_acknowledge(request.wa_id, request.hash, request.sender)
        route = self._routes.resolve(request.sender)
        key = route.key(wa_id)
        deadline = Deadline.after(context.time_remaining())
        try:
            async with deadline.bound():
                record.upstream_status = await route.backend.acknowledge(
                    wa_id, request.hash, deadline=deadline, trace=record.trace
                )
        except BackendFailure as failure:
            # The cached hash may be the stale one the caller sent: make the next read fresh.
            if failure.kind in (Failure.HASH_MISMATCH, Failure.NOT_FOUND):
                await self._store.invalidate(key)
            raise
        self._fence.changed(key)
        identity = identity_pb2.Identity(
            wa_id=wa_id, hash=request.hash, acknowledged=True, sender=route.number
        )

        def acknowledge_cached(payload: bytes) -> bytes | None:
            """The cached answer, marked acknowledged; None (drop it) if it holds another hash."""
            cached = identity_pb2.GetIdentityResponse.FromString(payload)
            if cached.identity.hash != request.hash:
                return None
            cached.identity.acknowledged = True
            identity.create_time.CopyFrom(cached.identity.create_time)  # for the watchers
            serialized: bytes = cached.SerializeToString()
            return serialized

        await self._store.update(key, acknowledge_cached)
        self._announce(identity, identity_pb2.IDENTITY_CHANGE_SOURCE_ACKNOWLEDGE, time.time())
        return _ACK_RESPONSE

    async def _report(
        self,
        request: identity_pb2.ReportIdentityChangeRequest,
        context: grpc.aio.ServicerContext,
        record: RpcRecord,
    ) -> identity_pb2.ReportIdentityChangeResponse:
        create_time = None
        if request.HasField("create_time"):
            create_time = (request.create_time.seconds, request.create_time.nanos)
        wa_id = record.wa_id = validate_acknowledge(
            request.wa_id, request.hash, request.sender, create_time
        )
        route = self._routes.resolve(request.sender)
        create_ms = None
        if request.HasField("create_time"):
            create_ms = request.create_time.ToMilliseconds()
        await self.record_identity_change(
            route.number, wa_id, request.hash, create_ms, identity_pb2.IDENTITY_CHANGE_SOURCE_REPORT
        )
        return _REPORT_RESPONSE

    async def record_identity_change(
        self, sender: str, wa_id: str, identity_hash: str, create_ms: int | None, source: int
    ) -> None:
        """A change WhatsApp pushed (webhook or report) through ``sender`` (a number served, or
        "" for the default): cache it unacknowledged, announce it.

        Anyone who can push can name any user: a report replaces the entry of a user the cache
        holds, or fills free room, but never evicts another user's fresh entry (spec §7); one
        not cached is read from the upstream when asked for.

        Without the time WhatsApp detected it, the time the gateway learned of it stands in.
        """
        route = self._routes.resolve(sender)
        now = time.time()
        identity = UpstreamIdentity(
            identity_hash, create_ms if create_ms is not None else int(now * 1000), False
        )
        response = _response(route.number, wa_id, identity, now)
        response.cache_hit = True
        key = route.key(wa_id)
        self._fence.changed(key)
        await self._store.offer(key, response.SerializeToString())
        self._announce(response.identity, source, now)

    async def _watch(
        self,
        request: identity_pb2.WatchIdentityChangesRequest,
        context: grpc.aio.ServicerContext,
        record: RpcRecord,
    ) -> None:
        if len(request.wa_ids) > MAX_WATCH_FILTER:
            raise InvalidArgument([FieldViolation("wa_ids", f"at most {MAX_WATCH_FILTER} entries")])
        wa_ids = frozenset(normalize_wa_id(w, "wa_ids") for w in request.wa_ids) or None
        senders = frozenset(self._routes.resolve(s, "senders").number for s in request.senders)
        async with self.changes.watch(wa_ids, senders or None) as changes:
            async for change in changes:
                await context.write(identity_pb2.WatchIdentityChangesResponse(change=change))

    def _announce(self, identity: identity_pb2.Identity, source: int, at: float) -> None:
        change = identity_pb2.IdentityChange(identity=identity, source=source)
        change.observe_time.FromNanoseconds(int(at * 1e9))
        self.changes.announce(change)

    # ------------------------------------------------------------------ the boundary

    async def _handle(
        self,
        method: str,
        handler: Callable[[Any, grpc.aio.ServicerContext, RpcRecord], Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext,
        started: float | None = None,
    ) -> Any:
        if started is None:
            started = perf_counter()
        metadata = context.invocation_metadata()
        self._started[method] += 1
        record = RpcRecord(metadata, self._request_ids, self._oversized)
        request_id.set(record.request_id)  # this RPC's own task context: no reset needed
        self._in_flight += 1
        code = grpc.StatusCode.OK
        reason = None
        caller: Caller | None = None
        try:
            if self._authorizer is not None:
                caller = self._authorizer.authorize(method, metadata)
            if isinstance(request, Undecodable):
                raise InvalidArgument(
                    [FieldViolation("request", f"not a valid {request.message_name}")]
                )
            return await handler(request, context, record)
        except Exception as error:  # the one place every failure becomes a status
            if isinstance(error, PermissionDenied):
                caller = error.caller  # known, but refused: the audit line names it
            status = to_status(error)
            code = _CODES[status.code]
            reason = rule_for(error).reason
            if isinstance(error, BackendFailure) and error.http_status is not None:
                record.upstream_status = error.http_status
            if reason is Reason.GATEWAY_INTERNAL:
                log.error("unexpected error in %s", method, exc_info=error)
            await context.abort_with_status(rpc_status.to_status(status))
            raise AssertionError("abort_with_status returned") from None  # pragma: no cover
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()
            ended = perf_counter()
            if method == _ACKNOWLEDGE:
                outcome = reason.value if reason else code.name
                wa_id = record.wa_id or str(getattr(request, "wa_id", ""))  # none if Undecodable
                identity_hash = str(getattr(request, "hash", ""))
                audit_acknowledge(caller, wa_id, identity_hash, outcome, record.request_id)
            self._journal.record(
                JournalEntry(
                    method,
                    code,
                    reason,
                    ended - started,
                    record.cache,
                    record.upstream_status,
                    record.wa_id,
                    record.request_id,
                    None,
                    ended,
                )
            )


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_decode_get = decoder(identity_pb2.GetIdentityRequest)


def _response(
    sender: str, wa_id: str, identity: UpstreamIdentity, fetched_at: float
) -> identity_pb2.GetIdentityResponse:
    """The answer for an identity just read through ``sender`` (``cache_hit`` false)."""
    create_ms = identity.create_time_ms
    fetched_ns = int(fetched_at * 1e9)
    return identity_pb2.GetIdentityResponse(
        identity=identity_pb2.Identity(
            wa_id=wa_id,
            hash=identity.hash,
            create_time=timestamp_pb2.Timestamp(
                seconds=create_ms // 1000, nanos=(create_ms % 1000) * 1_000_000
            ),
            acknowledged=identity.acknowledged,
            sender=sender,
        ),
        fetch_time=timestamp_pb2.Timestamp(
            seconds=fetched_ns // 1_000_000_000, nanos=fetched_ns % 1_000_000_000
        ),
    )


def _cached_identity(cached: bytes) -> identity_pb2.Identity:
    identity: identity_pb2.Identity = identity_pb2.GetIdentityResponse.FromString(cached).identity
    return identity


def add_to_server(servicer: IdentityServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_IdentityServiceServicer_to_server``, but
    GetIdentity's answers are bytes already (cached or serialized once per upstream read), so
    its serializer is ``bytes``, which hands them over as they are; and GetIdentity is the
    cache-hit path's where it is installed."""
    get_identity = servicer.hits.GetIdentity if servicer.hits else servicer.GetIdentity
    pb = identity_pb2
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    methods: dict[
        str,
        tuple[Callable[..., grpc.RpcMethodHandler], type[Message] | None, Callable[..., Any], Any],
    ] = {
        "GetIdentity": (unary, None, bytes, get_identity),  # it decodes its request
        "AcknowledgeIdentity": (
            unary,
            pb.AcknowledgeIdentityRequest,
            pb.AcknowledgeIdentityResponse.SerializeToString,
            servicer.AcknowledgeIdentity,
        ),
        "ReportIdentityChange": (
            unary,
            pb.ReportIdentityChangeRequest,
            pb.ReportIdentityChangeResponse.SerializeToString,
            servicer.ReportIdentityChange,
        ),
        "WatchIdentityChanges": (
            stream,
            pb.WatchIdentityChangesRequest,
            pb.WatchIdentityChangesResponse.SerializeToString,
            servicer.WatchIdentityChanges,
        ),
    }
    handlers = {
        name: make(
            behaviour,
            request_deserializer=decoder(request) if request else None,
            response_serializer=serialize,
        )
        for name, (make, request, serialize, behaviour) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
