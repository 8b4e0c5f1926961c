"""The identity cache in Redis, shared by every replica and worker process, and its pub/sub.

    store = RedisIdentityStore("redis://cache:6379/0", ttl=30)
    await store.put("16315551234", payload)                  # SET ... PX 30000
    payload = await store.get_fresh("16315551234")           # None on a miss *or* a Redis failure
    await store.update("16315551234", mark_acknowledged)     # keeps the remaining TTL
    await store.invalidate("16315551234")
    await store.publish("identity-gateway:changes", message)
    async for message in store.subscribe("identity-gateway:changes"): ...
    await store.aclose()

The methods mean what :class:`gateway.store.cache.IdentityCache`'s do: values are the servicer's
ready-made cache-hit answers (bytes, stored as given) under ``key_prefix + wa_id``, fresh for
``ttl`` seconds (Redis expires them). A ``ttl`` of 0 disables the cache methods; publish and
subscribe still work, because watchers of identity changes do not depend on caching.

Values read from Redis are never trusted blindly (spec §8): Redis is shared, so any writer may
have left anything under a key. A value that ``check(wa_id, value)`` (given by the wiring, which
knows what an answer is) refuses, or a key holding another Redis type (a hash, a list: WRONGTYPE),
is a *bad value*: a miss for that key alone, never an answer. The store deletes it (a string
only if it is still the one read), logs it (at most once a second) and calls ``on_bad_value()``;
it is not a Redis failure, so the store stays in use for every other key. ``update`` drops a bad
value rather than changing it. Without a ``check`` any string is an answer.

Redis is an optimisation, never a dependency. Any Redis error or timeout makes a call behave like
a miss (``get_fresh`` returns None) or a no-op (the writes; ``publish`` drops the message); no
method raises because of Redis. Every call is bounded by ``timeout`` (the client's socket
timeouts, and ``asyncio.timeout`` around each call), and redis-py's own retries are off: a
retry belongs to the next call, not inside this one.

After a failure the store is *degraded*: for a cool-down (``retry_after``, doubling up to
``max_retry_after``) it does not touch Redis at all, so a dead or slow Redis costs nothing per
call. Then one call probes Redis again while the others keep skipping it. The first failure logs
one WARNING and calls ``on_degraded(True)``; a successful probe logs recovery and calls
``on_degraded(False)``. ``on_error(operation)`` counts every call that Redis failed.

Pooled connections outlive a Redis restart, dead. Each one used would fail one call, and each
failure would start another cool-down: the store would flap between degraded and healthy until
none was left. Two things prevent it. redis-py's pool replaces a connection that the server
has closed before handing it out, but not with maintenance notifications on (redis-py 8's
default with RESP3; redis/redis-py#4128, #4156), so they are off: a restart the store did not
notice costs nothing. And a probe first closes every idle pooled connection, then pings on a
new one, because some dead ones cannot be told from live ones until a command fails on them (a
restarted container or pod, a NAT or load balancer in between, drops them without a word to
this host). So one recovery is one transition.

Two decisions are worth knowing:

* ``update`` is a compare-and-set. It reads the value, applies ``change`` here (it is Python:
  parsing a protobuf), and writes the result with a Lua script that replaces the value with
  ``SET ... KEEPTTL`` only if it is still the one read. A put from another replica in between
  makes the script refuse, and the change is applied again to the new value (at most
  three times, then the entry is deleted: a miss is always safe). A plain ``SET KEEPTTL`` would
  silently undo that concurrent put; WATCH/MULTI needs a connection held across four round
  trips instead of two.
* Invalidations lost while degraded are replayed as deletes on recovery. An ``update`` or
  ``invalidate`` means "the entry is now known to be wrong" (an acknowledge, a hash mismatch,
  a contact gone). If it cannot reach Redis while Redis still holds the entry (Redis was slow,
  or unreachable from this replica only), every replica would keep serving the wrong entry for
  up to the TTL: an identity change reported as still pending after it was acknowledged. So the
  store remembers those wa_ids (at most 10 000, and only for one TTL, after which Redis has
  expired the entry anyway) and deletes them before it uses Redis again. Deleting is always
  safe: the worst case is one more upstream read. A lost ``put`` is not remembered: the entry it
  failed to replace is still within its TTL, which is all the cache promises.

Subscriptions reconnect by themselves (backoff from ``retry_after`` up to ``max_retry_after``)
and resubscribe; messages published while a subscriber is disconnected are lost (Redis pub/sub
keeps nothing). A subscription ends cleanly when the task iterating it is cancelled, and returns
when the store is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Final, Self, TypeVar

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.telemetry.logs import RateLimitedLog

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_KEY_PREFIX: Final = "identity-gateway:identity:"

# Replaces (or, without a new value, deletes) KEYS[1] only if it still holds ARGV[1], the value
# the change was computed from. GET of a missing key is false in Lua, never equal to a string.
_REPLACE_IF_UNCHANGED: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
    redis.call('DEL', KEYS[1])
end
return 1
"""
_UPDATE_ATTEMPTS: Final = 3
# Bound on the wa_ids whose invalidation waits for Redis to come back; beyond it the oldest,
# the closest to expiring in Redis anyway, are forgotten.
_MAX_LOST_INVALIDATIONS: Final = 10_000
# A subscriber waits this long for a message before checking that its connection is alive...
_SUBSCRIBER_POLL: Final = 1.0
# ...and after this much silence sends a PING; no answer in as long again means a dead link that
# the kernel has not noticed (a partition), so it reconnects.
_SUBSCRIBER_KEEPALIVE: Final = 5.0
# What a failed Redis call can raise: redis-py's errors, asyncio.timeout's TimeoutError, and
# socket errors redis-py did not wrap.
_FAILURES: Final = (RedisError, OSError, TimeoutError)


