"""Identity changes, fanned out to ``WatchIdentityChanges`` subscribers in this and other replicas.

    bus = ChangeBus()
    async with bus.watch({"16315551234"}) as changes:       # None: every wa_id
        async for change in changes:                        # IdentityChange messages
            ...
    bus.announce(change)                                    # from the servicer or the webhook

Each watcher has a bounded buffer: a watcher that falls behind by more than ``buffer`` changes
is ended with :class:`WatcherTooSlow`, never allowed to grow memory. A change is delivered to
this process's watchers at once and, when a :class:`Relay` is attached (Redis pub/sub), sent to
the other replicas, which deliver it to theirs; each process ignores its own changes coming
back. :meth:`ChangeBus.close` ends every watch with :class:`BusClosed` (the gateway is
draining). ``on_remote_change`` callbacks hear of each change another replica made, before its
watchers here do (the servicer uses it to stop an overtaken read from being cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from whatsapp.identity.v1 import identity_pb2

from gateway.failures import BusClosed, WatcherTooSlow

log = logging.getLogger(__name__)

CHANNEL = "identity-gateway:changes"
_ORIGIN_BYTES = 8


class Relay(Protocol):
    """Carries changes between replicas (``gateway.store.redis_store.RedisIdentityStore``)."""

    async def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str) -> AsyncIterator[bytes]: ...


class _Watch:
    __slots__ = ("closed", "overflowed", "queue", "senders", "wa_ids")

    def __init__(
        self, wa_ids: frozenset[str] | None, senders: frozenset[str] | None, buffer: int
    ) -> None:
        self.wa_ids = wa_ids
        self.senders = senders
        self.queue: asyncio.Queue[identity_pb2.IdentityChange | None] = asyncio.Queue(buffer)
        self.overflowed = False
        self.closed = False


class ChangeBus:
    """Delivers every announced change to the watchers whose filter it matches."""

    def __init__(self, *, buffer: int = 1000) -> None:
        self._buffer = buffer
        self._watches: set[_Watch] = set()
        self._origin = os.urandom(_ORIGIN_BYTES)
        self._relay: Relay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._remote_listeners: list[Callable[[identity_pb2.IdentityChange], None]] = []
        self.closed = False

    @property
    def watchers(self) -> int:
        return len(self._watches)

    def attach(self, relay: Relay) -> None:
        """Send changes to, and receive them from, the other replicas through ``relay``."""
        self._relay = relay
        self._relay_task = asyncio.ensure_future(self._receive(relay))

    def on_remote_change(self, listener: Callable[[identity_pb2.IdentityChange], None]) -> None:
        """Call ``listener`` with every change that arrives from another replica."""
        self._remote_listeners.append(listener)

    def announce(self, change: identity_pb2.IdentityChange) -> None:
        """Deliver ``change`` here now, and to the other replicas when a relay is attached."""
        self._deliver(change)
        if self._relay is not None:
            message = self._origin + change.SerializeToString()
            task = asyncio.ensure_future(self._relay.publish(CHANNEL, message))
            self._pending.add(task)  # keep a reference until it is sent
            task.add_done_callback(self._pending.discard)

    @contextlib.asynccontextmanager
    async def watch(
        self, wa_ids: frozenset[str] | None, senders: frozenset[str] | None = None
    ) -> AsyncIterator[AsyncIterator[identity_pb2.IdentityChange]]:
        """Changes from now on, for ``wa_ids`` through ``senders`` (None: all), until the
        block is left."""
        if self.closed:
            raise BusClosed("the gateway is shutting down")
        watch = _Watch(wa_ids, senders, self._buffer)
        self._watches.add(watch)
        try:
            yield self._drain(watch)
        finally:
            self._watches.discard(watch)

    async def close(self) -> None:
        """End every watch (draining) and stop relaying."""
        self.closed = True
        for watch in list(self._watches):
            watch.closed = True
            self._wake(watch)
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    async def _drain(self, watch: _Watch) -> AsyncIterator[identity_pb2.IdentityChange]:
        while True:
            change = await watch.queue.get()
            if change is None:
                if watch.overflowed:
                    raise WatcherTooSlow(
                        f"more than {self._buffer} changes were waiting for this watcher"
                    )
                raise BusClosed("the gateway is shutting down")
            yield change

    def _deliver(self, change: identity_pb2.IdentityChange) -> None:
        wa_id, sender = change.identity.wa_id, change.identity.sender
        for watch in self._watches:
            if watch.overflowed or watch.closed:
                continue
            if watch.wa_ids is not None and wa_id not in watch.wa_ids:
                continue
            if watch.senders is not None and sender not in watch.senders:
                continue
            # Leave one slot for the end marker, so an overflowing watcher always learns why.
            if watch.queue.qsize() >= self._buffer - 1:
                watch.overflowed = True
                self._wake(watch)
            else:
                watch.queue.put_nowait(change)

    @staticmethod
    def _wake(watch: _Watch) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            watch.queue.put_nowait(None)

    async def _receive(self, relay: Relay) -> None:
        async for message in relay.subscribe(CHANNEL):
            origin, payload = message[:_ORIGIN_BYTES], message[_ORIGIN_BYTES:]
            if origin == self._origin:
                continue  # our own change, already delivered here
            try:
                change = identity_pb2.IdentityChange.FromString(payload)
            except Exception:  # a foreign or corrupt message must not stop the relay
                log.warning("ignored an undecodable identity change from another replica")
                continue
            for listener in self._remote_listeners:
                try:
                    listener(change)
                except Exception:  # a failing listener must not stop the relay either
                    log.exception("a listener failed on an identity change from another replica")
            self._deliver(change)
