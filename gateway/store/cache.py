"""The identity cache (TTL plus least-recently-used bound), and the store interface over it.

    cache: IdentityCache[bytes] = IdentityCache(ttl=30, max_entries=100_000)
    cache.put("16315551234", payload)
    payload = cache.get_fresh("16315551234")          # None once older than the TTL

The cache does not interpret what it stores: the servicer keeps each identity as its ready-made
cache-hit answer (serialized bytes), so a hit costs a dictionary lookup and nothing else, and
an entry is two objects. Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

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

    def offer(self, wa_id: str, value: V) -> bool:
        """Store ``value`` as :meth:`put` does, but only in place of an entry already held or
        into free room: never by evicting another. Whether it was stored."""
        if not self.enabled:
            return False
        if wa_id not in self.entries and len(self.entries) >= self.max_entries:
            return False
        self.put(wa_id, value)
        return True

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
    shared by every replica (``gateway.store.redis_store.RedisIdentityStore``)."""

    async def get_fresh(self, wa_id: str) -> bytes | None: ...
    async def put(self, wa_id: str, payload: bytes) -> None: ...
    async def offer(self, wa_id: str, payload: bytes) -> None:
        """Store like ``put``, but never at the expense of other entries (pushed reports)."""
        ...

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

    async def offer(self, wa_id: str, payload: bytes) -> None:
        self.cache.offer(wa_id, payload)

    async def update(self, wa_id: str, change: Callable[[bytes], bytes | None]) -> None:
        self.cache.update(wa_id, change)

    async def invalidate(self, wa_id: str) -> None:
        self.cache.invalidate(wa_id)
