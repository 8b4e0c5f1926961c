"""Several senders through one real gateway: two On-Premises numbers on two emulators, and one
Infobip number, each request reaching only its own sender's upstream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc
from whatsapp_emulator.emulator import (
    DEFAULT_INFOBIP_API_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    Fault,
    RunningEmulator,
)

from gateway.app.config import GatewayConfig
from gateway.app.senders import SenderConfig, Senders
from gateway.app.server import GatewayServer
from gateway.backends.safeguards import BreakerState
from tests.conftest import Outcome, call, new_wa_id, wait_until

pytestmark = pytest.mark.integration

FIRST, SECOND, THIRD = "15550001111", "15550002222", "447796344125"
OLD, NEW, OTHER = "UKD6Y/5SqDU=", "bmV3SGFzaA==", "7hZ2bvlVvXo="
REDIS_DB = 12  # this file's own database on the machine's Redis, emptied before each test


def _onprem(number: str, url: str) -> SenderConfig:
    return SenderConfig(number, "onprem", url, username=DEFAULT_USERNAME, password=DEFAULT_PASSWORD)


class Fleet:
    """Three emulators (one per sender) and a gateway serving the three senders."""

    def __init__(
        self, emulators: dict[str, RunningEmulator], server: GatewayServer, channel: Any
    ) -> None:
        self.emulators = emulators
        self.server = server
        self.stub = identity_pb2_grpc.IdentityServiceStub(channel)

    async def get(self, wa_id: str, sender: str = "", **fields: Any) -> Outcome:
        request = identity_pb2.GetIdentityRequest(wa_id=wa_id, sender=sender, **fields)
        return await call(self.stub.GetIdentity, request)

    async def ack(self, wa_id: str, identity_hash: str, sender: str = "") -> Outcome:
        request = identity_pb2.AcknowledgeIdentityRequest(
            wa_id=wa_id, hash=identity_hash, sender=sender
        )
        return await call(self.stub.AcknowledgeIdentity, request)

    def upstream_requests(self, sender: str) -> int:
        """Identity requests the sender's upstream received (logins not counted)."""
        return sum(
            "/identity" in recorded.path for recorded in self.emulators[sender].state.requests()
        )


@contextlib.asynccontextmanager
async def fleet(**overrides: Any) -> AsyncIterator[Fleet]:
    async with (
        RunningEmulator() as first,
        RunningEmulator() as second,
        RunningEmulator() as third,
    ):
        senders = Senders(
            (
                _onprem(FIRST, first.url),
                _onprem(SECOND, second.url),
                SenderConfig(THIRD, "infobip", third.url, api_key=DEFAULT_INFOBIP_API_KEY),
            ),
            default=FIRST,
        )
        settings: dict[str, Any] = {
            "senders": senders,
            "listen": "127.0.0.1:0",
            "upstream_rate_limit": 0,
        }
        settings.update(overrides)
        async with (
            GatewayServer(GatewayConfig(**settings)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            yield Fleet({FIRST: first, SECOND: second, THIRD: third}, server, channel)


def _set_everywhere(running: Fleet, wa_id: str, hashes: dict[str, str]) -> None:
    for sender, identity_hash in hashes.items():
        running.emulators[sender].state.set_identity(wa_id, identity_hash)


async def test_each_request_reaches_only_its_senders_upstream() -> None:
    wa_id = new_wa_id()
    async with fleet() as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: NEW, THIRD: OTHER})
        default = await running.get(wa_id)
        first = await running.get(wa_id, FIRST)
        second = await running.get(wa_id, SECOND)
        third = await running.get(wa_id, THIRD)
        requests = {sender: running.upstream_requests(sender) for sender in (FIRST, SECOND, THIRD)}

    assert all(outcome.ok for outcome in (default, first, second, third))
    # The default sender's answer and the named one share a cache entry: one upstream read.
    assert (default.response.identity.sender, default.response.identity.hash) == (FIRST, OLD)
    assert (first.response.identity.sender, first.response.cache_hit) == (FIRST, True)
    assert (second.response.identity.sender, second.response.identity.hash) == (SECOND, NEW)
    assert (third.response.identity.sender, third.response.identity.hash) == (THIRD, OTHER)
    assert requests == {FIRST: 1, SECOND: 1, THIRD: 1}


