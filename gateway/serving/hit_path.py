"""The cache-hit short path of ``GetIdentity``: the gateway's hottest path, doing the least
that keeps its promises.

    hits = CacheHitPath.install(store, authorizer, journal, full_path)   # None: not safe here
    handler = hits.GetIdentity if hits else servicer.GetIdentity

It is installed only when its preconditions hold, so the path itself checks nothing else:

- the store is this process's cache (:class:`~gateway.store.cache.MemoryStore`): a shared
  store answers over the network anyway;
- no caller authorization policy: the policy needs the call's metadata, and an anonymous
  caller must not read cached identities.

A hit is a request whose ``sender`` is exactly one served ("" for the default) and whose
``wa_id`` is exactly a fresh cached key under that sender's prefix (so a valid, normalised id:
no validation needed), and that does not ask to bypass the cache. It reads the cache as
:meth:`IdentityCache.get_fresh` would (LRU order included), notes the RPC in the journal as one
record, and returns the cached answer's bytes, which gRPC sends as they are. Everything else
(another spelling of the id such as ``+1...``, ``bypass_cache``, a miss, bytes that do not
decode) goes to the full path, which is told when the call started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter

import grpc
from whatsapp.identity.v1 import identity_pb2

from gateway.serving.authz import Authorizer
from gateway.serving.decoding import Undecodable, decoder
from gateway.serving.journal import RpcJournal, new_entry
from gateway.store.cache import IdentityStore, MemoryStore

# The full path: (the decoded request, the context, when the call started) -> the answer.
FullPath = Callable[
    [identity_pb2.GetIdentityRequest | Undecodable, grpc.aio.ServicerContext, float],
    Awaitable[bytes],
]

_GET = "GetIdentity"
_OK = grpc.StatusCode.OK
_decode = decoder(identity_pb2.GetIdentityRequest)


class CacheHitPath:
    """Answers ``GetIdentity`` from this process's cache, handing everything else on."""

    def __init__(
        self,
        store: MemoryStore,
        journal: RpcJournal,
        prefixes: Mapping[str, str],
        full_path: FullPath,
    ) -> None:
        self._prefixes = prefixes
        self._entries = store.cache.entries
        self._clock = store.cache.clock
        self._started = journal.metrics.started
        self._record = journal.record
        self._full_path = full_path

    @classmethod
    def install(
        cls,
        store: IdentityStore,
        authorizer: Authorizer | None,
        journal: RpcJournal,
        prefixes: Mapping[str, str],
        full_path: FullPath,
    ) -> CacheHitPath | None:
        """The short path, or None when its preconditions (see the module) do not hold.

        ``prefixes`` maps each ``sender`` a request may send ("" and every number served) to
        its cache-key prefix (:attr:`gateway.serving.routes.Routes.prefixes`)."""
        if not isinstance(store, MemoryStore) or authorizer is not None:
            return None
        return cls(store, journal, prefixes, full_path)

    async def GetIdentity(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The serialized answer: a hit's cached bytes, or the full path's."""
        started = perf_counter()
        request = _decode(data)
        if not isinstance(request, Undecodable) and not request.bypass_cache:
            prefix = self._prefixes.get(request.sender)
            if prefix is not None:
                wa_id = request.wa_id
                key = prefix + wa_id
                entry = self._entries.get(key)
                if entry is not None and entry[0] > self._clock():
                    self._entries.move_to_end(key)
                    self._started[_GET] += 1
                    ended = perf_counter()
                    noted = (_GET, _OK, None, ended - started, "hit", None, wa_id, None, context,
                             ended)  # fmt: skip
                    self._record(new_entry(noted))
                    return entry[1]
        return await self._full_path(request, context, started)
