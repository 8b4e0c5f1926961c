"""Values in the shared cache are checked (spec §8): a real gateway with Redis and the emulator.

Each test plants a bad value under one user's key in Redis, behind the gateway's back, and
checks that it is a miss for that key alone: the caller gets WhatsApp's identity, the bad value
is replaced by a good one, other keys are still served from Redis (the store is not degraded),
and ``identity_gateway_cache_backend_bad_values_total`` counts it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio
from whatsapp.identity.v1 import identity_pb2
from whatsapp_emulator.emulator import RunningEmulator

from gateway.serving.cached import MAX_CACHED_ANSWER_BYTES, trustworthy
from gateway.store.redis_store import DEFAULT_KEY_PREFIX
from tests.conftest import Gateway, GatewayFactory, new_wa_id

pytestmark = [
    pytest.mark.integration,
]

REDIS_DB = 11  # this file's own database on the machine's Redis, emptied before each test
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
OLD = "UKD6Y/5SqDU="
ANOTHER_SENDER = "15550001111"

# Plants a bad value under the key of its first wa_id; the second is another user's, cached.
Plant = Callable[[redis.asyncio.Redis, str, str], Awaitable[object]]


def key(wa_id: str) -> str:
    """Where the gateway keeps ``wa_id``'s answer in flag mode (its sender has no number)."""
    return DEFAULT_KEY_PREFIX + wa_id


def answer(wa_id: str, *, sender: str = "", identity_hash: str = OLD) -> bytes:
    """A cached answer as the servicer writes it."""
    response = identity_pb2.GetIdentityResponse(
        identity=identity_pb2.Identity(wa_id=wa_id, hash=identity_hash, sender=sender),
        cache_hit=True,
    )
    serialized: bytes = response.SerializeToString()
    return serialized


def padded(payload: bytes) -> bytes:
    """``payload`` with an unknown field making it larger than any real answer; it still
    parses as the same answer."""
    filler = b"x" * MAX_CACHED_ANSWER_BYTES
    return payload + b"\xa2\x06" + bytes([0x80 | (len(filler) & 0x7F), len(filler) >> 7]) + filler


async def random_bytes(client: redis.asyncio.Redis, wa_id: str, other: str) -> object:
    return await client.set(key(wa_id), random.Random(wa_id).randbytes(64), px=30_000)


async def empty(client: redis.asyncio.Redis, wa_id: str, other: str) -> object:
    return await client.set(key(wa_id), b"", px=30_000)


async def another_users_answer(client: redis.asyncio.Redis, wa_id: str, other: str) -> object:
    stored = await client.get(key(other))  # the very bytes the gateway cached for the other user
    assert stored is not None
    return await client.set(key(wa_id), stored, px=30_000)


async def another_senders_answer(client: redis.asyncio.Redis, wa_id: str, other: str) -> object:
    return await client.set(key(wa_id), answer(wa_id, sender=ANOTHER_SENDER), px=30_000)


async def oversized(client: redis.asyncio.Redis, wa_id: str, other: str) -> object:
    return await client.set(key(wa_id), padded(answer(wa_id)), px=30_000)


async def a_redis_hash(client: redis.asyncio.Redis, wa_id: str, other: str) -> object:
    return await client.hset(key(wa_id), "identity", answer(wa_id))


BAD_VALUES: dict[str, Plant] = {
    "random-bytes": random_bytes,
    "empty": empty,
    "another-users-answer": another_users_answer,
    "another-senders-answer": another_senders_answer,
    "oversized": oversized,
    "a-redis-hash": a_redis_hash,
}


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the test's database, emptied first, to plant and inspect values."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    except redis.ConnectionError:
        await client.aclose()
        pytest.fail(
            "no Redis at 127.0.0.1:6379: start it with `redis-server --daemonize yes` "
            "(Debian: apt-get install redis-server)"
        )
    try:
        yield client
    finally:
        await client.aclose()


