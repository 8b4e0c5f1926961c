"""What reaches an upstream, and when: no request the gateway did not pace and count, silence
while the upstream asks for it, and error answers judged by their status whatever their size.

- A dropped kept-alive connection is the gateway's failure to retry or not: aiohttp must not
  resend the request by itself (real sockets, the configured backend).
- A 429 pauses the sender until its ``Retry-After`` (at most 60 s): calls meanwhile are refused
  at once with the pause left, and nothing is sent (httpx.MockTransport and a hand-moved clock).
- An error answer's body is read only as far as an error envelope needs: a 503 with a huge body
  is UNAVAILABLE (and retried), a 404 NOT_FOUND; only a success is held to the size cap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2

from gateway.app.config import GatewayConfig
from gateway.app.startup import build_backend, prepare
from gateway.backends.base import Backend
from gateway.backends.http import (
    MAX_ERROR_BODY_BYTES,
    MAX_RESPONSE_BYTES,
    HttpUpstream,
    aiohttp_transport,
)
from gateway.backends.infobip.client import InfobipBackend
from gateway.backends.onprem.client import OnPremBackend
from gateway.backends.safeguards import (
    MAX_PAUSE,
    BreakerState,
    CircuitBreaker,
    RetryPolicy,
    Safeguards,
    TokenBucket,
    UpstreamPause,
)
from gateway.deadline import NO_DEADLINE, Deadline
from gateway.failures import BackendFailure, Failure
from gateway.serving.status import Reason, to_status

WA_ID = "16315551234"
SENDER = "447796344125"
BASE_URL = "https://wa.test"
HASH = "UKD6Y/5SqDU="
ONPREM_IDENTITY: Mapping[str, object] = {
    "contacts": {"hash": HASH, "created_timestamp": 1600132094000, "acknowledged": False}
}
INFOBIP_IDENTITY: Mapping[str, object] = {
    "acknowledged": False,
    "hash": HASH,
    "createdAt": "2022-02-18T08:12:26.422Z",
}
HUGE = 2 * MAX_RESPONSE_BYTES


class RecordingObserver:
    """A BackendObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[str, int | None]] = []
        self.retries: list[str] = []
        self.rejections: list[str] = []

    def upstream_exchange(self, operation: str, status: int | None, seconds: float) -> None:
        self.exchanges.append((operation, status))

    def upstream_retry(self, operation: str) -> None:
        self.retries.append(operation)

    def upstream_rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def breaker_changed(self, state: str) -> None:
        return None

    def login(self, outcome: str) -> None:
        return None


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------- (3) no retries of its own


IDENTITY_BYTES = json.dumps(ONPREM_IDENTITY).encode()
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(IDENTITY_BYTES),
    IDENTITY_BYTES,
)


class OneAnswerPerConnection:
    """A loopback HTTP server that answers the first request on each connection, keeps the
    connection alive, and hangs up on the next request there without answering it: what an
    upstream (or a proxy) closing an idle kept-alive connection looks like to the gateway."""

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = False
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")  # the head; these requests have no body
                except asyncio.IncompleteReadError:
                    return
                self.requests += 1
                if answered:
                    return  # hang up, unanswered
                writer.write(OK)
                await writer.drain()
                answered = True
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def dropping_server() -> AsyncIterator[OneAnswerPerConnection]:
    raw = OneAnswerPerConnection()
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield raw
    server.close()
    await server.wait_closed()


def configured_backend(url: str, observer: RecordingObserver, **settings: object) -> Backend:
    """The backend the gateway builds for a flag-mode sender at ``url``."""
    values: dict[str, object] = {
        "upstream_url": url,
        "upstream_token": "static-token",
        "upstream_rate_limit": 0,
        "upstream_retries": 0,
        "upstream_timeout": 2.0,
        **settings,
    }
    config = GatewayConfig(**values)  # type: ignore[arg-type]
    [sender] = config.resolved_senders().senders
    return build_backend(sender, config, prepare(config), observer)


