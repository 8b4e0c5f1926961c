"""What stands between a call and an HTTP upstream: retries, breaker, admission and pacing.

:class:`Safeguards` runs one operation through all of them, outermost first, deciding by the
failure kinds of :mod:`gateway.failures` (never by gRPC statuses)::

    guards = Safeguards(retry=RetryPolicy(max_attempts=3), bucket=TokenBucket(rate=20, burst=60))
    answer = await guards.run("GET", deadline, attempt)

1. retries of ``UNAVAILABLE`` and ``UNREACHABLE`` failures with exponential backoff and full
   jitter, at least the upstream's ``Retry-After``, never past the deadline, and only while the
   retry budget allows (20% of requests). Refused logins, rate limiting and timeouts are never
   retried;
2. the circuit breaker: after sustained ``UNAVAILABLE``, ``UNREACHABLE`` or ``TIMEOUT`` failures
   the upstream is not called (``CIRCUIT_OPEN``) until a probe succeeds;
3. admission: at most ``max_in_flight`` requests at once, a bounded queue behind them, and
   ``OVERLOADED`` at once beyond it;
4. pacing: the ``attempt`` calls :meth:`Safeguards.pace` before every request it sends (a token
   bucket; ``PACED`` when no token comes before the deadline);
5. the upstream's own pause: after a ``RATE_LIMITED`` answer (a ``429``), nothing is sent until
   the time its ``Retry-After`` names (at most a minute; a second when it names none), and calls
   meanwhile fail at once with ``RATE_LIMITED`` and the rest of the pause (:class:`UpstreamPause`).

The pieces are pure bookkeeping on one event loop (no locks, no I/O), and take their clock (and
sleep or random source, where they use one) in their constructors, so tests move time by hand.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

from gateway.backends.base import BackendObserver, Unobserved
from gateway.deadline import Deadline
from gateway.failures import BackendFailure, Failure

# The window counters keep this many buckets: memory stays constant at any request rate, and the
# window is exact to within one bucket (a tenth of it).
_WINDOW_SLICES = 10
# Float products such as 0.29 * 100 land a hair below the integer they mean.
_EPSILON = 1e-9
# 2.0 ** 1024 overflows; no sane backoff needs more doublings than this to reach max_delay.
_MAX_DOUBLINGS = 512


# ---------------------------------------------------------------------------------- windows


class _WindowedCounter:
    """How many events happened in the last ``window`` seconds, to within ``window / 10``."""

    __slots__ = ("_clock", "_counts", "_slices", "_starts", "_width")

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._width = window / _WINDOW_SLICES
        self._slices = _WINDOW_SLICES
        self._counts = [0] * self._slices
        # Which slice of time each bucket currently counts; None for a bucket never used.
        self._starts: list[int | None] = [None] * self._slices

    def add(self) -> None:
        index = self._index()
        bucket = index % self._slices
        if self._starts[bucket] != index:
            self._starts[bucket] = index
            self._counts[bucket] = 0
        self._counts[bucket] += 1

    def total(self) -> int:
        oldest = self._index() - self._slices + 1
        return sum(
            count
            for count, start in zip(self._counts, self._starts, strict=True)
            if start is not None and start >= oldest
        )

    def clear(self) -> None:
        self._counts = [0] * self._slices
        self._starts = [None] * self._slices

    def _index(self) -> int:
        return math.floor(self._clock() / self._width)


# ---------------------------------------------------------------------------------- retries


class RetryBudget:
    """Caps retries at a share of recent requests, so retries cannot multiply an outage.

    Like gRPC's retry throttling and Finagle's ``RetryBudget``: over the sliding ``window``,
    retries may number at most ``ratio`` x requests, plus ``min_retries_per_second`` x
    ``window`` so a quiet gateway can still retry at all::

        budget = RetryBudget(ratio=0.2, min_retries_per_second=10, window=10.0)
        budget.record_request()          # once per original request, never for a retry
        if budget.try_spend_retry():     # False once the budget is spent
            ...retry...
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ratio >= 0.0:
            raise ValueError("ratio must be at least 0")
        if not min_retries_per_second >= 0.0:
            raise ValueError("min_retries_per_second must be at least 0")
        if not window > 0.0:
            raise ValueError("window must be positive")
        self.ratio = ratio
        self._reserve = min_retries_per_second * window
        self._requests = _WindowedCounter(window, clock)
        self._retries = _WindowedCounter(window, clock)

    def record_request(self) -> None:
        """Count one original request (not a retry): each earns ``ratio`` of a retry."""
        self._requests.add()

    def try_spend_retry(self) -> bool:
        """Take one retry from the budget; False, and nothing taken, when it is spent."""
        allowed = self.ratio * self._requests.total() + self._reserve
        if self._retries.total() + 1 > allowed + _EPSILON:
            return False
        self._retries.add()
        return True