def sample(gateway: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    value = gateway.server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def stored_answer(client: redis.asyncio.Redis, wa_id: str) -> identity_pb2.Identity:
    """The identity Redis holds for ``wa_id``, which must be a good answer for it."""
    assert await client.type(key(wa_id)) == b"string"
    stored = identity_pb2.GetIdentityResponse.FromString(await client.get(key(wa_id)))
    assert stored.cache_hit
    identity: identity_pb2.Identity = stored.identity
    return identity


@pytest.mark.parametrize("plant", BAD_VALUES.values(), ids=BAD_VALUES.keys())
async def test_a_bad_value_in_redis_is_a_miss_for_its_key_alone_and_is_replaced(
    emulator: RunningEmulator,
    gateway_factory: GatewayFactory,
    client: redis.asyncio.Redis,
    plant: Plant,
) -> None:
    wa_id, other = new_wa_id(), new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    emulator.state.set_identity(other, OLD)
    async with gateway_factory(cache_backend=REDIS_URL, cache_backend_timeout=2.0) as gateway:
        warmed = await gateway.get(other)
        await plant(client, wa_id, other)
        first = await gateway.get(wa_id)
        replaced = await stored_answer(client, wa_id)
        again = await gateway.get(wa_id)
        neighbour = await gateway.get(other)
        bad_values = sample(gateway, "identity_gateway_cache_backend_bad_values_total")
        degraded = sample(gateway, "identity_gateway_cache_backend_degraded")
        errors = sample(
            gateway, "identity_gateway_cache_backend_errors_total", {"operation": "get_fresh"}
        )

    assert warmed.ok, warmed
    assert warmed.response.cache_hit is False
    # The caller hears WhatsApp, never the planted value.
    assert first.ok, first
    identity = first.response.identity
    assert (identity.wa_id, identity.sender, identity.hash) == (wa_id, "", OLD)
    assert first.response.cache_hit is False
    assert emulator.state.count("GET", f"/v1/contacts/{wa_id}/identity") == 1
    # That read replaced the bad value, which the next read is served.
    assert (replaced.wa_id, replaced.sender, replaced.hash) == (wa_id, "", OLD)
    assert again.ok, again
    assert again.response.cache_hit is True
    assert again.response.identity.wa_id == wa_id
    # Other keys are still served from Redis: the store was never degraded.
    assert neighbour.ok, neighbour
    assert neighbour.response.cache_hit is True
    assert emulator.state.count("GET", f"/v1/contacts/{other}/identity") == 1
    assert (degraded, errors) == (0, 0)
    assert bad_values == 1


ACKNOWLEDGED_OVER: dict[str, Plant] = {
    # Its hash is the one acknowledged: marking it acknowledged would keep another user's answer.
    "another-users-answer": another_users_answer,
    "random-bytes": random_bytes,
    "a-redis-hash": a_redis_hash,
}


@pytest.mark.parametrize("plant", ACKNOWLEDGED_OVER.values(), ids=ACKNOWLEDGED_OVER.keys())
async def test_an_acknowledge_over_a_bad_value_succeeds_and_leaves_no_bad_value(
    emulator: RunningEmulator,
    gateway_factory: GatewayFactory,
    client: redis.asyncio.Redis,
    plant: Plant,
) -> None:
    wa_id, other = new_wa_id(), new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    emulator.state.set_identity(other, OLD)
    async with gateway_factory(cache_backend=REDIS_URL, cache_backend_timeout=2.0) as gateway:
        assert (await gateway.get(other)).ok
        await plant(client, wa_id, other)
        acknowledged = await gateway.ack(wa_id, OLD)
        left = await client.exists(key(wa_id))
        after = await gateway.get(wa_id)
        neighbour = await gateway.get(other)
        bad_values = sample(gateway, "identity_gateway_cache_backend_bad_values_total")
        degraded = sample(gateway, "identity_gateway_cache_backend_degraded")

    assert acknowledged.ok, acknowledged
    assert emulator.state.count("PUT") == 1  # WhatsApp took it
    assert left == 0  # the bad value was dropped, not changed
    # The next read asks WhatsApp, and hears the acknowledge.
    assert after.ok, after
    assert after.response.cache_hit is False
    assert (after.response.identity.wa_id, after.response.identity.acknowledged) == (wa_id, True)
    assert neighbour.ok, neighbour
    assert neighbour.response.cache_hit is True
    assert (degraded, bad_values) == (0, 1)


@pytest.mark.parametrize(
    ("key", "payload", "expected"),
    [
        ("16315551234", answer("16315551234"), True),
        (f"{ANOTHER_SENDER}:16315551234", answer("16315551234", sender=ANOTHER_SENDER), True),
        (f"{ANOTHER_SENDER}:16315551234", answer("16315551234"), False),
        (f"{ANOTHER_SENDER}:16315551234", answer(f"{ANOTHER_SENDER}:16315551234"), False),
        ("16315551234", answer("16315551234", identity_hash="not a hash!"), False),
        (
            "16315551234",
            identity_pb2.GetIdentityResponse.FromString(
                answer("16315551234")
            ).identity.SerializeToString(),  # an Identity, not an answer
            False,
        ),
    ],
    ids=[
        "flag-mode",
        "sender",
        "flag-modes-answer-under-a-senders-key",
        "the-whole-key-as-wa-id",
        "invalid-hash",
        "not-an-answer",
    ],
)
def test_the_check_takes_only_an_answer_for_its_own_key(
    key: str, payload: bytes, expected: bool
) -> None:
    assert trustworthy(key, payload) is expected
