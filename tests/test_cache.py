"""The identity cache (TTL, LRU bound, acknowledge updates) and single flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.cache import IdentityCache, ReadFence, SingleFlight


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_entry_is_served_until_the_ttl_passes() -> None:
    clock = FakeClock()
    cache: IdentityCache[str] = IdentityCache(ttl=30, max_entries=10, clock=clock)
    cache.put("16315551234", "answer")

    clock.now += 29.9
    assert cache.get_fresh("16315551234") == "answer"

    clock.now += 0.1
    assert cache.get_fresh("16315551234") is None
    assert len(cache) == 0


def test_ttl_zero_disables_caching() -> None:
    cache: IdentityCache[str] = IdentityCache(ttl=0, max_entries=10)
    cache.put("16315551234", "answer")
    assert cache.enabled is False
    assert cache.get_fresh("16315551234") is None
    assert len(cache) == 0


def test_the_least_recently_used_entry_is_evicted_at_the_bound() -> None:
    evictions: list[int] = []
    cache: IdentityCache[str] = IdentityCache(
        ttl=30, max_entries=2, on_evict=lambda: evictions.append(1)
    )
    cache.put("1000001", "a")
    cache.put("1000002", "b")
    assert cache.get_fresh("1000001") == "a"  # now 1000002 is the least recently used
    cache.put("1000003", "c")

    assert cache.get_fresh("1000002") is None
    assert cache.get_fresh("1000001") == "a"
    assert cache.get_fresh("1000003") == "c"
    assert len(cache) == 2
    assert len(evictions) == 1


def test_an_update_replaces_the_value_and_keeps_its_expiry() -> None:
    clock = FakeClock()
    cache: IdentityCache[str] = IdentityCache(ttl=30, max_entries=10, clock=clock)
    cache.put("16315551234", "unacknowledged")
    clock.now += 20
    cache.update("16315551234", lambda value: value.removeprefix("un"))

    assert cache.get_fresh("16315551234") == "acknowledged"
    clock.now += 10
    assert cache.get_fresh("16315551234") is None  # expired 30 s after the put, not the update


def test_an_update_to_none_drops_the_entry() -> None:
    cache: IdentityCache[str] = IdentityCache(ttl=30, max_entries=10)
    cache.put("16315551234", "stale")
    cache.update("16315551234", lambda value: None)
    assert cache.get_fresh("16315551234") is None


def test_updating_an_uncached_entry_caches_nothing() -> None:
    cache: IdentityCache[str] = IdentityCache(ttl=30, max_entries=10)
    cache.update("16315551234", lambda value: "never called")
    assert len(cache) == 0


def test_invalidate_forgets_an_entry() -> None:
    cache: IdentityCache[str] = IdentityCache(ttl=30, max_entries=10)
    cache.put("16315551234", "answer")
    cache.invalidate("16315551234")
    cache.invalidate("16315559999")  # absent: no error
    assert cache.get_fresh("16315551234") is None


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


def test_a_change_overtakes_only_the_reads_of_its_key_in_flight() -> None:
    fence = ReadFence()
    with fence.reading("a") as first, fence.reading("a") as second, fence.reading("b") as other:
        fence.changed("a")
        assert (first.overtaken, second.overtaken, other.overtaken) == (True, True, False)
    with fence.reading("a") as later:
        pass
    assert later.overtaken is False  # the change came before this read began


def test_the_fence_forgets_a_read_when_it_ends_even_by_an_error() -> None:
    fence = ReadFence()

    def failed_read() -> None:
        with fence.reading("a"):
            assert len(fence) == 1
            raise ConnectionError("upstream failed")

    with pytest.raises(ConnectionError, match="upstream failed"):
        failed_read()
    assert len(fence) == 0
    fence.changed("a")  # nothing in flight: nothing to mark
