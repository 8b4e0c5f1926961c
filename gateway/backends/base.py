"""The seam every upstream plugs into: one :class:`Backend` per sender, and what it returns.

    backend: Backend = OnPremBackend(...)
    identity = await backend.get_identity("16315551234", deadline=deadline, trace=trace)
    status = await backend.acknowledge("16315551234", "UKD6Y/5SqDU=", deadline=deadline)

A backend raises :class:`~gateway.failures.BackendFailure` with the kind of failure it saw; it
never speaks gRPC. A new upstream is a new folder beside ``onprem/`` implementing this protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

from gateway.deadline import Deadline


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamIdentity:
    """One identity as the upstream reported it."""

    hash: str
    create_time_ms: int
    acknowledged: bool


class Backend(Protocol):
    """Reads and acknowledges identities for one sender (one business phone number)."""

    async def get_identity(
        self, wa_id: str, *, deadline: Deadline, trace: Mapping[str, str] | None = None
    ) -> UpstreamIdentity:
        """The contact's latest identity; ``wa_id`` is validated, normalised digits."""
        ...

    async def acknowledge(
        self,
        wa_id: str,
        identity_hash: str,
        *,
        deadline: Deadline,
        trace: Mapping[str, str] | None = None,
    ) -> int | None:
        """Acknowledge ``identity_hash``; the upstream's HTTP status, if there was one."""
        ...

    async def aclose(self) -> None:
        """Release connections and stop background work."""
        ...


class BackendObserver(Protocol):
    """Told what happens on the way upstream (:class:`gateway.telemetry.metrics.Metrics`)."""

    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None: ...
    def upstream_retry(self, operation: str) -> None: ...
    def upstream_rejected(self, reason: str) -> None: ...
    def breaker_changed(self, state: str) -> None: ...
    def login(self, outcome: str) -> None: ...


class Unobserved:
    """A :class:`BackendObserver` that ignores everything (tests, tools)."""

    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None:
        return None

    def upstream_retry(self, operation: str) -> None:
        return None

    def upstream_rejected(self, reason: str) -> None:
        return None

    def breaker_changed(self, state: str) -> None:
        return None

    def login(self, outcome: str) -> None:
        return None
