"""The caller's deadline as one value: Deadline, SharedDeadline, and single flight's use of it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import NO_DEADLINE, Deadline, SharedDeadline
from gateway.failures import DeadlineExceeded
from gateway.store.single_flight import SingleFlight


async def test_a_deadline_counts_down_from_the_callers_remaining_time() -> None:
    deadline = Deadline.after(2.0)
    remaining = deadline.remaining()
    assert remaining is not None
    assert 1.5 < remaining <= 2.0
    assert Deadline.after(-1.0).remaining() == 0.0
    assert NO_DEADLINE.remaining() is None
    assert Deadline.after(None).expires is None


async def test_bound_cancels_the_enclosed_work_when_the_deadline_passes() -> None:
    with pytest.raises(DeadlineExceeded):
        async with Deadline.after(0.05).bound():
            await asyncio.sleep(5)
    async with NO_DEADLINE.bound():
        await asyncio.sleep(0)


async def test_a_shared_deadline_is_the_latest_of_its_callers() -> None:
    shared = SharedDeadline(Deadline.after(1.0).expires)
    shared.extend(Deadline.after(0.1))
    assert (shared.remaining() or 0.0) > 0.5  # an earlier deadline does not shorten it
    shared.extend(Deadline.after(10.0))
    assert (shared.remaining() or 0.0) > 5.0
    shared.extend(NO_DEADLINE)
    assert shared.remaining() is None  # a caller without a deadline lifts it
    shared.extend(Deadline.after(1.0))
    assert shared.remaining() is None


async def test_a_shared_read_runs_against_the_latest_deadline_of_its_waiting_callers() -> None:
    """A first caller with a short deadline must not make the read give up (or refuse a retry)
    on behalf of a caller that joined with a long one."""
    flights: SingleFlight[float | None] = SingleFlight()
    release = asyncio.Event()

    async def read(deadline: Deadline) -> float | None:
        await release.wait()
        return deadline.remaining()  # what the read's retry and pacing decisions would see

    hasty = asyncio.ensure_future(flights.run("k", read, Deadline.after(0.05)))
    await asyncio.sleep(0)
    patient = asyncio.ensure_future(flights.run("k", read, Deadline.after(30.0)))
    with pytest.raises(DeadlineExceeded):
        await hasty  # the first caller stops waiting at its own deadline
    release.set()
    remaining, joined = await patient
    assert joined
    assert remaining is not None
    assert remaining > 20.0
