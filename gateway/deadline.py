"""Bounding work by a gRPC caller's remaining deadline.

async with caller_deadline(context.time_remaining()):   # None: the caller set no deadline
    await work()                                       # DeadlineExceeded when it runs out
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.errors import DeadlineExceeded


@contextlib.asynccontextmanager
async def caller_deadline(time_remaining: float | None) -> AsyncIterator[None]:
    """Cancel the enclosed work and raise DeadlineExceeded when ``time_remaining`` runs out."""
    if time_remaining is None:
        yield
        return
    try:
        async with asyncio.timeout(max(time_remaining, 0.0)):
            yield
    except TimeoutError:
        raise DeadlineExceeded("the caller's deadline elapsed") from None
