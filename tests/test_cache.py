"""The identity cache (TTL, LRU bound, acknowledge updates) and single flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import IdentityCache, SingleFlight
from gateway.parse import UpstreamIdentity

IDENTITY = UpstreamIdentity(hash="UKD6Y/5SqDU=", create_time_ms=1600132094000, acknowledged=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_entry_is_served_until_the_ttl_passes() -> None:
    clock = FakeClock()
    cache = IdentityCache(ttl=30, max_entries=10, clock=clock)
    cache.put("16315551234", IDENTITY, fetched_at=1.5)

    clock.now += 29.9
    entry = cache.get_fresh("16315551234")
    assert entry is not None
    assert (entry.hash, entry.fetched_at) == (IDENTITY.hash, 1.5)

    clock.now += 0.1
    assert cache.get_fresh("16315551234") is None
    assert len(cache) == 0


def test_ttl_zero_disables_caching() -> None:
    cache = IdentityCache(ttl=0, max_entries=10)
    cache.put("16315551234", IDENTITY, fetched_at=1.0)
    assert cache.get_fresh("16315551234") is None
    assert len(cache) == 0


def test_the_least_recently_used_entry_is_evicted_at_the_bound() -> None:
    evictions: list[int] = []
    cache = IdentityCache(ttl=30, max_entries=2, on_evict=lambda: evictions.append(1))
    cache.put("1000001", IDENTITY, 1.0)
    cache.put("1000002", IDENTITY, 1.0)
    assert cache.get_fresh("1000001") is not None  # now 1000002 is the least recently used
    cache.put("1000003", IDENTITY, 1.0)

    assert cache.get_fresh("1000002") is None
    assert cache.get_fresh("1000001") is not None
    assert cache.get_fresh("1000003") is not None
    assert len(cache) == 2
    assert len(evictions) == 1


def test_acknowledging_the_cached_hash_marks_it_acknowledged() -> None:
    cache = IdentityCache(ttl=30, max_entries=10)
    cache.put("16315551234", IDENTITY, 1.0)
    cache.record_acknowledged("16315551234", IDENTITY.hash)
    entry = cache.get_fresh("16315551234")
    assert entry is not None
    assert entry.acknowledged is True


def test_acknowledging_another_hash_evicts_the_cached_identity() -> None:
    cache = IdentityCache(ttl=30, max_entries=10)
    cache.put("16315551234", IDENTITY, 1.0)
    cache.record_acknowledged("16315551234", "bmV3SGFzaA==")
    assert cache.get_fresh("16315551234") is None


def test_acknowledging_an_uncached_identity_caches_nothing() -> None:
    cache = IdentityCache(ttl=30, max_entries=10)
    cache.record_acknowledged("16315551234", IDENTITY.hash)
    assert len(cache) == 0


async def test_concurrent_runs_for_one_key_share_one_call() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)

    assert calls == 1
    assert {value for value, _ in results} == {42}
    assert sum(joined for _, joined in results) == 99
    assert len(flights) == 0


async def test_different_keys_do_not_share() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def work_for(key: str) -> str:
        await asyncio.sleep(0)
        return key

    results = await asyncio.gather(
        flights.run("a", lambda: work_for("a")), flights.run("b", lambda: work_for("b"))
    )
    assert [value for value, _ in results] == ["a", "b"]
    assert [joined for _, joined in results] == [False, False]


async def test_a_cancelled_caller_does_not_cancel_the_shared_call() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    leader = asyncio.create_task(flights.run("k", work))
    follower = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    release.set()

    assert await follower == (7, True)
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_the_shared_call_is_abandoned_when_every_caller_has_gone() -> None:
    flights: SingleFlight[int] = SingleFlight()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> int:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    caller = asyncio.create_task(flights.run("k", work))
    await started.wait()
    caller.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert len(flights) == 0


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ValueError("boom")

    results = await asyncio.gather(
        *(flights.run("k", failing) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    assert calls == 1

    async def succeeding() -> int:
        return 3

    assert await flights.run("k", succeeding) == (3, False)
