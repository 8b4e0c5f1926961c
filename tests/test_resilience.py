"""Retry policy and budget, token bucket, circuit breaker and concurrency limiter.

Time is fake throughout: :class:`FakeTime` gives a clock and a sleep that move only when a test
advances them, so no test sleeps for real beyond the limiter's few-millisecond timeouts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backends.safeguards import (
    BreakerState,
    CircuitBreaker,
    ConcurrencyLimiter,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
)
from gateway.failures import BackendFailure, Failure, GatewayError

# Enough turns of the event loop for woken tasks to run to their next wait.
_SETTLE_TURNS = 10
# Real seconds after which a wait that should have failed at once fails the test instead of
# hanging it; never reached when the code is right.
_BUG_GUARD = 1.0


async def settle() -> None:
    """Let every runnable task run until it waits again."""
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)


class FakeTime:
    """A monotonic clock and an ``asyncio.sleep`` stand-in that move only when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    async def advance(self, seconds: float) -> None:
        """Move the clock, wake every sleeper now due (earliest first), and let them run."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now + 1e-9:
            _, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                wake.set_result(None)
        await settle()


class Ceiling:
    """A ``uniform`` that always picks the top of its range and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return high


async def take_now(bucket: TokenBucket) -> bool:
    """Take a token only if one is free this instant (never waits); whether one was taken."""
    try:
        await bucket.acquire(timeout=0.0)
    except BackendFailure as failure:
        if failure.kind is not Failure.PACED:
            raise
        return False
    return True


def no_floor_budget(clock: FakeTime, ratio: float = 0.2) -> RetryBudget:
    return RetryBudget(ratio=ratio, min_retries_per_second=0.0, window=10.0, clock=clock.clock)


# ---------------------------------------------------------------------------------- RetryPolicy


def test_backoff_ceiling_doubles_per_attempt_up_to_max_delay() -> None:
    uniform = Ceiling()
    policy = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=1.0, uniform=uniform)

    delays = [policy.next_delay(attempt) for attempt in range(1, 10)]

    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_jitter_is_full_jitter_drawn_from_zero() -> None:
    uniform = Ceiling()
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=1.0, uniform=uniform)

    policy.next_delay(1)
    policy.next_delay(2)

    assert uniform.calls == [(0.0, 0.05), (0.0, 0.1)]


def test_no_retry_once_max_attempts_are_made() -> None:
    policy = RetryPolicy(max_attempts=3, uniform=Ceiling())

    assert policy.next_delay(2) is not None
    assert policy.next_delay(3) is None


def test_retry_after_is_the_minimum_delay() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=1.0, uniform=lambda a, b: a)

    assert policy.next_delay(1, retry_after=0.7) == 0.7
    assert policy.next_delay(1, retry_after=None) == 0.0


def test_retry_after_beyond_max_delay_means_no_retry() -> None:
    policy = RetryPolicy(max_attempts=3, max_delay=1.0, uniform=Ceiling())

    assert policy.next_delay(1, retry_after=30.0) is None


def test_no_retry_when_the_delay_would_pass_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=1.0, uniform=Ceiling())

    assert policy.next_delay(1, time_remaining=0.6) == 0.5
    assert policy.next_delay(1, time_remaining=0.5) is None
    assert policy.next_delay(1, retry_after=0.8, time_remaining=0.6) is None


def test_retry_refused_for_its_deadline_does_not_spend_the_budget() -> None:
    clock = FakeTime()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10.0, clock=clock.clock)
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, uniform=Ceiling())

    assert policy.next_delay(1, time_remaining=0.1, budget=budget) is None
    assert policy.next_delay(1, time_remaining=5.0, budget=budget) == 0.5  # the one retry left
    assert policy.next_delay(1, time_remaining=5.0, budget=budget) is None


def test_spent_budget_stops_retries() -> None:
    clock = FakeTime()
    budget = no_floor_budget(clock)
    policy = RetryPolicy(max_attempts=3, uniform=Ceiling())

    assert policy.next_delay(1, budget=budget) is None


@pytest.mark.parametrize(
    "settings",
    [
        {"max_attempts": 0},
        {"base_delay": 0.0},
        {"base_delay": math.nan},
        {"base_delay": 0.5, "max_delay": 0.1},
    ],
)
def test_policy_refuses_meaningless_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**settings)  # type: ignore[arg-type]


