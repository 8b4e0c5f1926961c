"""Replicas sharing Redis (--cache-backend redis://...): two real gateway processes each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc
from whatsapp_emulator.emulator import Fault, RunningEmulator

from tests.conftest import call, new_wa_id, wait_until
from tests.test_serve_process import ServeProcess, free_port, serve_process

pytestmark = [
    pytest.mark.integration,
]

REDIS_DB = 13  # the tests' own database on the machine's Redis, emptied before each test
OLD, NEW = "UKD6Y/5SqDU=", "bmV3SGFzaA=="


@pytest.fixture
def shared_redis() -> str:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail(
            "no Redis at 127.0.0.1:6379: start it with `redis-server --daemonize yes` "
            "(Debian: apt-get install redis-server)"
        )
    finally:
        client.close()
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of the test's own, so the test can stop it."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.02)
        client.close()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def replicas(
    emulator: RunningEmulator, tmp_path: Path, backend: str, *extra: str
) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    # Room for each Redis call: a busy test machine must not pass for a Redis outage.
    flags = ("--cache-backend", backend, "--cache-backend-timeout", "2")
    async with (
        serve_process(emulator, tmp_path, *flags, *extra) as one,
        serve_process(emulator, tmp_path, *flags) as two,
    ):
        yield one, two


async def get(gateway: ServeProcess, wa_id: str) -> identity_pb2.GetIdentityResponse:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        outcome = await call(stub.GetIdentity, identity_pb2.GetIdentityRequest(wa_id=wa_id))
    assert outcome.ok, outcome
    response: identity_pb2.GetIdentityResponse = outcome.response
    return response


async def test_an_acknowledge_on_one_replica_shows_on_another_without_asking_whatsapp(
    emulator: RunningEmulator, tmp_path: Path, shared_redis: str
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    async with replicas(emulator, tmp_path, shared_redis) as (one, two):
        first = await get(one, wa_id)  # one reads WhatsApp, fills the shared cache
        async with grpc.aio.insecure_channel(two.address) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            request = identity_pb2.AcknowledgeIdentityRequest(wa_id=wa_id, hash=OLD)
            assert (await call(stub.AcknowledgeIdentity, request)).ok  # acknowledged on two
        after = await get(one, wa_id)  # read on one again

    assert first.identity.acknowledged is False
    assert (after.identity.acknowledged, after.cache_hit) == (True, True)
    assert emulator.state.count("GET") == 1
    assert emulator.state.count("PUT") == 1


async def test_a_read_on_one_replica_overtaken_by_an_acknowledge_on_another_is_not_cached(
    emulator: RunningEmulator, tmp_path: Path, shared_redis: str
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    before = {"hash": OLD, "created_timestamp": 1600132094000, "acknowledged": False}
    # one's read is held at WhatsApp and answers as it was before the acknowledge
    path = f"/v1/contacts/{wa_id}/identity"
    emulator.state.add_fault(
        Fault(path, method="GET", delay=2.0, status=200, json={"contacts": before})
    )
    async with replicas(emulator, tmp_path, shared_redis) as (one, two):
        held_read = asyncio.create_task(get(one, wa_id))
        assert await wait_until(lambda: emulator.state.count("GET", path) == 1)
        async with grpc.aio.insecure_channel(two.address) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            request = identity_pb2.AcknowledgeIdentityRequest(wa_id=wa_id, hash=OLD)
            assert (await call(stub.AcknowledgeIdentity, request)).ok  # acknowledged on two
        overtaken = await held_read
        after = await get(two, wa_id)

    assert overtaken.identity.acknowledged is False  # asked before the acknowledge
    # Not the stale answer from the shared cache: two read WhatsApp again.
    assert (after.identity.acknowledged, after.cache_hit) == (True, False)


async def test_a_webhook_to_one_replica_reaches_a_watcher_on_another(
    emulator: RunningEmulator, tmp_path: Path, shared_redis: str
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD, acknowledged=True)
    webhook_port = free_port()
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("replica-webhook-s3cret\n")
    async with replicas(
        emulator,
        tmp_path,
        shared_redis,
        "--webhook-listen",
        f"127.0.0.1:{webhook_port}",
        "--webhook-secret-file",
        str(secret_file),
    ) as (_, two):
        # Held in the shared cache first: a report replaces a held entry, and inserts none
        # for a user no replica holds (pushed reports never fill the cache).
        assert (await get(two, wa_id)).identity.hash == OLD
        emulator.state.update_settings(
            webhook_url=f"http://127.0.0.1:{webhook_port}/webhook",
            webhook_secret="replica-webhook-s3cret",
        )
        async with grpc.aio.insecure_channel(two.address) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            stream = stub.WatchIdentityChanges(
                identity_pb2.WatchIdentityChangesRequest(wa_ids=[wa_id])
            )
            await asyncio.sleep(0.5)  # let the watch and both Redis subscriptions settle
            emulator.state.set_identity(wa_id, NEW)  # the webhook goes to replica one
            response = await asyncio.wait_for(stream.read(), 10)
            stream.cancel()
        read_on_two = await get(two, wa_id)

    assert (response.change.identity.wa_id, response.change.identity.hash) == (wa_id, NEW)
    assert response.change.source == identity_pb2.IDENTITY_CHANGE_SOURCE_WEBHOOK
    assert (read_on_two.identity.hash, read_on_two.cache_hit) == (NEW, True)
    assert emulator.state.count("GET") == 1  # the first read, before the change


async def test_reads_go_on_while_redis_is_down_and_the_cache_comes_back_by_itself(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD)
    port = free_port()
    with private_redis(port) as server:
        async with replicas(emulator, tmp_path, f"redis://127.0.0.1:{port}/0") as (one, two):
            assert (await get(one, wa_id)).cache_hit is False
            assert (await get(two, wa_id)).cache_hit is True  # shared

            server.send_signal(signal.SIGKILL)
            server.wait()
            down = [await get(one, wa_id) for _ in range(5)]  # no error reaches callers
            gets_while_down = emulator.state.count("GET")

            with private_redis(port):  # Redis returns, empty

                async def shared_again() -> bool:
                    # the replica that read through the outage uses the shared cache again
                    await get(two, wa_id)
                    return bool((await get(one, wa_id)).cache_hit)

                recovered = await wait_until(shared_again, timeout=30)
            alive = (one.process.returncode, two.process.returncode) == (None, None)

    assert all(r.identity.hash == OLD for r in down)
    assert gets_while_down >= 2  # served from WhatsApp while the cache was away
    assert recovered
    assert alive
    lines = [
        json.loads(line)
        for replica in (one, two)
        for line in replica.log_lines()
        if '"gateway.store.redis_store"' in line
    ]
    # Reported to operators: the outage by the replica that read through it, and the recovery.
    assert any(r["level"] == "warning" and "unavailable" in r["message"] for r in lines)
    assert any(r["level"] == "info" and "available again" in r["message"] for r in lines)
