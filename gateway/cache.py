"""The identity cache (TTL plus least-recently-used bound) and single flight for misses.

    cache = IdentityCache(ttl=30, max_entries=100_000)
    cache.put("16315551234", identity, fetched_at=time.time())
    entry = cache.get_fresh("16315551234")          # None once older than the TTL

    flights = SingleFlight()
    identity = await flights.run("16315551234", fetch)   # concurrent callers share one fetch

Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.parse import UpstreamIdentity

T = TypeVar("T")


class CachedIdentity:
    """One cache entry: the identity, when it was read (wall clock) and when it expires."""

    __slots__ = ("acknowledged", "create_time_ms", "expires_at", "fetched_at", "hash")

    def __init__(self, identity: UpstreamIdentity, fetched_at: float, expires_at: float) -> None:
        self.hash = identity.hash
        self.create_time_ms = identity.create_time_ms
        self.acknowledged = identity.acknowledged
        self.fetched_at = fetched_at
        self.expires_at = expires_at

    def to_identity(self) -> UpstreamIdentity:
        return UpstreamIdentity(self.hash, self.create_time_ms, self.acknowledged)


class IdentityCache:
    """Identities by normalised wa_id, fresh for ``ttl`` seconds, at most ``max_entries``.

    A ``ttl`` of 0 disables the cache: nothing is stored. Expiry uses the monotonic clock so a
    wall-clock jump neither keeps entries forever nor drops them all.
    """

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._on_evict = on_evict
        self._entries: collections.OrderedDict[str, CachedIdentity] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get_fresh(self, wa_id: str) -> CachedIdentity | None:
        """The entry for ``wa_id`` if it is younger than the TTL; an expired one is dropped."""
        entry = self._entries.get(wa_id)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[wa_id]
            return None
        self._entries.move_to_end(wa_id)
        return entry

    def put(self, wa_id: str, identity: UpstreamIdentity, fetched_at: float) -> None:
        """Store ``identity`` as read at wall-clock ``fetched_at``, evicting the least recent."""
        if not self.enabled:
            return
        self._entries[wa_id] = CachedIdentity(identity, fetched_at, self._clock() + self.ttl)
        self._entries.move_to_end(wa_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict()

    def record_acknowledged(self, wa_id: str, identity_hash: str) -> None:
        """After a successful acknowledge: mark a same-hash entry acknowledged, drop any other."""
        entry = self._entries.get(wa_id)
        if entry is None:
            return
        if entry.hash == identity_hash:
            entry.acknowledged = True
        else:
            del self._entries[wa_id]

    def invalidate(self, wa_id: str) -> None:
        """Forget ``wa_id``."""
        self._entries.pop(wa_id, None)


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Concurrent calls for one key share one run of the work.

    The work runs in its own task, so a caller that is cancelled (its deadline passed, or it
    went away) stops waiting without cancelling the work for the others. When the last waiter
    leaves, nobody wants the answer any more and the work is cancelled.
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of ``work()`` for ``key``, and whether this call joined a running flight."""
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _: self._forget(key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), joined
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Forget it first, so a caller arriving now starts afresh rather than joining
                # a flight that is being cancelled.
                self._forget(key, flight)
                flight.task.cancel()

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