@given(
    attempt=st.integers(min_value=1, max_value=2000),
    base_delay=st.floats(min_value=1e-6, max_value=10.0),
    spread=st.floats(min_value=1.0, max_value=1000.0),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=100.0),
    time_remaining=st.none() | st.floats(min_value=0.0, max_value=100.0),
)
def test_delay_stays_within_full_jitter_retry_after_and_deadline(
    attempt: int,
    base_delay: float,
    spread: float,
    fraction: float,
    retry_after: float | None,
    time_remaining: float | None,
) -> None:
    policy = RetryPolicy(
        max_attempts=2001,
        base_delay=base_delay,
        max_delay=base_delay * spread,
        uniform=lambda low, high: low + (high - low) * fraction,
    )
    ceiling = min(policy.max_delay, base_delay * 2.0 ** min(attempt - 1, 512))

    delay = policy.next_delay(attempt, retry_after=retry_after, time_remaining=time_remaining)

    wish = retry_after or 0.0
    would_wait = max(ceiling * fraction, wish)
    if wish > policy.max_delay or (time_remaining is not None and would_wait >= time_remaining):
        assert delay is None
        return
    assert delay is not None
    assert 0.0 <= delay <= max(ceiling, wish) <= policy.max_delay
    assert delay >= wish
    assert time_remaining is None or delay < time_remaining


# ---------------------------------------------------------------------------------- RetryBudget


def test_budget_refuses_retries_beyond_the_ratio_of_requests() -> None:
    clock = FakeTime()
    budget = no_floor_budget(clock, ratio=0.2)
    for _ in range(100):
        budget.record_request()

    spent = [budget.try_spend_retry() for _ in range(25)]

    assert spent == [True] * 20 + [False] * 5


def test_budget_ratio_is_not_lost_to_float_rounding() -> None:
    clock = FakeTime()
    budget = no_floor_budget(clock, ratio=0.29)  # 0.29 * 100 == 28.999999999999996
    for _ in range(100):
        budget.record_request()

    assert sum(budget.try_spend_retry() for _ in range(35)) == 29


async def test_budget_refuses_once_requests_leave_and_recovers_once_retries_leave() -> None:
    clock = FakeTime()
    budget = no_floor_budget(clock, ratio=0.2)
    for _ in range(100):
        budget.record_request()
    await clock.advance(9.0)
    assert sum(budget.try_spend_retry() for _ in range(10)) == 10

    await clock.advance(1.5)  # t=10.5: the requests have left the window, the retries not yet
    assert budget.try_spend_retry() is False

    await clock.advance(9.0)  # t=19.5: the retries have left too
    for _ in range(10):
        budget.record_request()
    assert [budget.try_spend_retry() for _ in range(3)] == [True, True, False]


async def test_budget_floor_lets_quiet_traffic_retry() -> None:
    clock = FakeTime()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.5, window=10.0, clock=clock.clock)

    assert sum(budget.try_spend_retry() for _ in range(10)) == 5
    await clock.advance(10.0)
    assert budget.try_spend_retry() is True


# ---------------------------------------------------------------------------------- TokenBucket


async def test_bucket_allows_a_burst_then_the_rate() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=2.0, burst=3, clock=time.clock, sleep=time.sleep)

    assert [await take_now(bucket) for _ in range(4)] == [True, True, True, False]
    await time.advance(0.5)
    assert [await take_now(bucket) for _ in range(2)] == [True, False]
    await time.advance(100.0)  # a long pause refills up to the burst, no more
    assert sum([await take_now(bucket) for _ in range(10)]) == 3
    assert time.slept == []


async def test_acquire_takes_a_free_token_without_sleeping() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=1.0, burst=2, clock=time.clock, sleep=time.sleep)

    await bucket.acquire(timeout=0.0)
    await bucket.acquire(timeout=None)

    assert time.slept == []


async def test_acquire_waits_for_tokens_in_arrival_order() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10.0, burst=1, clock=time.clock, sleep=time.sleep)
    assert await take_now(bucket)
    served: list[str] = []

    async def caller(name: str) -> None:
        await bucket.acquire(timeout=None)
        served.append(name)

    tasks = [asyncio.create_task(caller(name)) for name in "abc"]
    await settle()
    assert bucket.waiting == 3
    assert not await take_now(bucket)  # a newcomer cannot take the token "a" waits for

    for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
        await time.advance(0.1)
        assert served == expected
    await asyncio.gather(*tasks)
    assert bucket.waiting == 0