async def test_a_dropped_kept_alive_connection_is_not_resent_behind_the_gateways_back(
    dropping_server: OneAnswerPerConnection,
) -> None:
    observer = RecordingObserver()
    backend = configured_backend(dropping_server.url, observer, upstream_retries=0)
    try:
        assert (await backend.get_identity(WA_ID, deadline=NO_DEADLINE)).hash == HASH
        with pytest.raises(BackendFailure, match="connection closed or broken answer") as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    finally:
        await backend.aclose()
    assert raised.value.kind is Failure.UNREACHABLE
    # Exactly one request for the second call: the one the gateway sent and counted.
    assert dropping_server.requests == 2
    assert observer.exchanges == [("GET", 200), ("GET", None)]


async def test_the_gateways_own_retry_of_a_dropped_connection_is_paced_and_counted(
    dropping_server: OneAnswerPerConnection,
) -> None:
    observer = RecordingObserver()
    # Three tokens and no refill to speak of: each request that reaches the server spends one.
    backend = configured_backend(
        dropping_server.url,
        observer,
        upstream_retries=2,
        upstream_rate_limit=0.001,
        upstream_burst=3,
    )
    try:
        for _ in range(2):
            assert (await backend.get_identity(WA_ID, deadline=NO_DEADLINE)).hash == HASH
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=Deadline.after(1.0))
    finally:
        await backend.aclose()
    # The second call: the reused connection hung up, the gateway retried on a new one.
    assert dropping_server.requests == 3
    assert dropping_server.connections == 2
    assert observer.exchanges == [("GET", 200), ("GET", None), ("GET", 200)]
    assert observer.retries == ["GET"]
    # The three tokens went to those three requests: the next is refused, and not sent.
    assert raised.value.kind is Failure.PACED
    assert observer.rejections == ["rate_limited"]


async def test_the_aiohttp_session_is_built_without_its_own_resend() -> None:
    # The switch is private (aiohttp has no public one): this fails loudly should aiohttp rename
    # it, as the socket tests above would by seeing an extra request.
    assert "_retry_connection" in aiohttp.ClientSession.ATTRS
    session = aiohttp_transport(max_connections=1, verify=False).get_client()
    try:
        assert session._retry_connection is False
    finally:
        await session.close()


# ------------------------------------------------------------- (4) the upstream's pause


class RateLimiting:
    """An upstream answering 429 (with ``retry_after``, if any) while ``limited``, else the
    identity in ``identity``; records every request it receives."""

    def __init__(self, identity: Mapping[str, object], retry_after: str | None = "3") -> None:
        self.identity = identity
        self.retry_after = retry_after
        self.limited = True
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.limited:
            return httpx.Response(200, json=self.identity)
        headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
        return httpx.Response(429, headers=headers, json={"errors": [{"code": 1015}]})


def onprem(upstream: RateLimiting, guards: Safeguards) -> Backend:
    http = HttpUpstream(httpx.MockTransport(upstream), base_url=BASE_URL, request_timeout=5.0)
    return OnPremBackend(http, token="static", safeguards=guards)


def infobip(upstream: RateLimiting, guards: Safeguards) -> Backend:
    http = HttpUpstream(httpx.MockTransport(upstream), base_url=BASE_URL, request_timeout=5.0)
    return InfobipBackend(http, sender=SENDER, api_key="key", safeguards=guards)


BACKENDS = {"onprem": (onprem, ONPREM_IDENTITY), "infobip": (infobip, INFOBIP_IDENTITY)}


def without_bucket(clock: Clock, observer: RecordingObserver) -> Safeguards:
    """The configured safeguards with pacing off (``rate_limit`` 0), on ``clock``."""
    guards = Safeguards.configured(
        retries=2, rate_limit=0, burst=1, max_in_flight=8, max_waiting=8, observer=observer
    )
    assert guards.bucket is None
    return dataclasses.replace(guards, pause=UpstreamPause(clock=clock))


def with_bucket(clock: Clock, observer: RecordingObserver) -> Safeguards:
    bucket = TokenBucket(rate=100.0, burst=100, clock=clock)
    return Safeguards(bucket=bucket, observer=observer, pause=UpstreamPause(clock=clock))