async def test_each_sender_caches_its_own_identity_of_a_user() -> None:
    wa_id = new_wa_id()
    async with fleet() as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: NEW, THIRD: OTHER})
        for sender in (FIRST, SECOND, THIRD):
            assert (await running.get(wa_id, sender)).ok
        hits = {sender: await running.get(wa_id, sender) for sender in (FIRST, SECOND, THIRD)}

    for sender, identity_hash in ((FIRST, OLD), (SECOND, NEW), (THIRD, OTHER)):
        hit = hits[sender]
        assert hit.response.cache_hit
        assert (hit.response.identity.sender, hit.response.identity.hash) == (sender, identity_hash)


async def test_acknowledging_through_one_sender_leaves_the_others_alone() -> None:
    wa_id = new_wa_id()
    async with fleet() as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: OLD, THIRD: OLD})
        for sender in (FIRST, SECOND, THIRD):
            assert (await running.get(wa_id, sender)).ok
        acknowledged = await running.ack(wa_id, OLD, THIRD)
        after = {sender: await running.get(wa_id, sender) for sender in (FIRST, SECOND, THIRD)}
        contacts = {s: running.emulators[s].state.identity(wa_id) for s in (FIRST, SECOND, THIRD)}
        upstream = {s: c.acknowledged if c else None for s, c in contacts.items()}

    assert acknowledged.ok
    assert {s: o.response.identity.acknowledged for s, o in after.items()} == {
        FIRST: False,
        SECOND: False,
        THIRD: True,
    }
    assert upstream == {FIRST: False, SECOND: False, THIRD: True}


@pytest.mark.parametrize(
    ("sender", "code", "reason"),
    [
        ("15559999999", grpc.StatusCode.NOT_FOUND, "SENDER_NOT_FOUND"),
        ("+15550001111", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SENDER"),
        ("1555", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SENDER"),
        ("٤٤٧٧٩٦٣٤٤١٢٥", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SENDER"),
    ],
)
async def test_unknown_and_malformed_senders_never_reach_an_upstream(
    sender: str, code: grpc.StatusCode, reason: str
) -> None:
    wa_id = new_wa_id()
    async with fleet() as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: OLD, THIRD: OLD})
        read = await running.get(wa_id, sender)
        acknowledged = await running.ack(wa_id, OLD, sender)
        bypass = await running.get(wa_id, sender, bypass_cache=True)
        requests = sum(running.upstream_requests(s) for s in (FIRST, SECOND, THIRD))

    for outcome in (read, acknowledged, bypass):
        assert (outcome.code, outcome.reason) == (code, reason)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert [v.field for v in read.bad_requests[0].field_violations] == ["sender"]
    else:
        assert read.metadata == {"sender": sender}
    assert requests == 0


async def test_a_failing_sender_opens_only_its_own_breaker() -> None:
    """A 503 storm on one sender's upstream opens that sender's breaker; another sender goes
    on answering from its upstream, its breaker closed."""
    wa_id = new_wa_id()
    async with fleet(upstream_retries=0) as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: OLD, THIRD: OLD})
        running.emulators[SECOND].state.add_fault(Fault("/v1/contacts/*", times=None, status=503))
        storm = [await running.get(wa_id, SECOND, bypass_cache=True) for _ in range(25)]
        healthy = [await running.get(wa_id, FIRST, bypass_cache=True) for _ in range(5)]
        infobip = await running.get(wa_id, THIRD, bypass_cache=True)
        breakers = {
            route.number: route.backend._guards.breaker.state  # type: ignore[attr-defined]
            for route in running.server.routes.all
        }

    assert storm[0].reason == "UPSTREAM_UNAVAILABLE"
    assert storm[-1].reason == "CIRCUIT_OPEN"
    assert all(outcome.ok for outcome in healthy)
    assert infobip.ok
    assert breakers == {
        FIRST: BreakerState.CLOSED,
        SECOND: BreakerState.OPEN,
        THIRD: BreakerState.CLOSED,
    }


