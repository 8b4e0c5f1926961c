"""RedisIdentityStore against real Redis servers.

The shared Redis at 127.0.0.1:6379 serves the happy paths, each test under its own key prefix.
Outages use a private ``redis-server`` on a free port, killed (SIGKILL), paused (SIGSTOP: slow
but keeping its data) and restarted by the test, reached directly or through a
:class:`ForgetfulProxy` (a network in between that forgets connections without telling).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import pytest
import redis
import redis.asyncio

from gateway.store.redis_store import RedisIdentityStore
from tests.conftest import wait_until

SHARED_REDIS = "redis://127.0.0.1:6379/0"
WA_ID = "16315551234"
LOGGER = "gateway.store.redis_store"
# Short cool-downs keep the outage tests quick.
FAST_RETRY = {"retry_after": 0.1, "max_retry_after": 0.5}


class MakeStore(Protocol):
    def __call__(self, url: str = ..., ttl: float = ..., **options: Any) -> RedisIdentityStore: ...


@dataclasses.dataclass
class Signals:
    """What a store reported through its hooks."""

    degraded: list[bool] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    bad_values: int = 0

    def hooks(self) -> dict[str, Any]:
        return {
            "on_degraded": self.degraded.append,
            "on_error": self.errors.append,
            "on_bad_value": self.bad_value,
        }

    def bad_value(self) -> None:
        self.bad_values += 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of the test's own, on a fixed port across restarts, with no persistence."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers_ping():
            assert self._process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start within 10 s"
            time.sleep(0.02)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()  # SIGKILL: no goodbye to the clients
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class ForgetfulProxy:
    """A TCP relay to a Redis that does not tell its clients when Redis goes away: their
    connections stay open and silent, and are closed only when next used.

    That is what a client sees when Redis's container or pod is restarted, or when a NAT or a
    load balancer in between forgets a connection: pooled connections that look alive and are
    dead, which nothing reveals until a command is sent on one. (A local redis-server that is
    killed closes its sockets, and redis-py notices that on a pooled connection before using
    it.)
    """

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[Any]] = set()
        self.url = ""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        redis_out: asyncio.StreamWriter | None = None
        gone = asyncio.Event()  # Redis closed its side: the client is not told

        async def from_redis(redis_in: asyncio.StreamReader) -> None:
            with contextlib.suppress(OSError):
                while chunk := await redis_in.read(65536):
                    client_out.write(chunk)
                    await client_out.drain()
            gone.set()

        try:
            redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self._redis_port)
            downstream = asyncio.ensure_future(from_redis(redis_in))
            try:
                while (chunk := await client_in.read(65536)) and not gone.is_set():
                    redis_out.write(chunk)
                    await redis_out.drain()
            finally:
                downstream.cancel()
                await asyncio.gather(downstream, return_exceptions=True)
        except OSError:
            pass
        finally:
            self._relays.discard(relay)
            client_out.close()
            if redis_out is not None:
                redis_out.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def shared() -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the shared Redis, to look behind the store's back."""
    client = redis.asyncio.Redis.from_url(SHARED_REDIS)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(shared: redis.asyncio.Redis) -> AsyncIterator[str]:
    prefix = f"test-redis-store:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = [key async for key in shared.scan_iter(match=f"{prefix}*")]
        if keys:
            await shared.delete(*keys)


@pytest.fixture
async def make_store(prefix: str) -> AsyncIterator[MakeStore]:
    """Builds stores under this test's key prefix (the shared Redis by default), closed after."""
    stores: list[RedisIdentityStore] = []

    def make(url: str = SHARED_REDIS, ttl: float = 30.0, **options: Any) -> RedisIdentityStore:
        options.setdefault("key_prefix", prefix)
        if url == SHARED_REDIS:
            # Tests of a working Redis must not turn into outage tests when the machine is
            # busy (the whole suite runs at once): give each call room. Outage tests use a
            # private Redis and the short default.
            options.setdefault("timeout", 2.0)
        store = RedisIdentityStore(url, ttl, **options)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.aclose()


async def number_of_subscribers(url: str, channel: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        counts = await client.pubsub_numsub(channel)
    except redis.ConnectionError:
        return 0
    finally:
        await client.aclose()
    return int(counts[0][1])


class Subscriber:
    """Collects what ``store.subscribe(channel)`` yields, in a task of its own."""

    def __init__(self, store: RedisIdentityStore, channel: str) -> None:
        self.received: list[bytes] = []
        self.task = asyncio.ensure_future(self._run(store, channel))

    async def _run(self, store: RedisIdentityStore, channel: str) -> None:
        async for message in store.subscribe(channel):
            self.received.append(message)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def subscribers() -> AsyncIterator[Callable[[RedisIdentityStore, str], Subscriber]]:
    started: list[Subscriber] = []

    def subscribe(store: RedisIdentityStore, channel: str) -> Subscriber:
        subscriber = Subscriber(store, channel)
        started.append(subscriber)
        return subscriber

    try:
        yield subscribe
    finally:
        for subscriber in started:
            await subscriber.stop()


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == LOGGER and record.levelno == logging.WARNING
    ]