class _Skipped:
    """The result of a call that did not reach Redis or got no answer from it."""

    __slots__ = ()


class _WrongType:
    """The result of a call on a key that holds another Redis type than a string."""

    __slots__ = ()


_SKIPPED: Final = _Skipped()
_WRONG_TYPE: Final = _WrongType()


class RedisIdentityStore:
    """Identity answers by normalised wa_id in Redis, fresh for ``ttl`` seconds, and pub/sub.

    Create it on the event loop that will use it, use it only there, and close it with
    :meth:`aclose` (or ``async with``). Construction does no I/O; a malformed ``url`` raises
    ValueError. ``check(wa_id, value)`` says whether a value read for ``wa_id`` may be used
    (None: any string may); ``check``, ``on_degraded``, ``on_error`` and ``on_bad_value`` must
    not raise. The operations passed to ``on_error`` are ``get_fresh``, ``put``, ``update``,
    ``invalidate``, ``publish``, ``subscribe`` and ``probe`` (a failed attempt to leave the
    degraded state).
    """

    def __init__(
        self,
        url: str,
        ttl: float,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = 0.1,
        on_degraded: Callable[[bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        retry_after: float = 1.0,
        max_retry_after: float = 10.0,
        check: Callable[[str, bytes], bool] | None = None,
        on_bad_value: Callable[[], None] | None = None,
    ) -> None:
        if ttl < 0:
            raise ValueError("ttl must not be negative")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 < retry_after <= max_retry_after:
            raise ValueError("need 0 < retry_after <= max_retry_after")
        self.ttl = ttl
        self._ttl_ms = max(1, round(ttl * 1000))
        self._prefix = key_prefix
        self._timeout = timeout
        self._on_degraded = on_degraded
        self._on_error = on_error
        self._check = check
        self._on_bad_value = on_bad_value
        self._bad_values = RateLimitedLog(log, interval=1.0)
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._redis = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            # Off, so that the pool replaces the connections a restarted Redis closed (see the
            # module docstring); they are for Redis Enterprise's failovers, which the
            # cool-down covers.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self._replace_if_unchanged = self._redis.register_script(_REPLACE_IF_UNCHANGED)
        self._where = _describe(self._redis)  # for logs: never the URL, it may hold a password
        self._degraded = False
        self._degraded_at = 0.0
        self._cool_down = retry_after
        self._retry_at = 0.0
        self._probing = False
        # wa_id -> monotonic time its update or invalidation could not reach Redis (oldest first)
        self._lost_invalidations: dict[str, float] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def enabled(self) -> bool:
        """Whether the cache methods do anything (``ttl`` > 0)."""
        return self.ttl > 0

    @property
    def degraded(self) -> bool:
        """Whether the store is skipping Redis after a failure."""
        return self._degraded

    # ------------------------------------------------------------------ the cache

    async def get_fresh(self, wa_id: str) -> bytes | None:
        """The stored answer for ``wa_id``; None when there is none, it is a bad value (then
        deleted), or Redis failed."""
        if not self.enabled:
            return None
        value = await self._call("get_fresh", functools.partial(self._get, self._key(wa_id)))
        if value is None or isinstance(value, _Skipped):
            return None
        return await self._usable("get_fresh", wa_id, value)

    async def put(self, wa_id: str, payload: bytes) -> None:
        """Store ``payload`` for ``wa_id``, fresh for the TTL from now (best effort)."""
        if not self.enabled:
            return
        await self._call(
            "put", functools.partial(self._redis.set, self._key(wa_id), payload, px=self._ttl_ms)
        )

    async def offer(self, wa_id: str, payload: bytes) -> None:
        """Store ``payload`` only in place of an answer already stored (``SET XX``): a report
        about a user no replica holds inserts nothing, so pushed reports cannot fill Redis."""
        if not self.enabled:
            return
        await self._call(
            "offer",
            functools.partial(self._redis.set, self._key(wa_id), payload, px=self._ttl_ms, xx=True),
        )

    async def update(self, wa_id: str, change: Callable[[bytes], bytes | None]) -> None:
        """Replace the stored answer by ``change(answer)``, keeping its remaining TTL, or delete
        it when ``change`` returns None. Nothing happens when nothing is stored.

        Atomic against concurrent writers (see the module docstring). A bad value is deleted,
        never given to ``change``. If ``change`` raises all the same, the error is logged and
        the entry deleted: an acknowledge that WhatsApp accepted must not fail here.
        """
        if not self.enabled:
            return
        key = self._key(wa_id)
        for _ in range(_UPDATE_ATTEMPTS):
            current = await self._call("update", functools.partial(self._get, key))
            if isinstance(current, _Skipped):
                self._lose_invalidation(wa_id)
                return
            if current is None:
                return
            usable = await self._usable("update", wa_id, current)
            if usable is None:
                return
            try:
                changed = change(usable)
            except Exception:
                log.error("could not change a cached identity; deleting it", exc_info=True)
                break
            args = [usable] if changed is None else [usable, changed]
            replaced = await self._call(
                "update", functools.partial(self._replace_if_unchanged, keys=[key], args=args)
            )
            if isinstance(replaced, _Skipped):
                self._lose_invalidation(wa_id)
                return
            if isinstance(replaced, _WrongType):  # turned into another type since it was read
                await self._usable("update", wa_id, replaced)
                return
            if replaced:
                return
            # Another writer replaced the value since it was read: apply the change to theirs.
        await self.invalidate(wa_id)

    async def invalidate(self, wa_id: str) -> None:
        """Forget ``wa_id``; if Redis cannot be told now, it is told when it comes back."""
        if not self.enabled:
            return
        deleted = await self._call(
            "invalidate", functools.partial(self._redis.delete, self._key(wa_id))
        )
        if isinstance(deleted, _Skipped):
            self._lose_invalidation(wa_id)

    # ------------------------------------------------------------------ pub/sub

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to the subscribers of ``channel`` on every replica (best effort:
        dropped when Redis fails or the store is degraded)."""
        await self._call("publish", functools.partial(self._redis.publish, channel, message))

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """The messages published to ``channel`` from now on, across Redis outages.

        While Redis is unreachable it yields nothing and reconnects with backoff; messages
        published meanwhile are lost. Cancelling the task that iterates it ends it cleanly; it
        returns when the store is closed. Iterate it in its own task, or close it with
        ``contextlib.aclosing`` if you stop early.
        """
        backoff = self._retry_after
        lost = False  # whether the subscription broke and has not been restored yet
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(channel)
                async with contextlib.aclosing(self._messages(pubsub)) as messages:
                    async for message in messages:
                        if message is None:  # subscribed (again): the link works
                            backoff = self._retry_after
                            if lost:
                                lost = False
                                log.info("subscription to %s on Redis restored", channel)
                            continue
                        yield message
            except _FAILURES as error:
                if self._closed:
                    return
                self._error("subscribe")
                if not lost:
                    lost = True
                    log.warning(
                        "subscription to %s on Redis at %s lost (%s); reconnecting",
                        channel,
                        self._where,
                        _summary(error),
                    )
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_retry_after)

    async def _messages(self, pubsub: PubSub) -> AsyncGenerator[bytes | None, None]:
        """Message payloads from ``pubsub``, and None for each subscribe confirmation; raises
        on a broken link, returns when the store is closed."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        while not self._closed:
            message = await pubsub.get_message(timeout=_SUBSCRIBER_POLL)
            now = loop.time()
            if message is None:
                if pinged is not None and now - pinged > _SUBSCRIBER_KEEPALIVE:
                    raise RedisConnectionError("no answer to PING")
                if pinged is None and now - heard > _SUBSCRIBER_KEEPALIVE:
                    async with asyncio.timeout(self._timeout):
                        await pubsub.ping()
                    pinged = now
                continue
            heard, pinged = now, None
            kind = message["type"]
            if kind == "message":
                yield message["data"]
            elif kind == "subscribe":
                yield None

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the connections; afterwards every method is a no-op and subscriptions end."""
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()

    # ------------------------------------------------------------------ internals

    def _key(self, wa_id: str) -> str:
        return self._prefix + wa_id

    async def _get(self, key: str) -> bytes | None:
        value = await self._redis.get(key)
        return value if isinstance(value, bytes) else None

    async def _usable(self, operation: str, wa_id: str, value: bytes | _WrongType) -> bytes | None:
        """``value``, read for ``wa_id``, if it may be used; otherwise None, and it is a bad
        value: counted, logged and deleted (a string only if it is still the one read)."""
        if isinstance(value, bytes) and (self._check is None or self._check(wa_id, value)):
            return value
        if self._on_bad_value is not None:
            self._on_bad_value()
        key = self._key(wa_id)
        delete: Callable[[], Awaitable[object]]
        if isinstance(value, bytes):
            self._bad_values.warning(
                "unusable", "a value in Redis at %s is not a usable answer; deleted", self._where
            )
            delete = functools.partial(self._replace_if_unchanged, keys=[key], args=[value])
        else:
            self._bad_values.warning(
                "wrong type", "a key in Redis at %s holds another type; deleted", self._where
            )
            delete = functools.partial(self._redis.delete, key)
        await self._call(operation, delete)
        return None

    async def _call(
        self, operation: str, command: Callable[[], Awaitable[T]]
    ) -> T | _Skipped | _WrongType:
        """``command()``'s result; _WRONG_TYPE when the key it names holds another type than a
        string (one key's problem, not Redis's); _SKIPPED when Redis is not used or fails.
        Never raises because of Redis."""
        if self._closed or (self._degraded and not await self._probe()):
            return _SKIPPED
        try:
            async with asyncio.timeout(self._timeout):
                return await command()
        except _FAILURES as error:
            if isinstance(error, ResponseError) and "WRONGTYPE" in str(error):
                return _WRONG_TYPE
            self._failed(operation, error)
            return _SKIPPED

    async def _probe(self) -> bool:
        """While degraded: whether Redis may be used again. Once per cool-down, one caller
        replays the lost invalidations (or pings) and, on success, ends the degraded state;
        every other caller skips Redis at once."""
        if self._probing or time.monotonic() < self._retry_at:
            return False
        self._probing = True
        try:
            # Connections opened before the failure may be dead without knowing it: drop them
            # all, so the probe and every call after it use new ones (see the module docstring).
            with contextlib.suppress(*_FAILURES):
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            flushed = await self._delete_lost_invalidations()
        except _FAILURES as error:
            self._cool_down = min(self._cool_down * 2, self._max_retry_after)
            self._retry_at = time.monotonic() + self._cool_down
            self._error("probe")
            log.debug("Redis still unavailable (%s)", _summary(error))
            return False
        finally:
            self._probing = False
        self._degraded = False
        self._cool_down = self._retry_after
        log.info(
            "Redis cache at %s available again after %.1f s",
            self._where,
            time.monotonic() - self._degraded_at,
        )
        if self._on_degraded is not None:
            self._on_degraded(False)
        if len(self._lost_invalidations) > len(flushed):
            # Lost while the probe ran; Redis is in use again, so no more are coming.
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(self._timeout):
                    await self._delete_lost_invalidations()
        return True

    async def _delete_lost_invalidations(self) -> dict[str, float]:
        """Delete the entries whose invalidation was lost (or ping when there are none), and
        forget them; the ones deleted. Raises what Redis raises."""
        expired = time.monotonic() - self.ttl
        lost = {w: at for w, at in self._lost_invalidations.items() if at > expired}
        async with asyncio.timeout(self._timeout):
            if lost:
                await self._redis.delete(*(self._key(wa_id) for wa_id in lost))
            else:
                await self._redis.ping()
        for wa_id, at in list(self._lost_invalidations.items()):
            if at <= expired or lost.get(wa_id) == at:
                del self._lost_invalidations[wa_id]
        return lost

    def _lose_invalidation(self, wa_id: str) -> None:
        self._lost_invalidations.pop(wa_id, None)  # re-inserted as the newest
        self._lost_invalidations[wa_id] = time.monotonic()
        if len(self._lost_invalidations) > _MAX_LOST_INVALIDATIONS:
            del self._lost_invalidations[next(iter(self._lost_invalidations))]

    def _failed(self, operation: str, error: BaseException) -> None:
        self._error(operation)
        if self._degraded:
            return  # a call that started before the store became degraded
        self._degraded = True
        self._degraded_at = time.monotonic()
        self._cool_down = self._retry_after
        self._retry_at = self._degraded_at + self._cool_down
        log.warning(
            "Redis cache at %s unavailable (%s during %s); serving without it, retrying in %.1f s",
            self._where,
            _summary(error),
            operation,
            self._cool_down,
        )
        if self._on_degraded is not None:
            self._on_degraded(True)

    def _error(self, operation: str) -> None:
        if self._on_error is not None:
            self._on_error(operation)


def _describe(client: redis.asyncio.Redis) -> str:
    """Where ``client`` connects, without credentials: ``host:port/db`` or the socket path."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _summary(error: BaseException) -> str:
    """An error's class and message, for the log (a timeout's message is empty)."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
