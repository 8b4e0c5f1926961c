"""Single flight: concurrent misses for one key share one read.

    flights: SingleFlight[bytes] = SingleFlight()
    answer, joined = await flights.run("16315551234", fetch, deadline)

The read runs in its own task, against a :class:`~gateway.deadline.SharedDeadline`: the latest
deadline of the callers waiting for it. Each caller stops waiting at its own deadline
(``DeadlineExceeded``) without cancelling the read for the others; when the last one leaves,
the read is cancelled. Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.deadline import Deadline, SharedDeadline

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("deadline", "task", "waiters")

    def __init__(self, task: asyncio.Task[T], deadline: SharedDeadline) -> None:
        self.task = task
        self.deadline = deadline
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Concurrent calls for one key share one run of the work.

    The work runs in its own task, so a caller that is cancelled (its deadline passed, or it
    went away) stops waiting without cancelling the work for the others. When the last waiter
    leaves, nobody wants the answer any more and the work is cancelled.
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(
        self, key: str, work: Callable[[Deadline], Awaitable[T]], deadline: Deadline
    ) -> tuple[T, bool]:
        """The result of ``work(shared_deadline)`` for ``key``, and whether this call joined a
        running flight. Raises ``DeadlineExceeded`` when ``deadline`` passes first."""
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            # The work runs in its own task, so no caller's leaving cancels it. It copies the
            # first caller's context, so its log lines carry that request id; its waits
            # (admission, pacing, retries) are judged against the shared deadline.
            shared = SharedDeadline(deadline.expires)
            flight = _Flight(asyncio.ensure_future(work(shared)), shared)
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _: self._forget(key, flight))
        else:
            flight.deadline.extend(deadline)
        flight.waiters += 1
        try:
            async with deadline.bound():
                return await asyncio.shield(flight.task), joined
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Forget it first, so a caller arriving now starts afresh rather than joining
                # a flight that is being cancelled.
                self._forget(key, flight)
                flight.task.cancel()

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
