"""Shared fixtures: the emulator and the gateway as real servers on loopback sockets.

async def test_something(emulator: RunningEmulator, gateway: Gateway) -> None:
    emulator.state.set_identity("16315551234", "UKD6Y/5SqDU=")
    outcome = await gateway.get("16315551234")
    assert outcome.ok
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc
from whatsapp_emulator.emulator import RunningEmulator

from gateway.app.config import GatewayConfig
from gateway.app.server import GatewayServer

_serial = itertools.count(1)


def new_wa_id() -> str:
    """A wa_id no other test uses, so no cache or emulator state leaks between tests."""
    return f"1999{next(_serial):07d}"


@dataclasses.dataclass
class Outcome:
    """One RPC's result: a response, or a status code with its decoded rich details."""

    code: grpc.StatusCode
    message: str = ""
    response: Any = None
    error_infos: list[error_details_pb2.ErrorInfo] = dataclasses.field(default_factory=list)
    bad_requests: list[error_details_pb2.BadRequest] = dataclasses.field(default_factory=list)
    retry_infos: list[error_details_pb2.RetryInfo] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.code == grpc.StatusCode.OK)

    @property
    def reason(self) -> str:
        assert len(self.error_infos) == 1, f"expected one ErrorInfo: {self}"
        return str(self.error_infos[0].reason)

    @property
    def metadata(self) -> dict[str, str]:
        assert len(self.error_infos) == 1, f"expected one ErrorInfo: {self}"
        return dict(self.error_infos[0].metadata)

    @property
    def retry_seconds(self) -> float | None:
        if not self.retry_infos:
            return None
        seconds: float = self.retry_infos[0].retry_delay.ToTimedelta().total_seconds()
        return seconds


def _decode(outcome: Outcome, status: status_pb2.Status | None) -> Outcome:
    for detail in status.details if status is not None else ():
        for kind, bucket in (
            (error_details_pb2.ErrorInfo, outcome.error_infos),
            (error_details_pb2.BadRequest, outcome.bad_requests),
            (error_details_pb2.RetryInfo, outcome.retry_infos),
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                bucket.append(message)
    return outcome


async def call(
    rpc: Callable[..., Any], request: Any, *, timeout: float = 5.0, metadata: Sequence[Any] = ()
) -> Outcome:
    """Make one grpc.aio call; never raises for an RPC error."""
    pending = rpc(request, timeout=timeout, metadata=tuple(metadata))
    try:
        response = await pending
    except grpc.aio.AioRpcError as error:
        outcome = Outcome(error.code(), error.details() or "")
        return _decode(outcome, await rpc_status.aio.from_call(pending))
    return Outcome(grpc.StatusCode.OK, response=response)


class Gateway:
    """A running GatewayServer and a channel to it."""

    def __init__(self, server: GatewayServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.stub = identity_pb2_grpc.IdentityServiceStub(channel)

    async def get(
        self,
        wa_id: str,
        *,
        bypass_cache: bool = False,
        timeout: float = 5.0,
        metadata: Sequence[Any] = (),
    ) -> Outcome:
        request = identity_pb2.GetIdentityRequest(wa_id=wa_id, bypass_cache=bypass_cache)
        return await call(self.stub.GetIdentity, request, timeout=timeout, metadata=metadata)

    async def ack(
        self, wa_id: str, identity_hash: str, *, timeout: float = 5.0, metadata: Sequence[Any] = ()
    ) -> Outcome:
        request = identity_pb2.AcknowledgeIdentityRequest(wa_id=wa_id, hash=identity_hash)
        return await call(
            self.stub.AcknowledgeIdentity, request, timeout=timeout, metadata=metadata
        )


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with RunningEmulator() as running:
        yield running


@pytest.fixture
def gateway_factory(emulator: RunningEmulator) -> GatewayFactory:
    """Start a gateway against the emulator; keyword arguments override GatewayConfig fields."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        settings: dict[str, Any] = {
            "upstream_url": emulator.url,
            "listen": "127.0.0.1:0",
            "upstream_username": "admin",
            "upstream_password": "secret",
        }
        settings.update(overrides)
        async with (
            GatewayServer(GatewayConfig(**settings)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            yield Gateway(server, channel)

    return start


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as running:
        yield running


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (a hang guard, not a timing test)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result or loop.time() >= deadline:
            return result
        await asyncio.sleep(0.01)