async def test_acquire_fails_at_once_when_the_wait_exceeds_the_timeout() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10.0, burst=1, clock=time.clock, sleep=time.sleep)
    assert await take_now(bucket)

    with pytest.raises(BackendFailure) as raised:
        await bucket.acquire(timeout=0.05)

    assert time.slept == []
    assert raised.value.kind is Failure.PACED
    assert raised.value.retry_after == pytest.approx(0.1)
    assert isinstance(raised.value, GatewayError)
    # The refused caller took nothing: the next token is still 0.1 s away, not 0.2 s.
    waiter = asyncio.create_task(bucket.acquire(timeout=0.1))
    await settle()
    assert time.slept == [pytest.approx(0.1)]
    await time.advance(0.1)
    assert waiter.done()
    await waiter


async def test_acquire_with_zero_timeout_never_waits() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=1000.0, burst=1, clock=time.clock, sleep=time.sleep)
    await bucket.acquire(timeout=0.0)

    with pytest.raises(BackendFailure) as raised:
        await bucket.acquire(timeout=0.0)
    assert raised.value.kind is Failure.PACED
    assert time.slept == []


async def test_acquire_fails_at_once_beyond_max_waiters() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10.0, burst=1, max_waiters=2, clock=time.clock, sleep=time.sleep)
    assert await take_now(bucket)
    waiters = [asyncio.create_task(bucket.acquire(timeout=None)) for _ in range(2)]
    await settle()

    with pytest.raises(BackendFailure, match="already wait") as raised:
        await asyncio.wait_for(bucket.acquire(timeout=None), timeout=_BUG_GUARD)
    assert raised.value.kind is Failure.PACED

    await time.advance(0.1)  # the refused caller did not push the others back
    assert waiters[0].done()
    assert not waiters[1].done()
    await time.advance(0.1)
    await asyncio.gather(*waiters)


async def test_cancelled_waiter_gives_its_token_back() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10.0, burst=1, clock=time.clock, sleep=time.sleep)
    assert await take_now(bucket)
    first = asyncio.create_task(bucket.acquire(timeout=None))
    second = asyncio.create_task(bucket.acquire(timeout=None))
    await settle()

    second.cancel()
    await settle()
    await time.advance(0.1)

    assert first.done()
    assert second.cancelled()
    assert bucket.waiting == 0
    await time.advance(0.1)  # the token "second" reserved is free again
    assert await take_now(bucket)
    assert not await take_now(bucket)


async def test_acquire_sleeps_for_real_by_default() -> None:
    bucket = TokenBucket(rate=500.0, burst=1)  # the second token is 2 ms away
    await bucket.acquire(timeout=1.0)
    await asyncio.wait_for(bucket.acquire(timeout=1.0), timeout=1.0)
    assert bucket.waiting == 0


# ---------------------------------------------------------------------------------- CircuitBreaker


class Breaker:
    """A breaker on a fake clock that records its state changes."""

    def __init__(self, **settings: float) -> None:
        self.time = FakeTime()
        self.changes: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(
            window=settings.get("window", 10.0),
            min_requests=int(settings.get("min_requests", 20)),
            failure_ratio=settings.get("failure_ratio", 0.5),
            open_duration=settings.get("open_duration", 5.0),
            max_open_duration=settings.get("max_open_duration", 60.0),
            clock=self.time.clock,
            on_state_change=lambda old, new: self.changes.append((old, new)),
        )

    def outcomes(self, successes: int, failures: int) -> None:
        for _ in range(successes):
            permit = self.breaker.allow()
            assert permit is not None
            permit.record_success()
        for _ in range(failures):
            permit = self.breaker.allow()
            assert permit is not None
            permit.record_failure()

    def open(self) -> None:
        self.outcomes(0, 20)
        assert self.breaker.state is BreakerState.OPEN


def test_breaker_stays_closed_below_min_requests() -> None:
    subject = Breaker(min_requests=20)

    subject.outcomes(0, 19)

    assert subject.breaker.state is BreakerState.CLOSED
    assert subject.changes == []


def test_breaker_opens_at_the_failure_ratio_once_min_requests_are_seen() -> None:
    below = Breaker(min_requests=20, failure_ratio=0.5)
    below.outcomes(11, 9)
    assert below.breaker.state is BreakerState.CLOSED

    at = Breaker(min_requests=20, failure_ratio=0.5)
    at.outcomes(10, 10)
    assert at.breaker.state is BreakerState.OPEN
    assert at.changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


