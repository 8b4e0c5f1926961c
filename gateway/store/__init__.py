"""Where identities are kept between upstream reads, and how concurrent reads and changes meet.

- :mod:`gateway.store.cache`: :class:`IdentityCache` (TTL plus LRU bound), the
  :class:`IdentityStore` interface and :class:`MemoryStore`, the cache behind it.
- :mod:`gateway.store.redis_store`: the store shared by every replica, on Redis, and the
  pub/sub relay for changes.
- :mod:`gateway.store.single_flight`: concurrent misses for one key share one read.
- :mod:`gateway.store.fence`: a read overtaken by a change is answered but not cached.
- :mod:`gateway.store.changes`: the change bus behind ``WatchIdentityChanges``.

Nothing here calls an upstream or speaks gRPC.
"""
