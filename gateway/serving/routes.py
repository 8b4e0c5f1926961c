"""Which sender (business number) answers a request, and under which cache key.

    routes = Routes({"15550001111": onprem, "447796344125": infobip}, default="15550001111")
    route = routes.resolve(request.sender)      # "" is the default sender
    route.backend, route.number, route.key(wa_id)

A malformed sender is ``InvalidArgument`` (``INVALID_SENDER``), a well-formed one the gateway
does not serve is ``UnknownSender`` (``SENDER_NOT_FOUND``): neither reaches a backend. Cache
keys, single flights and read fences are per sender: a route's key is ``"<number>:<wa_id>"``,
or the bare wa_id for flag mode's one, unnamed sender (so its keys are what they always were).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gateway.backends.base import Backend
from gateway.failures import InvalidArgument, UnknownSender
from gateway.identifiers import sender_violation


def key_prefix(number: str) -> str:
    """The cache-key prefix of a sender's identities."""
    return f"{number}:" if number else ""


def cache_key(number: str, wa_id: str) -> str:
    """The cache, single-flight and fence key of ``wa_id`` through sender ``number``."""
    return key_prefix(number) + wa_id


def split_key(key: str) -> tuple[str, str]:
    """``(sender, wa_id)`` of a :func:`cache_key` (a wa_id is digits: the last colon ends the
    prefix)."""
    number, _, wa_id = key.rpartition(":")
    return number, wa_id


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One sender: its number (empty in flag mode), its backend and its cache keys."""

    number: str
    backend: Backend
    prefix: str

    def key(self, wa_id: str) -> str:
        """The cache, single-flight and fence key of ``wa_id`` through this sender."""
        return self.prefix + wa_id


class Routes:
    """The configured senders, by number, and the default one."""

    def __init__(self, backends: Mapping[str, Backend], default: str) -> None:
        if default not in backends:
            raise ValueError("the default sender must be one of the backends")
        self._routes = {
            number: Route(number, backend, key_prefix(number))
            for number, backend in backends.items()
        }
        self.default = self._routes[default]

    @property
    def all(self) -> tuple[Route, ...]:
        return tuple(self._routes.values())

    @property
    def numbers(self) -> frozenset[str]:
        return frozenset(self._routes)

    @property
    def prefixes(self) -> dict[str, str]:
        """A request's ``sender`` as sent ("" or a number) → its key prefix, for every sender
        served; any other value is for the full path to refuse."""
        prefixes = {number: route.prefix for number, route in self._routes.items()}
        prefixes[""] = self.default.prefix
        return prefixes

    def resolve(self, sender: str, field: str = "sender") -> Route:
        """The route of a request's ``sender``; "" is the default."""
        if not sender:
            return self.default
        route = self._routes.get(sender)
        if route is not None:
            return route
        violation = sender_violation(sender, field)
        if violation is not None:
            raise InvalidArgument([violation])
        raise UnknownSender(sender)

    async def aclose(self) -> None:
        """Close every sender's backend."""
        for route in self._routes.values():
            await route.backend.aclose()