async def test_failures_that_left_the_window_do_not_count() -> None:
    subject = Breaker(min_requests=20, window=10.0)
    subject.outcomes(0, 19)

    await subject.time.advance(11.0)
    subject.outcomes(0, 1)

    assert subject.breaker.state is BreakerState.CLOSED


async def test_open_breaker_refuses_calls_until_open_duration_passes() -> None:
    subject = Breaker(open_duration=5.0)
    subject.open()

    await subject.time.advance(4.0)
    assert subject.breaker.allow() is None
    assert subject.breaker.retry_after() == pytest.approx(1.0)
    assert subject.changes == [(BreakerState.CLOSED, BreakerState.OPEN)]  # still open

    await subject.time.advance(1.0)
    assert subject.breaker.retry_after() == 0.0
    assert subject.breaker.state is BreakerState.HALF_OPEN


async def test_half_open_breaker_admits_exactly_one_probe() -> None:
    subject = Breaker(open_duration=5.0)
    subject.open()
    await subject.time.advance(5.0)

    probe = subject.breaker.allow()

    assert probe is not None
    assert subject.breaker.allow() is None
    assert subject.breaker.retry_after() == 5.0


async def test_probe_success_closes_the_breaker() -> None:
    subject = Breaker(open_duration=5.0)
    subject.open()
    await subject.time.advance(5.0)
    probe = subject.breaker.allow()
    assert probe is not None

    probe.record_success()

    assert subject.breaker.state is BreakerState.CLOSED
    assert subject.changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    subject.outcomes(0, 19)  # a fresh window: the old failures are forgotten
    assert subject.breaker.state is BreakerState.CLOSED


async def test_probe_failure_reopens_for_longer_up_to_the_cap() -> None:
    subject = Breaker(open_duration=5.0, max_open_duration=12.0)
    subject.open()
    open_periods = []
    for _ in range(3):
        await subject.time.advance(subject.breaker.retry_after())
        probe = subject.breaker.allow()
        assert probe is not None
        probe.record_failure()
        assert subject.breaker.state is BreakerState.OPEN
        open_periods.append(subject.breaker.retry_after())

    assert open_periods == [10.0, 12.0, 12.0]
    assert subject.changes[-2:] == [
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
    ]


async def test_cancelled_probe_releases_its_slot() -> None:
    subject = Breaker(open_duration=5.0)
    subject.open()
    await subject.time.advance(5.0)
    started = asyncio.Event()

    async def probe_that_hangs() -> None:
        permit = subject.breaker.allow()
        assert permit is not None
        with permit:
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe_that_hangs())
    await started.wait()
    assert subject.breaker.allow() is None

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert subject.breaker.state is BreakerState.HALF_OPEN
    assert subject.breaker.allow() is not None


async def test_released_probe_without_a_verdict_keeps_the_breaker_half_open() -> None:
    subject = Breaker(open_duration=5.0)
    subject.open()
    await subject.time.advance(5.0)
    probe = subject.breaker.allow()
    assert probe is not None

    probe.release()
    probe.record_failure()  # too late: the first settlement wins

    assert subject.breaker.state is BreakerState.HALF_OPEN
    assert subject.breaker.allow() is not None


async def test_verdicts_from_before_a_state_change_are_ignored() -> None:
    subject = Breaker(open_duration=5.0)
    slow = subject.breaker.allow()
    assert slow is not None
    subject.open()
    await subject.time.advance(5.0)
    assert subject.breaker.state is BreakerState.HALF_OPEN

    slow.record_success()  # admitted while closed: it is no probe

    assert subject.breaker.state is BreakerState.HALF_OPEN
    assert subject.breaker.allow() is not None