async def refused(backend: Backend) -> BackendFailure:
    with pytest.raises(BackendFailure) as raised:
        await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    return raised.value


@pytest.mark.parametrize("guards_for", [without_bucket, with_bucket], ids=["no-bucket", "bucket"])
@pytest.mark.parametrize(("make", "identity"), BACKENDS.values(), ids=BACKENDS.keys())
async def test_a_429_pauses_the_sender_until_its_retry_after_and_nothing_is_sent_meanwhile(
    guards_for: Callable[[Clock, RecordingObserver], Safeguards],
    make: Callable[[RateLimiting, Safeguards], Backend],
    identity: Mapping[str, object],
) -> None:
    clock, observer = Clock(), RecordingObserver()
    upstream = RateLimiting(identity, retry_after="3")
    backend = make(upstream, guards_for(clock, observer))

    answered = await refused(backend)
    assert (answered.kind, answered.http_status, answered.retry_after) == (
        Failure.RATE_LIMITED,
        429,
        3.0,
    )
    upstream.limited = False  # the upstream would answer now: the gateway must not ask yet

    for elapsed, left in ((1.0, 2.0), (2.9, 0.1)):
        clock.now = 1000.0 + elapsed
        failure = await refused(backend)
        assert (failure.kind, failure.http_status) == (Failure.RATE_LIMITED, None)
        assert failure.retry_after == pytest.approx(left)
        assert f"{left:.1f} s left" in failure.message
    assert len(upstream.requests) == 1
    assert observer.rejections == ["paused", "paused"]

    clock.now = 1003.0
    assert (await backend.get_identity(WA_ID, deadline=NO_DEADLINE)).hash == HASH
    assert len(upstream.requests) == 2


async def test_a_retry_after_of_an_hour_pauses_for_a_minute() -> None:
    clock = Clock()
    upstream = RateLimiting(ONPREM_IDENTITY, retry_after="3600")
    backend = onprem(upstream, Safeguards(pause=UpstreamPause(clock=clock)))

    # The caller who got the 429 is told the pause the gateway keeps, as every later one is.
    assert (await refused(backend)).retry_after == MAX_PAUSE == 60.0
    upstream.limited = False
    clock.advance(59.5)
    assert (await refused(backend)).retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert len(upstream.requests) == 2


async def test_a_429_without_retry_after_pauses_for_a_second() -> None:
    clock = Clock()
    upstream = RateLimiting(ONPREM_IDENTITY, retry_after=None)
    backend = onprem(upstream, Safeguards(pause=UpstreamPause(clock=clock)))

    assert (await refused(backend)).retry_after == 1.0
    upstream.limited = False
    clock.advance(0.5)
    assert (await refused(backend)).retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert len(upstream.requests) == 2


async def test_a_later_429_extends_the_pause_and_none_shortens_it() -> None:
    clock = Clock()
    guards = Safeguards(pause=UpstreamPause(clock=clock))
    release = asyncio.Event()

    def answer(retry_after: float) -> Callable[[], Awaitable[None]]:
        async def attempt() -> None:
            await guards.pace(NO_DEADLINE)  # both pass: nothing is paused yet
            await release.wait()
            raise BackendFailure(Failure.RATE_LIMITED, http_status=429, retry_after=retry_after)

        return attempt

    calls = [asyncio.ensure_future(guards.run("GET", NO_DEADLINE, answer(s))) for s in (10, 2)]
    await asyncio.sleep(0)
    release.set()
    first, second = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(first, BackendFailure)
    assert first.retry_after == 10.0
    # The shorter wish, answered later, leaves the pause as it was, and says so.
    assert isinstance(second, BackendFailure)
    assert second.retry_after == 10.0
    assert guards.pause.remaining() == 10.0

    clock.advance(9.0)
    assert guards.pause.extend(30.0) == 30.0
    assert guards.pause.extend(5.0) == 30.0