def _positive(value: float, name: str) -> None:
    if not value > 0.0:  # also refuses NaN
        raise ValueError(f"{name} must be positive")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When to retry a failed upstream call: exponential backoff with full jitter.

    ``max_attempts`` counts the first try, as gRPC's retry policy does: 3 means up to 2 retries.
    After attempt ``n`` fails, the delay is drawn from ``uniform(0, min(max_delay,
    base_delay * 2 ** (n - 1)))`` ("full jitter": replicas that failed together spread out
    instead of retrying together)::

        policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=1.0)
        delay = policy.next_delay(1, retry_after=None, time_remaining=2.0, budget=budget)
        if delay is None:
            raise error       # out of attempts, deadline or budget: report the failure
        await asyncio.sleep(delay)
    """

    max_attempts: int = 3
    base_delay: float = 0.05
    max_delay: float = 1.0
    # Called as uniform(0, ceiling); tests pass a deterministic one.
    uniform: Callable[[float, float], float] = dataclasses.field(
        default=random.uniform, kw_only=True, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        _positive(self.base_delay, "base_delay")
        if not self.max_delay >= self.base_delay:
            raise ValueError("max_delay must be at least base_delay")

    def ceiling(self, attempt: int) -> float:
        """The largest jittered delay after attempt ``attempt`` (1-based) fails."""
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        return min(self.max_delay, self.base_delay * 2.0**doublings)

    def next_delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        time_remaining: float | None = None,
        budget: RetryBudget | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when there must be no retry.

        ``attempt`` is how many attempts have been made, the failed one included.
        ``retry_after`` is the server's own wish (``Retry-After``): the delay is never shorter.
        A wish longer than ``max_delay`` means no retry: the caller should get the RetryInfo
        rather than be held that long. ``time_remaining`` is the caller's deadline (None: no
        deadline); a retry that would start at or after it is pointless. The budget is asked
        last, so a retry refused for any other reason does not spend it.
        """
        if attempt >= self.max_attempts:
            return None
        # NaN and negative wishes mean nothing; treat them as no wish at all.
        floor = retry_after if retry_after is not None and retry_after > 0.0 else 0.0
        if floor > self.max_delay:
            return None
        delay = max(self.uniform(0.0, self.ceiling(attempt)), floor)
        if time_remaining is not None and delay >= time_remaining:
            return None
        if budget is not None and not budget.try_spend_retry():
            return None
        return delay


# ---------------------------------------------------------------------------------- rate


