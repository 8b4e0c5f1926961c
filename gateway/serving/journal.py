"""What each RPC did, noted as one record while it runs, and counted and logged later, in batches.

    journal = RpcJournal(metrics, access_log)
    journal.record(JournalEntry("GetIdentity", grpc.StatusCode.OK, None, 0.0004, "hit", None,
                                wa_id, None, context, time.perf_counter()))
    task = asyncio.ensure_future(journal.run())   # folds every `interval` seconds
    journal.fold()                                # or now: before a scrape, on shutdown

Counting an RPC, observing its latency and formatting its JSON line cost a few microseconds in a
loop, but several times that inside the server: there each RPC runs between about 18 context
switches (gRPC's threads and the event loop), and every piece of Python it touches is cold
again. Measured on the cache hit, this bookkeeping was about half of what the gateway added to
a bare ``grpc.aio`` server. So the request path only appends a tuple (``record`` is the deque's
own ``append``: not even a Python call); :meth:`RpcJournal.fold` turns many at once into metrics
and access-log lines, with the code warm. Nothing else bounds the entries: the fold shares the
event loop with the RPCs, so at most about ``interval`` seconds' worth of them wait.

An entry is a :class:`JournalEntry`, a named tuple. The cache-hit path builds it with
:data:`new_entry`, which is ``tuple.__new__`` bound to the class: no Python frame, unlike the
named tuple's own constructor. ``request_id`` may be None when the RPC did not need one (a
cache hit logs nothing else): the caller's ``x-request-id`` is then read from the RPC's
``context`` when the line is written (gRPC keeps an RPC's metadata as long as its context
lives), or a new id is made. ``ended`` is the
``time.perf_counter()`` reading when the RPC ended; the fold turns it into wall-clock time, so
a line's time is the RPC's, not the fold's.

Scrapes fold first (the metrics HTTP server runs in its own thread, hence the lock), so
``grpc_server_handled_total`` never lags behind what callers have seen.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import grpc

from gateway.serving.status import Reason
from gateway.telemetry.logs import AccessLog, RequestIds
from gateway.telemetry.metrics import Metrics


class JournalEntry(NamedTuple):
    """What one finished RPC did."""

    method: str
    code: grpc.StatusCode
    reason: Reason | None
    seconds: float
    cache: str | None  # hit, miss, joined or bypass; None for other methods
    upstream_status: int | None
    wa_id: str | None
    request_id: str | None  # None: read it from ``context`` when the line is written
    context: grpc.aio.ServicerContext | None
    ended: float  # time.perf_counter() when the RPC ended


# JournalEntry from a tuple of its fields in order, in C: the request path's way to build one.
new_entry: Callable[[tuple[object, ...]], JournalEntry] = functools.partial(
    tuple.__new__, JournalEntry
)

log = logging.getLogger(__name__)


class RpcJournal:
    """Entries of finished RPCs, folded into metrics and the access log in batches."""

    def __init__(
        self,
        metrics: Metrics,
        access_log: AccessLog | None = None,
        *,
        request_ids: RequestIds | None = None,
        interval: float = 0.2,
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log or AccessLog()
        self.request_ids = request_ids or RequestIds()
        self._interval = interval
        # deque: append (event loop) and popleft (a scrape's thread) are atomic; no lost entry.
        self._pending: collections.deque[JournalEntry] = collections.deque()
        self._folding = threading.Lock()
        self.record: Callable[[JournalEntry], None] = self._pending.append
        """Note one finished RPC (the request path's only cost; see the module's text)."""
        metrics.fold_before_collect(self.fold)

    def __len__(self) -> int:
        return len(self._pending)

    def fold(self) -> None:
        """Count and log every pending entry now."""
        with self._folding:
            pending = self._pending
            if not pending:
                return
            access_log = self.access_log if self.access_log.enabled else None
            rpc_handled, cache_outcome = self.metrics.rpc_handled, self.metrics.cache_outcome
            wall_offset = time.time() - time.perf_counter()
            while pending:
                done = pending.popleft()
                rpc_handled(done.method, done.code, done.seconds)
                if done.cache is not None:
                    cache_outcome(done.cache)
                if access_log is not None:
                    context = done.context
                    access_log.rpc(
                        done.method,
                        done.code.name,
                        done.reason.value if done.reason else None,
                        done.seconds,
                        done.cache,
                        done.upstream_status,
                        done.wa_id,
                        done.request_id
                        or self.request_ids.of(context and context.invocation_metadata()),
                        done.ended + wall_offset,
                    )
            if access_log is not None:
                access_log.flush()

    async def run(self) -> None:
        """Fold every ``interval`` seconds until cancelled, then fold what is left.

        A fold that fails loses the entry it was on, not the task: the rest wait for the next.
        """
        try:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    self.fold()
                except Exception:
                    log.exception("could not count or log finished RPCs")
        finally:
            self.fold()
