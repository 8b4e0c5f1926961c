"""The change bus: filtered fan-out, bounded watchers, relaying between replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from whatsapp.identity.v1 import identity_pb2

from gateway.failures import BusClosed, WatcherTooSlow
from gateway.store.changes import CHANNEL, ChangeBus
from tests.conftest import wait_until


def change(wa_id: str, identity_hash: str = "UKD6Y/5SqDU=") -> identity_pb2.IdentityChange:
    return identity_pb2.IdentityChange(
        identity=identity_pb2.Identity(wa_id=wa_id, hash=identity_hash),
        source=identity_pb2.IDENTITY_CHANGE_SOURCE_REPORT,
    )


class FakeRelay:
    """An in-memory pub/sub shared by several buses, like Redis between replicas."""

    def __init__(self) -> None:
        self.subscribers: list[asyncio.Queue[bytes]] = []
        self.published = 0

    async def publish(self, channel: str, message: bytes) -> None:
        assert channel == CHANNEL
        self.published += 1
        for queue in self.subscribers:
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.subscribers.append(queue)
        while True:
            yield await queue.get()


async def next_change(changes: AsyncIterator[identity_pb2.IdentityChange]) -> str:
    item = await asyncio.wait_for(anext(changes), 1)
    return str(item.identity.wa_id)


async def test_watchers_receive_the_changes_their_filter_matches() -> None:
    bus = ChangeBus()
    async with bus.watch(None) as everything, bus.watch(frozenset({"1000002"})) as one:
        for wa_id in ("1000001", "1000002", "1000003"):
            bus.announce(change(wa_id))
        assert [await next_change(everything) for _ in range(3)] == [
            "1000001",
            "1000002",
            "1000003",
        ]
        assert await next_change(one) == "1000002"
    assert bus.watchers == 0


async def test_a_watcher_that_falls_behind_is_ended_not_grown() -> None:
    bus = ChangeBus(buffer=5)
    async with bus.watch(None) as changes:
        for i in range(100):
            bus.announce(change(str(1_000_000 + i)))
        received: list[str] = []

        async def read_all() -> None:
            async for item in changes:
                received.append(item.identity.wa_id)

        with pytest.raises(WatcherTooSlow):
            await read_all()
    assert len(received) == 4  # the buffer, less the slot kept for the end marker


async def test_closing_the_bus_ends_every_watch() -> None:
    bus = ChangeBus()
    async with bus.watch(None) as changes:
        waiting = asyncio.create_task(next_change(changes))
        await asyncio.sleep(0)
        await bus.close()
        with pytest.raises(BusClosed):
            await waiting
    with pytest.raises(BusClosed):
        async with bus.watch(None):
            pass


async def test_changes_reach_watchers_of_other_replicas_once() -> None:
    relay = FakeRelay()
    here, there = ChangeBus(), ChangeBus()
    here.attach(relay)
    there.attach(relay)
    await asyncio.sleep(0)  # both subscribed
    async with here.watch(None) as local, there.watch(None) as remote:
        here.announce(change("1000001"))
        assert await next_change(local) == "1000001"
        assert await next_change(remote) == "1000001"
        with pytest.raises(TimeoutError):  # no echo of its own change on the first replica
            await asyncio.wait_for(anext(local), 0.1)
    await here.close()
    await there.close()
    assert relay.published == 1


async def test_remote_change_listeners_hear_other_replicas_changes_only() -> None:
    relay = FakeRelay()
    here, there = ChangeBus(), ChangeBus()
    heard_here: list[str] = []
    heard_there: list[str] = []
    here.on_remote_change(lambda c: heard_here.append(c.identity.wa_id))

    def failing(c: identity_pb2.IdentityChange) -> None:
        raise RuntimeError("listener bug")

    there.on_remote_change(failing)  # must not stop the relay or the next listener
    there.on_remote_change(lambda c: heard_there.append(c.identity.wa_id))
    here.attach(relay)
    there.attach(relay)
    await asyncio.sleep(0)  # both subscribed
    async with there.watch(None) as remote:
        here.announce(change("1000001"))
        assert await next_change(remote) == "1000001"
    there.announce(change("1000002"))
    assert await wait_until(lambda: heard_here == ["1000002"], timeout=1)
    assert heard_there == ["1000001"]
    await here.close()
    await there.close()


async def test_an_undecodable_relayed_message_is_ignored() -> None:
    relay = FakeRelay()
    bus = ChangeBus()
    bus.attach(relay)
    await asyncio.sleep(0)
    async with bus.watch(None) as changes:
        await relay.publish(CHANNEL, b"12345678" + b"\xff\xff\xff")
        await relay.publish(CHANNEL, b"12345678" + change("1000009").SerializeToString())
        assert await next_change(changes) == "1000009"
    await bus.close()