async def test_a_call_waiting_for_a_token_when_the_pause_begins_is_not_sent() -> None:
    clock = Clock()
    sent, answer_now = asyncio.Event(), asyncio.Event()
    waiting, token_due = asyncio.Event(), asyncio.Event()
    requests: list[httpx.Request] = []

    async def slow_429(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        sent.set()
        await answer_now.wait()
        return httpx.Response(429, headers={"Retry-After": "3"})

    async def sleep(seconds: float) -> None:
        waiting.set()
        await token_due.wait()
        clock.advance(seconds)

    bucket = TokenBucket(rate=1.0, burst=1, clock=clock, sleep=sleep)
    guards = Safeguards(bucket=bucket, pause=UpstreamPause(clock=clock))
    http = HttpUpstream(httpx.MockTransport(slow_429), base_url=BASE_URL, request_timeout=5.0)
    backend = OnPremBackend(http, token="static", safeguards=guards)

    first = asyncio.ensure_future(refused(backend))  # takes the only token; in flight
    second = asyncio.ensure_future(refused(backend))  # waits a second for the next token
    await sent.wait()
    await waiting.wait()
    answer_now.set()
    assert (await first).http_status == 429  # the pause begins
    token_due.set()

    failure = await second
    assert (failure.kind, failure.http_status) == (Failure.RATE_LIMITED, None)
    assert failure.retry_after == pytest.approx(2.0)
    assert len(requests) == 1


async def test_the_breaker_hears_nothing_of_calls_refused_during_a_pause() -> None:
    clock = Clock()
    # Opens when half of at least two outcomes in its window say the upstream is down.
    breaker = CircuitBreaker(min_requests=2, failure_ratio=0.5, clock=clock)
    guards = Safeguards(
        retry=RetryPolicy(max_attempts=1), breaker=breaker, pause=UpstreamPause(clock=clock)
    )
    statuses = iter([429, 503])

    def answer(request: httpx.Request) -> httpx.Response:
        status = next(statuses)
        return httpx.Response(status, headers={"Retry-After": "3"} if status == 429 else {})

    http = HttpUpstream(httpx.MockTransport(answer), base_url=BASE_URL, request_timeout=5.0)
    backend = OnPremBackend(http, token="static", safeguards=guards)

    assert (await refused(backend)).http_status == 429  # the upstream answered: it is up
    for _ in range(5):
        assert (await refused(backend)).http_status is None
    assert state_of(breaker) is BreakerState.CLOSED

    clock.advance(3.0)
    assert (await refused(backend)).http_status == 503
    # One success (the 429) and one failure: had the refusals counted as successes, the
    # breaker would still be closed; as failures, it would have opened before the 503.
    assert state_of(breaker) is BreakerState.OPEN


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


async def test_a_refusal_during_the_pause_tells_the_caller_resource_exhausted_and_when() -> None:
    clock = Clock()
    guards = Safeguards(pause=UpstreamPause(clock=clock))
    backend = onprem(RateLimiting(ONPREM_IDENTITY, retry_after="3"), guards)
    await refused(backend)
    clock.advance(1.25)

    status = to_status(await refused(backend))

    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    [info_any, retry_any] = status.details
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert info_any.Unpack(info)
    assert retry_any.Unpack(retry)
    assert info.reason == Reason.UPSTREAM_RATE_LIMITED
    assert "upstreamStatus" not in info.metadata  # the upstream was not asked
    assert retry.retry_delay.ToNanoseconds() == pytest.approx(1.75e9)
    assert "1.8 s left" in status.message


# ------------------------------------------------------------- (7) error answers of any size


class Answering:
    """Answers every request with ``status`` and a body of ``size`` bytes, streamed without a
    Content-Length when ``streamed``; counts requests and the 64 KiB chunks it handed out."""

    CHUNK = 65536

    def __init__(self, status: int, size: int, *, streamed: bool = False) -> None:
        self.status = status
        self.size = size
        self.streamed = streamed
        self.requests = 0
        self.chunks_sent = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if not self.streamed:
            return httpx.Response(self.status, content=b"x" * self.size)
        return httpx.Response(self.status, content=self._chunks())

    async def _chunks(self) -> AsyncIterator[bytes]:
        for _ in range(self.size // self.CHUNK):
            self.chunks_sent += 1
            yield b"x" * self.CHUNK


def retrying(upstream: Answering) -> OnPremBackend:
    """A backend retrying twice, at once: the request count shows what was retried."""
    guards = Safeguards(retry=RetryPolicy(max_attempts=3, uniform=lambda low, high: 0.0))
    http = HttpUpstream(httpx.MockTransport(upstream), base_url=BASE_URL, request_timeout=5.0)
    return OnPremBackend(http, token="static", safeguards=guards)


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
async def test_a_503_with_a_huge_body_is_unavailable_and_retried(streamed: bool) -> None:
    upstream = Answering(503, HUGE, streamed=streamed)
    failure = await refused(retrying(upstream))
    assert (failure.kind, failure.http_status) == (Failure.UNAVAILABLE, 503)
    assert upstream.requests == 3
    if streamed:  # only the prefix was read, three times over
        assert upstream.chunks_sent <= 3 * (MAX_ERROR_BODY_BYTES // Answering.CHUNK + 1)


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
async def test_a_404_with_a_huge_body_is_not_found(streamed: bool) -> None:
    upstream = Answering(404, HUGE, streamed=streamed)
    failure = await refused(retrying(upstream))
    assert (failure.kind, failure.http_status) == (Failure.NOT_FOUND, 404)
    assert upstream.requests == 1


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
async def test_a_200_with_a_huge_body_is_still_a_bad_answer(streamed: bool) -> None:
    upstream = Answering(200, HUGE, streamed=streamed)
    with pytest.raises(BackendFailure, match="larger than") as raised:
        await retrying(upstream).get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.BAD_ANSWER
    assert upstream.requests == 1


class HugeErrorThenOk:
    """A loopback server answering its first request with a 503 and a 2 MiB body, which it
    writes for as long as the client reads, and every later request with the identity."""

    def __init__(self) -> None:
        self.requests = 0
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.requests += 1
                if self.requests > 1:
                    writer.write(OK)
                    await writer.drain()
                    continue
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % HUGE
                )
                for _ in range(HUGE // 65536):
                    writer.write(b"x" * 65536)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def huge_error_server() -> AsyncIterator[HugeErrorThenOk]:
    raw = HugeErrorThenOk()
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield raw
    server.close()
    await server.wait_closed()


async def test_a_huge_error_answer_over_a_real_connection_is_cut_short_and_classified(
    huge_error_server: HugeErrorThenOk,
) -> None:
    observer = RecordingObserver()
    backend = configured_backend(huge_error_server.url, observer, upstream_retries=0)
    try:
        failure = await refused(backend)
        assert (failure.kind, failure.http_status) == (Failure.UNAVAILABLE, 503)
        # The half-read connection was not put back in the pool: the next call is answered.
        assert (await backend.get_identity(WA_ID, deadline=NO_DEADLINE)).hash == HASH
    finally:
        await backend.aclose()
    assert huge_error_server.requests == 2


async def test_a_login_is_paced_like_any_other_request() -> None:
    """Every request that leaves the gateway passes pacing: the login too, so a read that
    needs one takes two tokens from the bucket."""
    sent: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path == "/v1/users/login":
            return httpx.Response(
                200, json={"users": [{"token": "t", "expires_after": "2099-01-01 00:00:00+00:00"}]}
            )
        return httpx.Response(200, json=ONPREM_IDENTITY)

    bucket = TokenBucket(rate=0.001, burst=2)
    guards = Safeguards(bucket=bucket)
    http = HttpUpstream(httpx.MockTransport(upstream), base_url=BASE_URL, request_timeout=5.0)
    backend = OnPremBackend(http, username="gateway", password="secret", safeguards=guards)
    await backend.get_identity("16315551234", deadline=NO_DEADLINE)
    with pytest.raises(BackendFailure) as refused:
        await backend.get_identity("16315551234", deadline=Deadline.after(1.0))
    await backend.aclose()

    assert sent == ["/v1/users/login", "/v1/contacts/16315551234/identity"]
    assert refused.value.kind is Failure.PACED  # both tokens went: the login's and the read's
