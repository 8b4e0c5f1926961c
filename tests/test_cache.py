"""The identity cache (TTL, LRU bound, acknowledge updates) and single flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import NO_DEADLINE, Deadline
from gateway.failures import DeadlineExceeded
from gateway.store.cache import IdentityCache
from gateway.store.fence import ReadFence
from gateway.store.single_flight import SingleFlight


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

    async def work(deadline: Deadline) -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    tasks = [asyncio.create_task(flights.run("k", work, NO_DEADLINE)) for _ in range(100)]
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
        flights.run("a", lambda _: work_for("a"), NO_DEADLINE),
        flights.run("b", lambda _: work_for("b"), NO_DEADLINE),
    )
    assert [value for value, _ in results] == ["a", "b"]
    assert [joined for _, joined in results] == [False, False]


async def test_a_cancelled_caller_does_not_cancel_the_shared_call() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def work(deadline: Deadline) -> int:
        await release.wait()
        return 7

    leader = asyncio.create_task(flights.run("k", work, NO_DEADLINE))
    follower = asyncio.create_task(flights.run("k", work, NO_DEADLINE))
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

    async def work(deadline: Deadline) -> int:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    caller = asyncio.create_task(flights.run("k", work, NO_DEADLINE))
    await started.wait()
    caller.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert len(flights) == 0


async def test_a_caller_arriving_as_the_last_waiter_leaves_starts_a_fresh_flight() -> None:
    flights: SingleFlight[str] = SingleFlight()
    never = asyncio.Event()

    async def slow_work(deadline: Deadline) -> str:
        await never.wait()
        return "slow"

    async def quick_work(deadline: Deadline) -> str:
        return "quick"

    a = asyncio.ensure_future(flights.run("k", slow_work, NO_DEADLINE))
    await asyncio.sleep(0)  # a is now waiting for its flight
    a.cancel()
    # In the same step: a has not yet left, but it is leaving, and it was the last waiter.
    b = asyncio.ensure_future(flights.run("k", quick_work, NO_DEADLINE))

    assert await b == ("quick", False)  # b started afresh, not joining the cancelled flight
    with pytest.raises(asyncio.CancelledError):
        await a
    assert a.cancelled()
    assert len(flights) == 0


async def test_the_work_runs_against_the_latest_deadline_of_its_callers() -> None:
    flights: SingleFlight[float | None] = SingleFlight()
    release = asyncio.Event()
    given: list[Deadline] = []

    async def work(deadline: Deadline) -> float | None:
        given.append(deadline)
        await release.wait()
        return deadline.expires

    early, late = Deadline.after(60), Deadline.after(120)
    first = asyncio.create_task(flights.run("k", work, early))
    await asyncio.sleep(0)
    second = asyncio.create_task(flights.run("k", work, late))
    await asyncio.sleep(0)
    release.set()

    assert await first == (late.expires, False)
    assert await second == (late.expires, True)
    assert len(given) == 1

    # A caller without a deadline lifts the shared one: the work may take as long as it takes.
    release.clear()
    bounded = asyncio.create_task(flights.run("k", work, Deadline.after(60)))
    await asyncio.sleep(0)
    unbounded = asyncio.create_task(flights.run("k", work, NO_DEADLINE))
    await asyncio.sleep(0)
    release.set()
    assert await bounded == (None, False)
    assert await unbounded == (None, True)


async def test_a_caller_stops_waiting_at_its_own_deadline_without_cancelling_the_work() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def work(deadline: Deadline) -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 5

    patient = asyncio.create_task(flights.run("k", work, NO_DEADLINE))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await flights.run("k", work, Deadline.after(0.01))
    assert len(flights) == 1  # the work goes on for the caller still waiting

    release.set()
    assert await patient == (5, False)
    assert calls == 1
    assert len(flights) == 0


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0

    async def failing(deadline: Deadline) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ValueError("boom")

    results = await asyncio.gather(
        *(flights.run("k", failing, NO_DEADLINE) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    assert calls == 1

    async def succeeding(deadline: Deadline) -> int:
        return 3

    assert await flights.run("k", succeeding, NO_DEADLINE) == (3, False)


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
