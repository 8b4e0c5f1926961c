"""Pushed reports cannot evict: a webhook or ReportIdentityChange about a user the gateway does
not hold never pushes other users' fresh entries out (spec §7)."""

from __future__ import annotations

import httpx
import pytest
import redis
from whatsapp.identity.v1 import identity_pb2
from whatsapp_emulator.emulator import RunningEmulator, identity_changed_webhook

from gateway.store.cache import IdentityCache
from tests.conftest import GatewayFactory, call

OLD, NEW = "UKD6Y/5SqDU=", "bmV3SGFzaA=="
SECRET = "reports-bounded-secret"
REDIS_DB = 10  # this file's own database on the machine's Redis, emptied before each test


def test_offer_fills_free_room_and_replaces_held_entries_but_never_evicts() -> None:
    cache: IdentityCache[str] = IdentityCache(ttl=30, max_entries=3)
    for wa_id in ("1", "2"):
        cache.put(wa_id, "read")

    assert cache.offer("3", "reported")  # free room
    assert not cache.offer("4", "reported")  # full: nobody is pushed out
    assert cache.offer("1", "reported")  # held: replaced
    assert {k: v for k, (_, v) in cache.entries.items()} == {
        "2": "read",
        "3": "reported",
        "1": "reported",
    }


@pytest.mark.integration
async def test_a_webhook_flood_about_unknown_users_evicts_no_cached_identity(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    held = [f"1999000{i:04d}" for i in range(100)]
    for wa_id in held:
        emulator.state.set_identity(wa_id, OLD)
    fabricated = [f"1888000{i:04d}" for i in range(2400)]
    # Four posts of 600 changes (each under the body cap), then one about a held user.
    bodies: list[dict[str, list[object]]] = []
    for start in range(0, len(fabricated), 600):
        messages: list[object] = []
        for wa_id in fabricated[start : start + 600]:
            messages.extend(identity_changed_webhook(wa_id, NEW, 1700000000000)["messages"])
        bodies.append({"messages": messages})
    bodies.append(identity_changed_webhook(held[0], NEW, 1700000000000))

    async with gateway_factory(
        cache_max_entries=100, webhook_listen="127.0.0.1:0", webhook_secret=SECRET
    ) as gateway:
        for wa_id in held:
            assert (await gateway.get(wa_id)).ok
        async with httpx.AsyncClient() as client:
            pushed = [
                await client.post(
                    f"http://127.0.0.1:{gateway.server.webhook_port}/webhook",
                    json=body,
                    headers={"Authorization": f"Bearer {SECRET}"},
                    timeout=30,
                )
                for body in bodies
            ]
        after = [await gateway.get(wa_id) for wa_id in held]
        reads = emulator.state.count("GET")

    assert [answer.status_code for answer in pushed] == [200] * len(bodies)
    assert all(outcome.response.cache_hit for outcome in after)
    # The held user's report replaced its entry; no other held entry moved.
    assert (after[0].response.identity.hash, after[0].response.identity.acknowledged) == (
        NEW,
        False,
    )
    assert {o.response.identity.hash for o in after[1:]} == {OLD}
    assert reads == len(held)  # every later read was a hit


@pytest.mark.integration
async def test_a_report_about_a_user_no_replica_holds_inserts_nothing_in_redis(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, decode_responses=True)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail("no Redis at 127.0.0.1:6379: start it with `redis-server --daemonize yes`")
    held, unknown = "19990000001", "18880000001"
    emulator.state.set_identity(held, OLD)
    async with gateway_factory(cache_backend=f"redis://127.0.0.1:6379/{REDIS_DB}") as gateway:
        assert (await gateway.get(held)).ok
        for wa_id in (held, unknown):
            report = identity_pb2.ReportIdentityChangeRequest(wa_id=wa_id, hash=NEW)
            assert (await call(gateway.stub.ReportIdentityChange, report)).ok
        reread = await gateway.get(held)
    try:
        keys = sorted(str(key) for key in client.keys("*"))
    finally:
        client.close()

    assert keys == [f"identity-gateway:identity:{held}"]
    assert (reread.response.cache_hit, reread.response.identity.hash) == (True, NEW)
