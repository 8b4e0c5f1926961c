"""The caller's deadline as one explicit value, passed from the RPC down to the backend call.

    deadline = Deadline.after(context.time_remaining())    # None: the caller set no deadline
    async with deadline.bound():                            # DeadlineExceeded when it runs out
        identity = await backend.get_identity(wa_id, deadline=deadline, trace=trace)

    deadline.remaining()                                    # seconds left, or None

Code deep in the call (the retry loop, the admission queue, the pacing) asks ``remaining()``
to decide whether waiting is worth it. A read shared by several callers (single flight) runs
against a :class:`SharedDeadline`: the latest deadline among the callers still waiting for it,
so the read is never given up while someone still wants its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.failures import DeadlineExceeded


def _now() -> float:
    return asyncio.get_running_loop().time()


class Deadline:
    """An instant on the event loop's clock, or none (the caller waits as long as it takes)."""

    __slots__ = ("_expires",)

    def __init__(self, expires: float | None) -> None:
        self._expires = expires

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline ``seconds`` from now (``context.time_remaining()``); None: no deadline."""
        return cls(None if seconds is None else _now() + max(seconds, 0.0))

    @property
    def expires(self) -> float | None:
        """The loop time at which it expires; None without a deadline."""
        return self._expires

    def remaining(self) -> float | None:
        """Seconds left (0 once passed), or None without a deadline."""
        expires = self.expires
        return None if expires is None else max(0.0, expires - _now())

    @contextlib.asynccontextmanager
    async def bound(self) -> AsyncIterator[None]:
        """Cancel the enclosed work and raise DeadlineExceeded when the deadline passes."""
        expires = self.expires
        if expires is None:
            yield
            return
        try:
            async with asyncio.timeout_at(expires):
                yield
        except TimeoutError:
            raise DeadlineExceeded("the caller's deadline elapsed") from None


NO_DEADLINE = Deadline(None)


class SharedDeadline(Deadline):
    """The latest of several callers' deadlines: what a shared read may spend.

    Starts as the first caller's; :meth:`extend` with each caller that joins. Any caller
    without a deadline makes it none.
    """

    __slots__ = ()

    def extend(self, other: Deadline) -> None:
        """Allow at least as long as ``other``."""
        if self._expires is None:
            return
        theirs = other.expires
        self._expires = None if theirs is None else max(self._expires, theirs)