class TokenBucket:
    """Shapes upstream traffic to ``rate`` requests per second, with bursts of up to ``burst``.

    Waiting is first come, first served: each ``acquire`` reserves the next token in line and
    sleeps exactly until it is due. Because the wait is known up front, a request that cannot get
    a token before its deadline fails at once instead of waiting and then failing::

        bucket = TokenBucket(rate=20.0, burst=60)
        await bucket.acquire(timeout=time_remaining)   # PACED if too long a wait
    """

    def __init__(
        self,
        rate: float = 20.0,
        burst: int = 60,
        *,
        max_waiters: int = 256,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        _positive(rate, "rate")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_waiters < 0:
            raise ValueError("max_waiters must be at least 0")
        self.rate = rate
        self.burst = burst
        self.max_waiters = max_waiters
        self._clock = clock
        self._sleep = sleep
        # Negative while callers wait: each waiter has already taken the token it waits for.
        self._tokens = float(burst)
        self._updated = clock()
        self._waiters = 0

    @property
    def waiting(self) -> int:
        """How many callers are waiting for a token now."""
        return self._waiters

    async def acquire(self, timeout: float | None = None) -> None:
        """Take a token, waiting in line for one; ``timeout`` None waits as long as needed.

        Raises ``BackendFailure(PACED)`` without waiting when the token would come later than
        ``timeout`` seconds from now, or when ``max_waiters`` callers already wait. A caller
        cancelled while waiting gives its token back.
        """
        self._refill()
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return
        wait = -self._tokens / self.rate
        if timeout is not None and wait > timeout:
            self._tokens += 1.0
            raise BackendFailure(
                Failure.PACED,
                f"upstream rate limit: the next request slot is {wait:.3f} s away",
                retry_after=wait,
            )
        if self._waiters >= self.max_waiters:
            self._tokens += 1.0
            raise BackendFailure(
                Failure.PACED,
                f"upstream rate limit: {self._waiters} requests already wait",
                retry_after=wait,
            )
        self._waiters += 1
        try:
            await self._sleep(wait)
        except BaseException:
            # The reserved token was never used. Handing it back lets the next newcomer have it;
            # those already waiting keep their times, so nobody overtakes them.
            self._refill()
            self._tokens = min(float(self.burst), self._tokens + 1.0)
            raise
        finally:
            self._waiters -= 1

    def _refill(self) -> None:
        now = self._clock()
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._updated = now


# ---------------------------------------------------------------------------------- pause

# The pause after a rate-limited answer that names no (usable) Retry-After: as long as the
# RetryInfo such an answer gives its caller.
DEFAULT_PAUSE = 1.0
# The longest pause one answer can ask for (spec 8): callers are refused all that time, and a
# Retry-After of hours is likelier a broken header than a plan.
MAX_PAUSE = 60.0


class UpstreamPause:
    """The upstream's "wait until": no request is sent to it before then.

    A rate-limited answer extends the pause by its ``Retry-After`` (``default`` when it has none,
    at most ``max_pause``); a shorter wish never shortens a pause already longer::

        pause = UpstreamPause()
        pause.extend(3.0)      # a 429 with Retry-After: 3; returns the pause left, 3.0
        pause.remaining()      # 3.0 now; 0.0 from 3 s on, when requests flow again
    """

    def __init__(
        self,
        *,
        default: float = DEFAULT_PAUSE,
        max_pause: float = MAX_PAUSE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= default <= max_pause:
            raise ValueError("default must be between 0 and max_pause")
        self.default = default
        self.max_pause = max_pause
        self._clock = clock
        self._until = -math.inf

    def extend(self, seconds: float | None) -> float:
        """Pause for ``seconds`` from now (None or NaN: ``default``; at most ``max_pause``),
        unless already paused for longer; the seconds of pause left."""
        if seconds is None or math.isnan(seconds):
            seconds = self.default
        wish = min(max(seconds, 0.0), self.max_pause)
        now = self._clock()
        if now + wish >= self._until:
            self._until = now + wish
            return wish  # exactly, not as rounded by the sum
        return self._until - now

    def remaining(self) -> float:
        """Seconds until requests may be sent again; 0 when they may be now."""
        return max(0.0, self._until - self._clock())


# ---------------------------------------------------------------------------------- breaker


class BreakerState(enum.Enum):
    """Where a :class:`CircuitBreaker` stands."""

    CLOSED = "closed"  # calls flow; outcomes are counted
    OPEN = "open"  # calls are refused until the open period ends
    HALF_OPEN = "half_open"  # a few probe calls test whether the upstream is back


# Called with (old, new) after every state change, for metrics and logs.
StateChangeHook = Callable[[BreakerState, BreakerState], None]


class BreakerPermit:
    """Leave from a :class:`CircuitBreaker` to make one upstream call.

    Say how the call went with :meth:`record_success` or :meth:`record_failure`, or give the
    permit back with :meth:`release` when the outcome says nothing about the upstream's health.
    Used as a context manager, it is released on any exit without a verdict (an exception, or the
    caller's cancellation), so a half-open probe slot can never leak. The first verdict wins;
    later calls do nothing.
    """

    __slots__ = ("_breaker", "_generation", "_probe", "_settled")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._probe = probe
        self._settled = False

    def record_success(self) -> None:
        """The upstream answered (even with an error that is not UNAVAILABLE-class)."""
        self._settle(True)

    def record_failure(self) -> None:
        """The call failed in a way that says the upstream is unavailable."""
        self._settle(False)

    def release(self) -> None:
        """Give the permit back without a verdict."""
        self._settle(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _settle(self, success: bool | None) -> None:
        if not self._settled:
            self._settled = True
            self._breaker._settle(self._generation, self._probe, success)


class CircuitBreaker:
    """Stops calling an upstream that keeps failing, and tests it gently before trusting it again.

    CLOSED: every call is allowed. It opens when, over the last ``window`` seconds, at least
    ``min_requests`` calls had a verdict and the failed share reached ``failure_ratio``.
    OPEN: :meth:`allow` refuses for the open period, ``open_duration`` at first.
    HALF_OPEN (entered lazily, when the breaker is next consulted after the open period): up to
    ``probes`` calls at a time are let through. A probe success closes the breaker; a probe
    failure opens it again for twice as long as last time, up to ``max_open_duration``::

        breaker = CircuitBreaker(min_requests=20, failure_ratio=0.5, open_duration=5.0)
        permit = breaker.allow()
        if permit is None:
            raise ...  # fail fast; RetryInfo from breaker.retry_after()
        with permit:
            ...call...; permit.record_success()   # or record_failure(), UNAVAILABLE-class only

    A verdict counts only in the state its permit was issued in: a slow call admitted before the
    breaker opened cannot re-close it, nor can its failure count against a fresh window.
    """

    def __init__(
        self,
        *,
        window: float = 10.0,
        min_requests: int = 20,
        failure_ratio: float = 0.5,
        open_duration: float = 5.0,
        max_open_duration: float = 60.0,
        probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: StateChangeHook | None = None,
    ) -> None:
        _positive(window, "window")
        _positive(open_duration, "open_duration")
        if min_requests < 1:
            raise ValueError("min_requests must be at least 1")
        if not 0.0 < failure_ratio <= 1.0:
            raise ValueError("failure_ratio must be in (0, 1]")
        if not max_open_duration >= open_duration:
            raise ValueError("max_open_duration must be at least open_duration")
        if probes < 1:
            raise ValueError("probes must be at least 1")
        self.min_requests = min_requests
        self.failure_ratio = failure_ratio
        self.open_duration = open_duration
        self.max_open_duration = max_open_duration
        self.probes = probes
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        # Bumped on every state change; permits from an older generation are stale.
        self._generation = 0
        self._successes = _WindowedCounter(window, clock)
        self._failures = _WindowedCounter(window, clock)
        self._opened_for = open_duration
        self._open_until = 0.0
        self._probes_out = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an expired OPEN becomes HALF_OPEN here)."""
        self._advance()
        return self._state

    def allow(self) -> BreakerPermit | None:
        """A permit for one call, or None when the breaker refuses it now."""
        self._advance()
        if self._state is BreakerState.OPEN:
            return None
        if self._state is BreakerState.HALF_OPEN:
            if self._probes_out >= self.probes:
                return None
            self._probes_out += 1
            return BreakerPermit(self, self._generation, probe=True)
        return BreakerPermit(self, self._generation, probe=False)

    def retry_after(self) -> float:
        """Seconds until a call may be allowed, for a refused caller's RetryInfo.

        0 when one would be allowed now; the rest of the open period while OPEN. While HALF_OPEN
        with every probe slot taken nobody knows: the probe's verdict is pending, and should it
        fail the breaker opens for at least ``open_duration``, so that is the answer.
        """
        self._advance()
        if self._state is BreakerState.OPEN:
            return max(0.0, self._open_until - self._clock())
        if self._state is BreakerState.HALF_OPEN and self._probes_out >= self.probes:
            return self.open_duration
        return 0.0

    def _settle(self, generation: int, probe: bool, success: bool | None) -> None:
        if generation != self._generation:
            return  # issued under an earlier state; that state's counts and probes are gone
        if probe:
            self._probes_out -= 1
        if success is None:
            return
        if self._state is BreakerState.HALF_OPEN:
            if success:
                self._change(BreakerState.CLOSED)
            else:
                self._open(min(self.max_open_duration, self._opened_for * 2.0))
        elif success:
            self._successes.add()
        else:
            self._failures.add()
            failures = self._failures.total()
            total = failures + self._successes.total()
            if total >= self.min_requests and failures >= self.failure_ratio * total - _EPSILON:
                self._open(self.open_duration)

    def _open(self, duration: float) -> None:
        self._opened_for = duration
        self._open_until = self._clock() + duration
        self._change(BreakerState.OPEN)

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._change(BreakerState.HALF_OPEN)

    def _change(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes_out = 0
        if new is BreakerState.CLOSED:
            self._successes.clear()
            self._failures.clear()
        # Last, so the breaker is consistent whatever the hook does.
        if self._on_state_change is not None:
            self._on_state_change(old, new)


# ---------------------------------------------------------------------------------- admission


class ConcurrencyLimiter:
    """Bounds the calls in progress and the calls queued for a turn; never an unbounded queue.

    Waiters are served first come, first served: a freed slot passes straight to the oldest
    waiter, so newcomers cannot overtake the queue::

        limiter = ConcurrencyLimiter(max_in_flight=64, max_waiting=256)
        async with limiter.slot(timeout=time_remaining):   # OVERLOADED: shed, do not queue
            ...

    Cancellation is safe: a cancelled waiter leaves the queue, a slot handed to a waiter that gave
    up in the same instant passes on to the next, and a slot is released however its holder exits.
    """

    def __init__(self, max_in_flight: int = 64, max_waiting: int = 256) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must be at least 0")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def in_flight(self) -> int:
        """How many slots are held now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """How many callers are queued for a slot now."""
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold one slot for the enclosed block, waiting at most ``timeout`` seconds for it.

        ``timeout`` None waits as long as needed; 0 never waits. Raises an ``OVERLOADED``
        failure when ``max_waiting`` callers already wait, or when the wait times out.
        """
        await self._acquire(timeout)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, timeout: float | None) -> None:
        if self._in_flight < self.max_in_flight and not self._waiters:
            self._in_flight += 1
            return
        if timeout is not None and timeout <= 0.0:
            raise _overloaded(f"gateway overloaded: {self._in_flight} calls in progress")
        if len(self._waiters) >= self.max_waiting:
            raise _overloaded(f"gateway overloaded: {len(self._waiters)} calls already queued")
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(timeout):
                await turn
        except BaseException as error:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot reached us just as we gave up: pass it on
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):  # _release may have dropped it already
                    self._waiters.remove(turn)
            if isinstance(error, TimeoutError):
                raise _overloaded("gateway overloaded: no free slot in time") from None
            raise
        # The slot was handed over by _release without ever being given up: in_flight is right.

    def _release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():  # skip waiters cancelled a moment ago
                turn.set_result(None)
                return
        self._in_flight -= 1


def _overloaded(message: str) -> BackendFailure:
    return BackendFailure(Failure.OVERLOADED, message)


# ---------------------------------------------------------------------------------- together

T = TypeVar("T")

# Failures that say the upstream is down: they count against the breaker.
UPSTREAM_DOWN = frozenset({Failure.UNAVAILABLE, Failure.UNREACHABLE, Failure.TIMEOUT})
# Failures worth another attempt: the upstream may answer the same request next time.
RETRYABLE = frozenset({Failure.UNAVAILABLE, Failure.UNREACHABLE})
# A retry needs time for the wait and another attempt like the last one, with this margin.
_ATTEMPT_MARGIN = 1.5


@dataclasses.dataclass
class Safeguards:
    """Retries, breaker, admission, pacing and the upstream's pause toward one upstream (see
    the module docstring).

    The defaults suit tests: no token bucket, generous admission.
    """

    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    budget: RetryBudget = dataclasses.field(default_factory=RetryBudget)
    breaker: CircuitBreaker = dataclasses.field(default_factory=CircuitBreaker)
    limiter: ConcurrencyLimiter = dataclasses.field(
        default_factory=lambda: ConcurrencyLimiter(max_in_flight=64, max_waiting=1024)
    )
    bucket: TokenBucket | None = None
    observer: BackendObserver = dataclasses.field(default_factory=Unobserved)
    pause: UpstreamPause = dataclasses.field(default_factory=UpstreamPause)

    @classmethod
    def configured(
        cls,
        *,
        retries: int,
        rate_limit: float,
        burst: int,
        max_in_flight: int,
        max_waiting: int,
        observer: BackendObserver,
        on_breaker_change: StateChangeHook | None = None,
    ) -> Safeguards:
        """The safeguards for the configured limits (``rate_limit`` 0: no token bucket; the
        upstream's pause applies all the same)."""
        bucket = None
        if rate_limit > 0:
            bucket = TokenBucket(rate=rate_limit, burst=burst, max_waiters=max_waiting)
        return cls(
            retry=RetryPolicy(max_attempts=1 + retries),
            budget=RetryBudget(),
            breaker=CircuitBreaker(on_state_change=on_breaker_change),
            limiter=ConcurrencyLimiter(max_in_flight=max_in_flight, max_waiting=max_waiting),
            bucket=bucket,
            observer=observer,
        )

    async def run(
        self, operation: str, deadline: Deadline, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """``attempt()`` through every safeguard, retried while it is worth it.

        ``attempt`` sends the request (calling :meth:`pace` before each one it sends) and
        raises :class:`~gateway.failures.BackendFailure` for what it saw.
        """
        self.budget.record_request()
        attempts = 0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                return await self._admitted(deadline, attempt)
            except BackendFailure as failure:
                delay = self._retry_delay(
                    failure, attempts, time.perf_counter() - started, deadline
                )
                if delay is None:
                    raise
            self.observer.upstream_retry(operation)
            await asyncio.sleep(delay)

    async def pace(self, deadline: Deadline) -> None:
        """Wait for this request's turn in the pace toward the upstream.

        Raises ``RATE_LIMITED`` at once, with the pause left as ``retry_after``, while the
        upstream's pause lasts (also when it began during the wait for a token).
        """
        self._refuse_while_paused()
        if self.bucket is not None:
            try:
                await self.bucket.acquire(timeout=deadline.remaining())
            except BackendFailure:
                self.observer.upstream_rejected("rate_limited")
                raise
            self._refuse_while_paused()

    def _refuse_while_paused(self) -> None:
        """``RATE_LIMITED`` while the upstream's pause lasts. No ``http_status``: the upstream
        was not asked, so the breaker hears nothing of it, and the pause is not extended."""
        remaining = self.pause.remaining()
        if remaining > 0.0:
            self.observer.upstream_rejected("paused")
            raise BackendFailure(
                Failure.RATE_LIMITED,
                f"the upstream asked the gateway to wait; {remaining:.1f} s left",
                retry_after=remaining,
            )

    async def _admitted(self, deadline: Deadline, attempt: Callable[[], Awaitable[T]]) -> T:
        """One attempt through the breaker and within a slot; the breaker hears its verdict,
        and a rate-limited answer pauses the upstream."""
        # Before the breaker and the queue: a call that cannot be sent is refused at once.
        self._refuse_while_paused()
        permit = self.breaker.allow()
        if permit is None:
            self.observer.upstream_rejected("circuit_open")
            raise BackendFailure(Failure.CIRCUIT_OPEN, retry_after=self.breaker.retry_after())
        with permit:
            try:
                async with self.limiter.slot(timeout=deadline.remaining()):
                    result = await attempt()
            except BackendFailure as failure:
                if failure.kind is Failure.OVERLOADED:
                    self.observer.upstream_rejected("overloaded")
                if failure.kind is Failure.RATE_LIMITED and failure.http_status is not None:
                    # The upstream's answer (not a refusal of ours): pause, and tell this caller
                    # the pause left, as every caller refused during it is told.
                    failure.retry_after = self.pause.extend(failure.retry_after)
                verdict = _breaker_verdict(failure)
                if verdict is not None:
                    (permit.record_success if verdict else permit.record_failure)()
                raise
            permit.record_success()
            return result

    def _retry_delay(
        self, failure: BackendFailure, attempts: int, took: float, deadline: Deadline
    ) -> float | None:
        """The wait before the next attempt, or None when retrying is not worth it."""
        if failure.kind not in RETRYABLE or failure.login:
            return None
        remaining = deadline.remaining()
        if remaining is not None:
            # A retry that would run into the deadline only turns UNAVAILABLE into
            # DEADLINE_EXCEEDED, and costs the upstream a request.
            remaining -= _ATTEMPT_MARGIN * took
        return self.retry.next_delay(
            attempts, retry_after=failure.retry_after, time_remaining=remaining, budget=self.budget
        )


def _breaker_verdict(failure: BackendFailure) -> bool | None:
    """What a failed attempt says of the upstream's health: down (False), up (True: it gave a
    real answer, a 404 included), or nothing (the gateway's own limits, a refused login)."""
    if failure.kind in (Failure.UNREACHABLE, Failure.TIMEOUT):
        return False
    if failure.http_status is None or failure.login:
        return None
    return failure.kind not in UPSTREAM_DOWN


__all__ = [
    "BreakerPermit",
    "BreakerState",
    "CircuitBreaker",
    "ConcurrencyLimiter",
    "RetryBudget",
    "RetryPolicy",
    "Safeguards",
    "StateChangeHook",
    "TokenBucket",
    "UpstreamPause",
]
