"""Bounding work by a gRPC caller's remaining deadline, and asking how much of it is left.

    async with caller_deadline(context.time_remaining()):   # None: the caller set no deadline
        await work()                                       # DeadlineExceeded when it runs out
        ...
        left = time_remaining()                            # inside: seconds left, or None

Code deep in the call (the retry loop, the admission queue, the rate limiter) needs the time
left to decide whether waiting is worth it; a context variable carries it there without
threading an argument through every layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator

from gateway.errors import DeadlineExceeded

# The loop time at which the innermost enclosing deadline expires.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "caller_deadline", default=None
)


@contextlib.asynccontextmanager
async def caller_deadline(time_remaining: float | None) -> AsyncIterator[None]:
    """Cancel the enclosed work and raise DeadlineExceeded when ``time_remaining`` runs out."""
    if time_remaining is None:
        yield
        return
    now = asyncio.get_running_loop().time()
    expires = now + max(time_remaining, 0.0)
    outer = _deadline.get()
    token = _deadline.set(expires if outer is None else min(outer, expires))
    try:
        async with asyncio.timeout_at(expires):
            yield
    except TimeoutError:
        raise DeadlineExceeded("the caller's deadline elapsed") from None
    finally:
        _deadline.reset(token)


def time_remaining() -> float | None:
    """Seconds left before the enclosing :func:`caller_deadline`, or None without one."""
    expires = _deadline.get()
    if expires is None:
        return None
    return max(0.0, expires - asyncio.get_running_loop().time())