async def test_a_senders_pacing_is_its_own() -> None:
    """The Infobip sender is paced at Infobip's 10 requests/s (bursts of 10) while the
    On-Premises ones keep the flags' 20/s with bursts of 60, each with its own bucket: a burst
    of reads through one sender leaves the others' tokens untouched."""
    wa_id = new_wa_id()
    async with fleet(upstream_rate_limit=20.0) as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: OLD, THIRD: OLD})
        buckets = {
            route.number: route.backend._guards.bucket  # type: ignore[attr-defined]
            for route in running.server.routes.all
        }
        for _ in range(5):
            assert (await running.get(wa_id, THIRD, bypass_cache=True)).ok
        spent = {number: bucket.burst - bucket._tokens for number, bucket in buckets.items()}

    assert {n: (b.rate, b.burst) for n, b in buckets.items()} == {
        FIRST: (20.0, 60),
        SECOND: (20.0, 60),
        THIRD: (10.0, 10),
    }
    assert len({id(bucket) for bucket in buckets.values()}) == 3
    assert spent[THIRD] >= 4  # five requests, less what refilled meanwhile
    assert spent[FIRST] == spent[SECOND] == 0


async def test_watchers_choose_their_senders() -> None:
    wa_id = new_wa_id()
    async with fleet() as running:
        watch = running.stub.WatchIdentityChanges(
            identity_pb2.WatchIdentityChangesRequest(wa_ids=[wa_id], senders=[SECOND])
        )
        # The watch exists once the server has registered it: only then do the reports go.
        assert await wait_until(lambda: running.server.changes.watchers == 1)
        for sender in (FIRST, SECOND):
            report = identity_pb2.ReportIdentityChangeRequest(wa_id=wa_id, hash=NEW, sender=sender)
            assert (await call(running.stub.ReportIdentityChange, report)).ok
        first = await watch.read()
        read = await running.get(wa_id, SECOND)
        watch.cancel()
        refused = running.stub.WatchIdentityChanges(
            identity_pb2.WatchIdentityChangesRequest(senders=["15559999999"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await refused.read()

    assert first.change.identity.sender == SECOND
    assert first.change.identity.hash == NEW
    assert (read.response.identity.hash, read.response.identity.acknowledged) == (NEW, False)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def shared_redis() -> str:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail("no Redis at 127.0.0.1:6379: start it with `redis-server --daemonize yes`")
    finally:
        client.close()
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


async def test_the_shared_cache_keys_include_the_sender(shared_redis: str) -> None:
    wa_id = new_wa_id()
    async with fleet(cache_backend=shared_redis) as running:
        _set_everywhere(running, wa_id, {FIRST: OLD, SECOND: NEW, THIRD: OTHER})
        reads = {sender: await running.get(wa_id, sender) for sender in (FIRST, SECOND, THIRD)}
        again = {sender: await running.get(wa_id, sender) for sender in (FIRST, SECOND, THIRD)}
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, decode_responses=True)
    try:
        keys = sorted(str(key) for key in client.keys(f"*{wa_id}*"))
    finally:
        client.close()

    assert {s: o.response.identity.hash for s, o in reads.items()} == {
        FIRST: OLD,
        SECOND: NEW,
        THIRD: OTHER,
    }
    assert all(outcome.response.cache_hit for outcome in again.values())
    assert {s: o.response.identity.hash for s, o in again.items()} == {
        FIRST: OLD,
        SECOND: NEW,
        THIRD: OTHER,
    }
    assert keys == sorted(
        f"identity-gateway:identity:{sender}:{wa_id}" for sender in (FIRST, SECOND, THIRD)
    )
