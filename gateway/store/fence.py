"""The read fence: a read from the upstream that a change overtook is answered, not cached.

fence = ReadFence()
with fence.reading("16315551234") as read:          # a read from WhatsApp in flight
    identity = await fetch()
    if not read.overtaken:                          # nothing changed it meanwhile
        cache.put("16315551234", identity)
fence.changed("16315551234")                        # an acknowledge or a report landed
"""

from __future__ import annotations


class _Read:
    """One read from WhatsApp in flight; ``overtaken`` once a change lands during it."""

    __slots__ = ("key", "overtaken", "reads")

    def __init__(self, key: str, reads: dict[str, list[_Read]]) -> None:
        self.key = key
        self.reads = reads
        self.overtaken = False

    def __enter__(self) -> _Read:
        self.reads.setdefault(self.key, []).append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        same_key = self.reads[self.key]
        same_key.remove(self)
        if not same_key:
            del self.reads[self.key]


class ReadFence:
    """Tells a read from WhatsApp whether the identity changed while it was in flight.

    A read sent before an acknowledge (or a reported change) landed can bring back the identity
    as it was before: caching that answer would undo the change for up to the TTL. So a read
    that was overtaken answers its callers, who asked before the change, but is not cached.
    The fence holds only the reads in flight. It hears of this process's changes at once and of
    other replicas' changes when they arrive over pub/sub (see ``ChangeBus.on_remote_change``).
    """

    def __init__(self) -> None:
        self._reads: dict[str, list[_Read]] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def reading(self, key: str) -> _Read:
        """A context manager around one read of ``key``; its ``overtaken`` says what changed."""
        return _Read(key, self._reads)

    def changed(self, key: str) -> None:
        """``key`` changed: every read of it now in flight may predate the change."""
        for read in self._reads.get(key, ()):
            read.overtaken = True