# ---------------------------------------------------------------------- the cache


async def test_a_put_answer_is_read_back_as_the_same_bytes(make_store: MakeStore) -> None:
    store = make_store()
    await store.put(WA_ID, b"\x00answer\xff")
    assert await store.get_fresh(WA_ID) == b"\x00answer\xff"


async def test_an_unknown_wa_id_is_a_miss(make_store: MakeStore) -> None:
    assert await make_store().get_fresh(WA_ID) is None


async def test_entries_are_stored_under_the_prefix_and_expire_with_the_ttl(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    store = make_store(ttl=0.3)
    await store.put(WA_ID, b"answer")
    assert 0 < await shared.pttl(prefix + WA_ID) <= 300
    assert await store.get_fresh(WA_ID) == b"answer"

    async def expired() -> bool:
        return await store.get_fresh(WA_ID) is None

    assert await wait_until(expired, timeout=10), "the entry expires"


async def test_a_replica_reads_what_another_replica_wrote(make_store: MakeStore) -> None:
    writer, reader = make_store(), make_store()
    await writer.put(WA_ID, b"answer")
    assert await reader.get_fresh(WA_ID) == b"answer"
    await reader.invalidate(WA_ID)
    assert await writer.get_fresh(WA_ID) is None


async def test_update_applies_the_change_and_keeps_the_remaining_ttl(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    store = make_store(ttl=30)
    await store.put(WA_ID, b"unacknowledged")
    await shared.pexpire(prefix + WA_ID, 5000)  # as if 25 of its 30 s had passed
    seen: list[bytes] = []

    def acknowledge(cached: bytes) -> bytes:
        seen.append(cached)
        return b"acknowledged"

    await store.update(WA_ID, acknowledge)
    assert seen == [b"unacknowledged"]
    assert await store.get_fresh(WA_ID) == b"acknowledged"
    assert 0 < await shared.pttl(prefix + WA_ID) <= 5000


async def test_update_to_none_deletes_the_entry(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    store = make_store()
    await store.put(WA_ID, b"stale hash")
    await store.update(WA_ID, lambda cached: None)
    assert await shared.exists(prefix + WA_ID) == 0
    assert await store.get_fresh(WA_ID) is None


async def test_update_of_a_missing_entry_does_nothing(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    calls: list[bytes] = []

    def change(cached: bytes) -> bytes:
        calls.append(cached)
        return b"changed"

    await make_store().update(WA_ID, change)
    assert calls == []
    assert await shared.exists(prefix + WA_ID) == 0


async def test_update_reapplies_the_change_to_a_value_put_concurrently(
    make_store: MakeStore, prefix: str
) -> None:
    store = make_store()
    await store.put(WA_ID, b"old read")
    seen: list[bytes] = []
    # Another replica's put lands between this update's read and its write.
    with redis.Redis.from_url(SHARED_REDIS) as other_replica:

        def acknowledge(cached: bytes) -> bytes:
            seen.append(cached)
            if len(seen) == 1:
                other_replica.set(prefix + WA_ID, b"new read", px=30_000)
            return cached + b", acknowledged"

        await store.update(WA_ID, acknowledge)
    assert seen == [b"old read", b"new read"]
    assert await store.get_fresh(WA_ID) == b"new read, acknowledged"


async def test_update_deletes_the_entry_when_the_change_fails(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    await store.put(WA_ID, b"not what the change expects")

    def change(cached: bytes) -> bytes:
        raise ValueError("undecodable")

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await store.update(WA_ID, change)
    assert await store.get_fresh(WA_ID) is None
    assert [record.levelno for record in caplog.records if record.name == LOGGER] == [logging.ERROR]


async def test_invalidate_removes_the_entry(make_store: MakeStore) -> None:
    store = make_store()
    await store.put(WA_ID, b"answer")
    await store.put("16315550000", b"another")
    await store.invalidate(WA_ID)
    assert await store.get_fresh(WA_ID) is None
    assert await store.get_fresh("16315550000") == b"another"


async def test_a_zero_ttl_stores_nothing_and_reads_nothing(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    store = make_store(ttl=0)
    assert not store.enabled
    await store.put(WA_ID, b"answer")
    await shared.set(prefix + WA_ID, b"written by a caching replica")
    assert await store.get_fresh(WA_ID) is None
    await store.update(WA_ID, lambda cached: pytest.fail("change called"))
    await store.invalidate(WA_ID)
    assert await shared.get(prefix + WA_ID) == b"written by a caching replica"


async def test_a_zero_ttl_store_never_talks_to_redis(make_store: MakeStore) -> None:
    signals = Signals()
    store = make_store(f"redis://127.0.0.1:{free_port()}/0", ttl=0, **signals.hooks())
    await store.put(WA_ID, b"answer")
    assert await store.get_fresh(WA_ID) is None
    await store.update(WA_ID, lambda cached: cached)
    await store.invalidate(WA_ID)
    assert signals.errors == []
    assert not store.degraded


# ---------------------------------------------------------------------- bad values


async def test_a_key_of_another_redis_type_is_a_miss_for_that_key_alone(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    signals = Signals()
    store = make_store(**signals.hooks())
    await store.put("16315550000", b"another")
    await shared.hset(prefix + WA_ID, "field", "value")
    assert await store.get_fresh(WA_ID) is None
    assert await shared.exists(prefix + WA_ID) == 0  # deleted
    assert await store.get_fresh("16315550000") == b"another"
    await store.put(WA_ID, b"answer")
    assert await store.get_fresh(WA_ID) == b"answer"
    assert not store.degraded
    assert (signals.degraded, signals.errors, signals.bad_values) == ([], [], 1)


async def test_update_of_a_key_of_another_redis_type_deletes_it(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    signals = Signals()
    store = make_store(**signals.hooks())
    await shared.hset(prefix + WA_ID, "field", "value")
    await store.update(WA_ID, lambda cached: pytest.fail("change called"))
    assert await shared.exists(prefix + WA_ID) == 0
    assert not store.degraded
    assert (signals.degraded, signals.errors, signals.bad_values) == ([], [], 1)


def answers_for_their_key(wa_id: str, value: bytes) -> bool:
    """The check of these tests: a value is good when it names its key."""
    return value.startswith(wa_id.encode())


async def test_a_value_the_check_refuses_is_a_miss_and_is_deleted(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    signals = Signals()
    store = make_store(check=answers_for_their_key, **signals.hooks())
    await store.put(WA_ID, b"16315550000: another user's answer")
    await store.put("16315550000", b"16315550000: answer")
    assert await store.get_fresh(WA_ID) is None
    assert await shared.exists(prefix + WA_ID) == 0
    assert await store.get_fresh("16315550000") == b"16315550000: answer"
    assert not store.degraded
    assert signals.bad_values == 1


async def test_update_drops_a_value_the_check_refuses_without_changing_it(
    make_store: MakeStore, shared: redis.asyncio.Redis, prefix: str
) -> None:
    signals = Signals()
    store = make_store(check=answers_for_their_key, **signals.hooks())
    await store.put(WA_ID, b"16315550000: another user's answer")
    await store.update(WA_ID, lambda cached: pytest.fail("change called"))
    assert await shared.exists(prefix + WA_ID) == 0
    assert signals.bad_values == 1


async def test_a_bad_value_replaced_meanwhile_by_a_good_one_is_not_deleted(
    make_store: MakeStore, prefix: str
) -> None:
    good = WA_ID.encode() + b": answer"
    # Another replica's put lands between this read and the deletion of the bad value.
    with redis.Redis.from_url(SHARED_REDIS) as other_replica:

        def check(wa_id: str, value: bytes) -> bool:
            if not answers_for_their_key(wa_id, value):
                other_replica.set(prefix + WA_ID, good, px=30_000)
                return False
            return True

        store = make_store(check=check)
        await store.put(WA_ID, b"garbage")
        assert await store.get_fresh(WA_ID) is None
    assert await store.get_fresh(WA_ID) == good


# ---------------------------------------------------------------------- outages


async def test_unreachable_redis_is_a_miss_and_is_not_asked_again_during_the_cool_down(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    signals = Signals()
    store = make_store(
        f"redis://127.0.0.1:{free_port()}/0", retry_after=60, max_retry_after=60, **signals.hooks()
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert await store.get_fresh(WA_ID) is None
        for _ in range(20):
            assert await store.get_fresh(WA_ID) is None
            await store.put(WA_ID, b"answer")
            await store.update(WA_ID, lambda cached: cached)
            await store.invalidate(WA_ID)
            await store.publish("channel", b"message")
    assert store.degraded
    assert signals.errors == ["get_fresh"]  # the only call that tried Redis
    assert signals.degraded == [True]
    assert len(warnings_in(caplog)) == 1


async def test_a_redis_that_never_answers_is_a_miss_after_the_timeout(
    make_store: MakeStore,
) -> None:
    with socket.socket() as silent:  # accepts connections (in the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = make_store(f"redis://127.0.0.1:{port}/0", timeout=0.1)
        started = time.monotonic()
        assert await store.get_fresh(WA_ID) is None
        await store.put(WA_ID, b"answer")  # skipped: degraded
        elapsed = time.monotonic() - started
        await store.aclose()
    assert store.degraded
    assert elapsed < 1.0


async def test_killed_redis_turns_every_call_into_a_miss_with_one_warning(
    make_store: MakeStore, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    signals = Signals()
    store = make_store(private_redis.url, **FAST_RETRY, **signals.hooks())
    await store.put(WA_ID, b"answer")
    assert await store.get_fresh(WA_ID) == b"answer"
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        # Calls already on their way when Redis goes down fail together: still one warning.
        assert await asyncio.gather(*(store.get_fresh(WA_ID) for _ in range(10))) == [None] * 10
        for _ in range(5):
            assert await store.get_fresh(WA_ID) is None
            await store.put(WA_ID, b"answer")
            await store.update(WA_ID, lambda cached: cached)
            await store.invalidate(WA_ID)
            await store.publish("channel", b"message")
            await asyncio.sleep(0.05)  # let cool-downs pass, so probes fail too
    assert signals.degraded == [True]
    assert len(warnings_in(caplog)) == 1
    assert signals.errors  # counted for metrics


async def test_the_store_recovers_by_itself_when_redis_restarts(
    make_store: MakeStore, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    signals = Signals()
    store = make_store(private_redis.url, **FAST_RETRY, **signals.hooks())
    await store.put(WA_ID, b"answer")
    private_redis.kill()
    assert await store.get_fresh(WA_ID) is None
    assert store.degraded
    private_redis.start()

    async def cached_again() -> bool:
        await store.put(WA_ID, b"answer")
        return await store.get_fresh(WA_ID) == b"answer"

    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await wait_until(cached_again, timeout=10), "the store uses Redis again"
    assert not store.degraded
    assert signals.degraded == [True, False]
    assert any("available again" in record.getMessage() for record in caplog.records)


async def traffic(store: RedisIdentityStore) -> bool:
    """20 concurrent puts, then 20 concurrent reads (so 20 pooled connections): all answered?"""
    keys = [f"163155500{n:02d}" for n in range(20)]
    await asyncio.gather(*(store.put(key, b"answer") for key in keys))
    found = await asyncio.gather(*(store.get_fresh(key) for key in keys))
    return found == [b"answer"] * len(keys)


@pytest.mark.parametrize("forgetful", [False, True], ids=["direct", "forgetful-network"])
async def test_a_restarted_redis_is_used_again_after_one_recovery_that_lasts(
    make_store: MakeStore, private_redis: PrivateRedis, forgetful: bool
) -> None:
    signals = Signals()
    async with contextlib.AsyncExitStack() as stack:
        url = private_redis.url
        if forgetful:
            url = (await stack.enter_async_context(ForgetfulProxy(private_redis.port))).url
        # The gateway's cool-down (1 s, doubling up to 10 s); room for each call on a busy
        # machine, since a dead connection fails at once anyway.
        store = make_store(url, timeout=1.0, **signals.hooks())
        assert await traffic(store)  # the pool is warm
        private_redis.kill()
        assert await store.get_fresh(WA_ID) is None  # one call fails; the others stay idle
        assert store.degraded
        private_redis.start()  # on the same port, empty
        assert await wait_until(lambda: traffic(store), timeout=10 + 3), "used again in time"
        for _ in range(20):  # and it stays in use
            await asyncio.sleep(0.1)
            assert await traffic(store)
    assert signals.degraded == [True, False]


async def test_a_redis_restart_between_two_calls_costs_no_call(
    make_store: MakeStore, private_redis: PrivateRedis
) -> None:
    signals = Signals()
    store = make_store(private_redis.url, timeout=1.0, **signals.hooks())
    assert await traffic(store)  # the pool is warm
    private_redis.kill()
    private_redis.start()  # on the same port, empty
    await asyncio.sleep(0.1)  # the event loop, blocked meanwhile, hears that Redis closed them
    assert await traffic(store)  # on new connections
    assert (signals.degraded, signals.errors) == ([], [])


@pytest.mark.parametrize("operation", ["invalidate", "update"])
async def test_an_invalidation_lost_while_redis_was_slow_is_applied_when_it_returns(
    make_store: MakeStore, private_redis: PrivateRedis, operation: str
) -> None:
    store = make_store(private_redis.url, **FAST_RETRY)
    await store.put(WA_ID, b"unacknowledged")
    await store.put("16315550000", b"untouched")
    private_redis.pause()  # slow, not dead: it keeps its data
    try:
        assert await store.get_fresh(WA_ID) is None  # times out: degraded
        if operation == "invalidate":
            await store.invalidate(WA_ID)
        else:
            await store.update(WA_ID, lambda cached: b"acknowledged")
    finally:
        private_redis.resume()

    async def recovered() -> bool:
        await store.get_fresh("16315550000")
        return not store.degraded

    assert await wait_until(recovered, timeout=10), "the store uses Redis again"
    assert await store.get_fresh(WA_ID) is None  # not the stale "unacknowledged"
    assert await store.get_fresh("16315550000") == b"untouched"


# ---------------------------------------------------------------------- pub/sub


@pytest.mark.parametrize("ttl", [30.0, 0.0], ids=["caching", "caching-disabled"])
async def test_a_published_message_reaches_a_subscriber_on_another_replica(
    make_store: MakeStore,
    subscribers: Callable[[RedisIdentityStore, str], Subscriber],
    ttl: float,
) -> None:
    channel = f"test-redis-store:{uuid.uuid4().hex}"
    publisher, listener = make_store(ttl=ttl), make_store(ttl=ttl)
    subscriber = subscribers(listener, channel)

    async def subscribed() -> bool:
        return await number_of_subscribers(SHARED_REDIS, channel) == 1

    assert await wait_until(subscribed, timeout=10), "the subscription is in place"
    await publisher.publish(channel, b"\x00change\xff")

    async def received() -> bool:
        return subscriber.received == [b"\x00change\xff"]

    assert await wait_until(received, timeout=10), "the message arrives"


async def test_a_subscriber_survives_a_redis_restart(
    make_store: MakeStore,
    private_redis: PrivateRedis,
    subscribers: Callable[[RedisIdentityStore, str], Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = "changes"
    publisher = make_store(private_redis.url, **FAST_RETRY)
    subscriber = subscribers(make_store(private_redis.url, **FAST_RETRY), channel)

    async def subscribed() -> bool:
        return await number_of_subscribers(private_redis.url, channel) == 1

    async def received_before() -> bool:
        return subscriber.received == [b"before"]

    assert await wait_until(subscribed, timeout=10), "the subscription is in place"
    await publisher.publish(channel, b"before")
    assert await wait_until(received_before, timeout=10), "the first message arrives"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        private_redis.kill()
        await asyncio.sleep(0.5)  # the subscriber notices, and fails to reconnect a few times
        assert not subscriber.task.done()
        private_redis.start()
        assert await wait_until(subscribed, timeout=10), "the subscriber subscribes again"

        async def received_after() -> bool:
            await publisher.publish(channel, b"after")  # until the publisher has recovered too
            return b"after" in subscriber.received

        assert await wait_until(received_after, timeout=10), "a later message arrives"
    about_subscription = [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == LOGGER and "subscription" in record.getMessage()
    ]
    assert [level for level, _ in about_subscription] == [logging.WARNING, logging.INFO]


async def test_cancelling_a_subscription_closes_its_connection(
    make_store: MakeStore, subscribers: Callable[[RedisIdentityStore, str], Subscriber]
) -> None:
    channel = f"test-redis-store:{uuid.uuid4().hex}"
    subscriber = subscribers(make_store(), channel)

    async def subscribed() -> bool:
        return await number_of_subscribers(SHARED_REDIS, channel) == 1

    async def unsubscribed() -> bool:
        return await number_of_subscribers(SHARED_REDIS, channel) == 0

    assert await wait_until(subscribed, timeout=10), "the subscription is in place"
    subscriber.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await subscriber.task
    assert await wait_until(unsubscribed, timeout=10), "the subscription's connection is gone"


async def test_closing_the_store_ends_its_subscriptions(
    make_store: MakeStore, subscribers: Callable[[RedisIdentityStore, str], Subscriber]
) -> None:
    channel = f"test-redis-store:{uuid.uuid4().hex}"
    store = make_store()
    subscriber = subscribers(store, channel)

    async def subscribed() -> bool:
        return await number_of_subscribers(SHARED_REDIS, channel) == 1

    assert await wait_until(subscribed, timeout=10), "the subscription is in place"
    await store.aclose()
    async with asyncio.timeout(5):
        await subscriber.task  # returns: the iteration simply ends
    assert await store.get_fresh(WA_ID) is None  # and the closed store is a no-op
