"""The identity cache (TTL plus least-recently-used bound) and single flight for misses.

    cache: IdentityCache[bytes] = IdentityCache(ttl=30, max_entries=100_000)
    cache.put("16315551234", payload)
    payload = cache.get_fresh("16315551234")          # None once older than the TTL

    flights = SingleFlight()
    identity = await flights.run("16315551234", fetch)   # concurrent callers share one fetch

    fence = ReadFence()
    with fence.reading("16315551234") as read:          # a read from WhatsApp in flight
        identity = await fetch()
        if not read.overtaken:                          # nothing changed it meanwhile
            cache.put("16315551234", identity)

The cache does not interpret what it stores: the servicer keeps each identity as its ready-made
cache-hit answer (serialized bytes), so a hit costs a dictionary lookup and nothing else, and
an entry is two objects. Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class IdentityCache(Generic[V]):
    """Values by normalised wa_id, fresh for ``ttl`` seconds, at most ``max_entries``.

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
        self._on_evict = on_evict
        # wa_id -> (expiry on ``clock``, value), least recently used first; a tuple is the
        # smallest entry Python offers. The servicer's cache-hit path reads it directly, as
        # get_fresh does, to save a Python call per hit.
        self.entries: collections.OrderedDict[str, tuple[float, V]] = collections.OrderedDict()
        self.clock = clock

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get_fresh(self, wa_id: str) -> V | None:
        """The value for ``wa_id`` if it is younger than the TTL; an expired one is dropped."""
        entry = self.entries.get(wa_id)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self.entries[wa_id]
            return None
        self.entries.move_to_end(wa_id)
        return entry[1]

    def put(self, wa_id: str, value: V) -> None:
        """Store ``value``, fresh for the TTL from now, evicting the least recently used."""
        if not self.enabled:
            return
        self.entries[wa_id] = (self.clock() + self.ttl, value)
        self.entries.move_to_end(wa_id)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict()

    def update(self, wa_id: str, change: Callable[[V], V | None]) -> None:
        """Replace a cached value by ``change(value)`` (keeping its expiry), or drop it on None."""
        entry = self.entries.get(wa_id)
        if entry is None:
            return
        changed = change(entry[1])
        if changed is None:
            del self.entries[wa_id]
        else:
            self.entries[wa_id] = (entry[0], changed)

    def invalidate(self, wa_id: str) -> None:
        """Forget ``wa_id``."""
        self.entries.pop(wa_id, None)


class IdentityStore(Protocol):
    """Where the servicer keeps cached answers: this process (:class:`MemoryStore`) or Redis,
    shared by every replica (``gateway.redis_store.RedisIdentityStore``)."""

    async def get_fresh(self, wa_id: str) -> bytes | None: ...
    async def put(self, wa_id: str, payload: bytes) -> None: ...
    async def update(self, wa_id: str, change: Callable[[bytes], bytes | None]) -> None: ...
    async def invalidate(self, wa_id: str) -> None: ...


class MemoryStore:
    """An :class:`IdentityCache` behind the store interface."""

    def __init__(self, cache: IdentityCache[bytes]) -> None:
        self.cache = cache

    async def get_fresh(self, wa_id: str) -> bytes | None:
        return self.cache.get_fresh(wa_id)

    async def put(self, wa_id: str, payload: bytes) -> None:
        self.cache.put(wa_id, payload)

    async def update(self, wa_id: str, change: Callable[[bytes], bytes | None]) -> None:
        self.cache.update(wa_id, change)

    async def invalidate(self, wa_id: str) -> None:
        self.cache.invalidate(wa_id)


class _Read:
    """One read from WhatsApp in flight; ``overtaken`` once a change lands during it."""

    __slots__ = ("key", "overtaken", "reads")

    def __init__(self, key: str, reads: dict[str, list[_Read]]) -> None:
        self.key = key
        self.reads = reads
        self.overtaken = False

    def __enter__(self) -> _Read:
        self.reads.setdefault(self.key, []).append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        same_key = self.reads[self.key]
        same_key.remove(self)
        if not same_key:
            del self.reads[self.key]


class ReadFence:
    """Tells a read from WhatsApp whether the identity changed while it was in flight.

    A read sent before an acknowledge (or a reported change) landed can bring back the identity
    as it was before: caching that answer would undo the change for up to the TTL. So a read
    that was overtaken answers its callers, who asked before the change, but is not cached.
    The fence holds only the reads in flight. It hears of this process's changes at once and of
    other replicas' changes when they arrive over pub/sub (see ``ChangeBus.on_remote_change``).
    """

    def __init__(self) -> None:
        self._reads: dict[str, list[_Read]] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def reading(self, key: str) -> _Read:
        """A context manager around one read of ``key``; its ``overtaken`` says what changed."""
        return _Read(key, self._reads)

    def changed(self, key: str) -> None:
        """``key`` changed: every read of it now in flight may predate the change."""
        for read in self._reads.get(key, ()):
            read.overtaken = True


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
            # The work runs in its own task, so no caller's leaving cancels it. It copies the
            # first caller's context: its log lines carry that request id, and its waits
            # (admission, pacing, retries) are judged against that caller's deadline.
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