@pytest.mark.parametrize(
    "settings",
    [{"min_requests": 0}, {"failure_ratio": 0.0}, {"failure_ratio": 1.5}, {"probes": 0}],
)
def test_breaker_refuses_meaningless_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(**settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- limiter


class Holders:
    """Tasks that each hold a limiter slot until told to let go."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self.limiter = limiter
        self.entered: list[str] = []
        self.go = {name: asyncio.Event() for name in "abcdefgh"}

    def start(self, name: str, timeout: float | None = None) -> asyncio.Task[None]:
        return asyncio.create_task(self._hold(name, timeout))

    async def _hold(self, name: str, timeout: float | None) -> None:
        async with self.limiter.slot(timeout):
            self.entered.append(name)
            await self.go[name].wait()


async def test_limiter_bounds_the_calls_in_flight() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=2, max_waiting=5)
    holders = Holders(limiter)
    tasks = [holders.start(name) for name in "abc"]
    await settle()

    assert holders.entered == ["a", "b"]
    assert (limiter.in_flight, limiter.waiting) == (2, 1)

    holders.go["a"].set()
    await settle()
    assert holders.entered == ["a", "b", "c"]
    assert (limiter.in_flight, limiter.waiting) == (2, 0)

    for event in holders.go.values():
        event.set()
    await asyncio.gather(*tasks)
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_limiter_serves_waiters_in_arrival_order() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)
    holders = Holders(limiter)
    tasks = [holders.start(name) for name in "abcd"]
    await settle()

    for name in "abc":
        holders.go[name].set()
        await settle()
    holders.go["d"].set()
    await asyncio.gather(*tasks)

    assert holders.entered == ["a", "b", "c", "d"]


async def test_newcomer_does_not_overtake_the_queue() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)
    holders = Holders(limiter)
    tasks = [holders.start("a"), holders.start("b")]
    await settle()

    holders.go["a"].set()  # "a" leaves; the slot goes to "b" before "c" can try
    tasks.append(holders.start("c", timeout=0.0))
    await settle()

    assert holders.entered == ["a", "b"]
    with pytest.raises(BackendFailure) as raised:
        await tasks[2]
    assert raised.value.kind is Failure.OVERLOADED
    holders.go["b"].set()
    await asyncio.gather(*tasks[:2])


async def test_limiter_fails_fast_when_the_queue_is_full() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=2)
    holders = Holders(limiter)
    tasks = [holders.start(name) for name in "abc"]
    await settle()

    with pytest.raises(BackendFailure, match="queued") as raised:
        async with asyncio.timeout(_BUG_GUARD), limiter.slot(timeout=None):
            pytest.fail("ran beyond the waiting bound")
    assert raised.value.kind is Failure.OVERLOADED
    assert isinstance(raised.value, GatewayError)
    assert (limiter.in_flight, limiter.waiting) == (1, 2)

    for event in holders.go.values():
        event.set()
    await asyncio.gather(*tasks)


async def test_limiter_with_zero_timeout_fails_at_once_when_full() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)
    async with limiter.slot(timeout=0.0):
        with pytest.raises(BackendFailure, match="in progress") as raised:
            async with limiter.slot(timeout=0.0):
                pytest.fail("ran beyond the in-flight bound")
        assert raised.value.kind is Failure.OVERLOADED
        assert limiter.waiting == 0


async def test_limiter_wait_that_times_out_fails_and_leaves_the_queue() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)
    async with limiter.slot():
        with pytest.raises(BackendFailure, match="in time") as raised:
            async with limiter.slot(timeout=0.005):
                pytest.fail("ran beyond the in-flight bound")
        assert raised.value.kind is Failure.OVERLOADED
        assert limiter.waiting == 0
    assert limiter.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)
    holders = Holders(limiter)
    tasks = [holders.start(name) for name in "abc"]
    await settle()

    tasks[1].cancel()
    await settle()
    assert limiter.waiting == 1
    holders.go["a"].set()
    await settle()

    assert holders.entered == ["a", "c"]
    assert tasks[1].cancelled()
    holders.go["c"].set()
    await asyncio.gather(tasks[0], tasks[2])
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_slot_is_released_when_its_holder_fails_or_is_cancelled() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)

    with pytest.raises(RuntimeError):
        async with limiter.slot():
            raise RuntimeError("the call failed")
    assert limiter.in_flight == 0

    holders = Holders(limiter)
    holder = holders.start("a")
    await settle()
    holder.cancel()
    await settle()
    assert holder.cancelled()
    assert limiter.in_flight == 0


async def test_slot_handed_to_a_waiter_cancelled_before_it_ran_passes_on() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, max_waiting=5)
    holders = Holders(limiter)
    async with limiter.slot():
        tasks = [holders.start(name) for name in "ab"]
        await settle()
    # The slot now belongs to "a", which has not run yet: it gives up in this very instant.
    tasks[0].cancel()
    await settle()

    assert tasks[0].cancelled()
    assert holders.entered == ["b"]
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    holders.go["b"].set()
    await tasks[1]
    assert limiter.in_flight == 0
