"""ReportIdentityChange and WatchIdentityChanges through a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from whatsapp.identity.v1 import identity_pb2
from whatsapp_emulator.emulator import RunningEmulator

from tests.conftest import Gateway, GatewayFactory, call, new_wa_id

pytestmark = pytest.mark.integration

OLD, NEW = "UKD6Y/5SqDU=", "bmV3SGFzaA=="
SOURCE = identity_pb2.IdentityChangeSource


async def report(gateway: Gateway, wa_id: str, identity_hash: str) -> grpc.StatusCode:
    request = identity_pb2.ReportIdentityChangeRequest(wa_id=wa_id, hash=identity_hash)
    return (await call(gateway.stub.ReportIdentityChange, request)).code


async def started_watch(
    gateway: Gateway, *wa_ids: str
) -> tuple[grpc.aio.UnaryStreamCall, AsyncIterator[identity_pb2.WatchIdentityChangesResponse]]:
    stream = gateway.stub.WatchIdentityChanges(
        identity_pb2.WatchIdentityChangesRequest(wa_ids=list(wa_ids))
    )
    # the watch exists once the server has registered it
    for _ in range(200):
        if gateway.server.changes.watchers:
            break
        await asyncio.sleep(0.01)
    return stream, stream.__aiter__()


async def next_change(
    changes: AsyncIterator[identity_pb2.WatchIdentityChangesResponse],
) -> identity_pb2.IdentityChange:
    response = await asyncio.wait_for(anext(changes), 5)
    return response.change


async def test_a_reported_change_is_cached_unacknowledged_and_announced(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = new_wa_id()
    stream, changes = await started_watch(gateway)
    assert await report(gateway, "+" + wa_id, NEW) == grpc.StatusCode.OK

    change = await next_change(changes)
    read = await gateway.get(wa_id)
    stream.cancel()

    assert (change.identity.wa_id, change.identity.hash) == (wa_id, NEW)
    assert change.source == SOURCE.Value("IDENTITY_CHANGE_SOURCE_REPORT")
    assert change.identity.acknowledged is False
    assert read.ok, read
    assert (read.response.identity.hash, read.response.cache_hit) == (NEW, True)
    assert read.response.identity.acknowledged is False
    assert emulator.state.count() == 0  # nothing asked of WhatsApp


async def test_watchers_hear_of_acknowledges_and_of_reads_that_find_a_new_hash(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id, other = new_wa_id(), new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    emulator.state.set_identity(other, OLD)
    assert (await gateway.get(wa_id)).ok
    stream, changes = await started_watch(gateway, wa_id)

    emulator.state.set_identity(wa_id, NEW)  # WhatsApp changes; the gateway reads it
    assert (await gateway.get(wa_id, bypass_cache=True)).ok
    assert (await gateway.ack(wa_id, NEW)).ok
    assert (await gateway.ack(other, OLD)).ok  # filtered out
    read_change = await next_change(changes)
    ack_change = await next_change(changes)
    stream.cancel()

    assert read_change.source == SOURCE.Value("IDENTITY_CHANGE_SOURCE_READ")
    assert (read_change.identity.hash, read_change.identity.acknowledged) == (NEW, False)
    assert ack_change.source == SOURCE.Value("IDENTITY_CHANGE_SOURCE_ACKNOWLEDGE")
    assert (ack_change.identity.hash, ack_change.identity.acknowledged) == (NEW, True)
    assert ack_change.identity.wa_id == wa_id


async def test_an_invalid_report_changes_nothing(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    assert (await gateway.get(wa_id)).ok
    assert await report(gateway, wa_id, "not a hash!") == grpc.StatusCode.INVALID_ARGUMENT
    assert await report(gateway, "../users/login", NEW) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await gateway.get(wa_id)).response.identity.hash == OLD


async def test_a_watch_filter_with_a_bad_wa_id_is_invalid(gateway: Gateway) -> None:
    stream = gateway.stub.WatchIdentityChanges(
        identity_pb2.WatchIdentityChangesRequest(wa_ids=["16315551234", "not-an-id"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_watcher_that_falls_behind_is_ended_with_resource_exhausted(
    gateway: Gateway,
) -> None:
    _, changes = await started_watch(gateway)
    for i in range(5000):  # all at once, faster than any watcher can read
        change = identity_pb2.IdentityChange(identity=identity_pb2.Identity(wa_id=str(10**10 + i)))
        gateway.server.changes.announce(change)
    received = 0

    async def read_until_ended() -> None:
        nonlocal received
        while True:
            await next_change(changes)
            received += 1

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_until_ended()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < received < 5000


async def test_draining_ends_watches_so_watchers_reconnect(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gateway:
        _, changes = await started_watch(gateway)
        stopping = asyncio.create_task(gateway.server.stop(5))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await next_change(changes)
        await stopping
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**62, 0), (0, 2 * 10**9), (253_402_300_800, 0), (-1, 0), (0, -1)],
    ids=["seconds-2-62", "nanos-2e9", "year-10000", "before-1970", "negative-nanos"],
)
async def test_a_report_with_an_impossible_create_time_is_invalid_argument(
    emulator: RunningEmulator, gateway: Gateway, seconds: int, nanos: int
) -> None:
    """Spec 4.2: INVALID_CREATE_TIME with a BadRequest, never INTERNAL and a traceback."""
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    assert (await gateway.get(wa_id)).ok
    request = identity_pb2.ReportIdentityChangeRequest(wa_id=wa_id, hash=NEW)
    request.create_time.seconds = seconds
    request.create_time.nanos = nanos
    outcome = await call(gateway.stub.ReportIdentityChange, request)

    assert (outcome.code, outcome.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CREATE_TIME",
    )
    assert [v.field for v in outcome.bad_requests[0].field_violations] == ["create_time"]
    assert (await gateway.get(wa_id)).response.identity.hash == OLD
