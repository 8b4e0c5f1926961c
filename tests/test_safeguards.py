"""The upstream safeguards end to end: retries, circuit breaker, rate shaping, admission."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
import pytest
from whatsapp_emulator.emulator import Fault, RunningEmulator, error_envelope

from gateway.app.config import GatewayConfig
from gateway.app.server import GatewayServer
from gateway.backends.http import HttpUpstream, aiohttp_transport
from gateway.backends.onprem.client import OnPremBackend
from gateway.backends.safeguards import (
    BreakerState,
    CircuitBreaker,
    RetryBudget,
    RetryPolicy,
    Safeguards,
)
from gateway.deadline import NO_DEADLINE
from gateway.failures import BackendFailure, Failure
from tests.conftest import Gateway, GatewayFactory, new_wa_id

pytestmark = pytest.mark.integration

HASH = "UKD6Y/5SqDU="


def known_contact(emulator: RunningEmulator) -> str:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    return wa_id


def path(wa_id: str) -> str:
    return f"/v1/contacts/{wa_id}/identity"


# ---------------------------------------------------------------------------- retries


async def test_a_passing_503_is_retried_and_the_caller_sees_success(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(path(wa_id), status=503, json=error_envelope(1016)))

    outcome = await gateway.get(wa_id)

    assert outcome.ok, outcome
    assert emulator.state.count("GET", path(wa_id)) == 2


async def test_a_dropped_connection_is_retried_for_an_acknowledge_too(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(path(wa_id), method="PUT", drop=True))

    assert (await gateway.ack(wa_id, HASH)).ok
    assert emulator.state.count("PUT", path(wa_id)) == 2


async def test_retries_stop_before_the_callers_deadline(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = known_contact(emulator)
    # The emulator's delay dominates each attempt, so a busy machine barely changes how long
    # an attempt takes: the gateway's estimate of the next one stays right.
    emulator.state.add_fault(Fault(path(wa_id), status=503, delay=0.3, times=None))
    async with gateway_factory(upstream_retries=10) as gateway:
        outcome = await gateway.get(wa_id, timeout=1.8)
    # Had a retry run into the deadline, the caller would see DEADLINE_EXCEEDED.
    assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome
    assert outcome.reason == "UPSTREAM_UNAVAILABLE"
    assert 2 <= emulator.state.count("GET", path(wa_id)) <= 5


async def test_a_retry_after_beyond_the_deadline_is_returned_not_waited_for(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(
        Fault(path(wa_id), status=503, headers={"Retry-After": "30"}, times=None)
    )
    outcome = await gateway.get(wa_id, timeout=5)
    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.retry_seconds == 30
    assert emulator.state.count("GET", path(wa_id)) == 1


async def test_rate_limiting_by_whatsapp_is_never_retried(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(path(wa_id), status=429, times=None))
    outcome = await gateway.get(wa_id)
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert emulator.state.count("GET", path(wa_id)) == 1


async def test_timeouts_are_not_retried(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(path(wa_id), stall_after_headers=5, times=None))
    async with gateway_factory(upstream_timeout=0.2) as gateway:
        outcome = await gateway.get(wa_id)
    assert outcome.reason == "UPSTREAM_TIMEOUT"
    assert emulator.state.count("GET", path(wa_id)) == 1


async def test_the_retry_budget_caps_retries_at_its_share_of_operations() -> None:
    requests = 0

    def unavailable(request: httpx.Request) -> httpx.Response:
        nonlocal requests
        requests += 1
        return httpx.Response(503)

    guards = Safeguards(
        retry=RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002),
        budget=RetryBudget(ratio=0.5, min_retries_per_second=0.0),
        # Never opens here: only the budget may stop the retries.
        breaker=CircuitBreaker(min_requests=1000),
    )
    upstream = HttpUpstream(
        httpx.MockTransport(unavailable), base_url="https://wa.test", request_timeout=5.0
    )
    async with OnPremBackend(upstream, token="static", safeguards=guards) as backend:
        for _ in range(10):
            with pytest.raises(BackendFailure) as raised:
                await backend.get_identity(new_wa_id(), deadline=NO_DEADLINE)
            assert raised.value.kind is Failure.UNAVAILABLE

    # Each operation is one request to the budget, which then allows 0.5 retries per request,
    # and no floor: operation n may retry only while retries + 1 <= 0.5 * n, so every second
    # operation retries once (its second retry would pass the share). Without the budget every
    # operation would make all 3 attempts (30 requests).
    assert requests == 10 + 5


# ---------------------------------------------------------------------------- circuit breaker


@asynccontextmanager
async def gateway_with_breaker(
    emulator: RunningEmulator, breaker: CircuitBreaker
) -> AsyncIterator[Gateway]:
    config = GatewayConfig(
        upstream_url=emulator.url,
        listen="127.0.0.1:0",
        upstream_username="admin",
        upstream_password="secret",
        upstream_retries=0,
    )
    backend = OnPremBackend(
        HttpUpstream(
            aiohttp_transport(max_connections=8, verify=False),
            base_url=emulator.url,
            request_timeout=5,
        ),
        username="admin",
        password="secret",
        safeguards=Safeguards(breaker=breaker, retry=RetryPolicy(max_attempts=1)),
    )
    async with (
        GatewayServer(config, backends={"": backend}) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield Gateway(server, channel)


async def test_the_breaker_opens_on_sustained_failures_and_stops_calling_whatsapp(
    emulator: RunningEmulator,
) -> None:
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        min_requests=10,
        failure_ratio=0.5,
        open_duration=0.3,
        on_state_change=lambda old, new: transitions.append((old, new)),
    )
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(path(wa_id), status=503, times=None))
    async with gateway_with_breaker(emulator, breaker) as gateway:
        failures = [await gateway.get(wa_id, bypass_cache=True) for _ in range(10)]
        calls_when_opened = emulator.state.count("GET", path(wa_id))
        while_open = [await gateway.get(wa_id, bypass_cache=True) for _ in range(20)]
        calls_while_open = emulator.state.count("GET", path(wa_id)) - calls_when_opened

        emulator.state.clear_faults()  # WhatsApp recovers
        await asyncio.sleep(0.35)  # the open period passes: the next call is a probe
        probe = await gateway.get(wa_id, bypass_cache=True)
        after = await gateway.get(wa_id, bypass_cache=True)

    assert {o.reason for o in failures} == {"UPSTREAM_UNAVAILABLE"}
    assert calls_when_opened == 10
    assert calls_while_open == 0
    assert {o.code for o in while_open} == {grpc.StatusCode.UNAVAILABLE}
    assert {o.reason for o in while_open} == {"CIRCUIT_OPEN"}
    assert all((o.retry_seconds or 0) > 0 for o in while_open)
    assert probe.ok, probe
    assert after.ok, after
    assert transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


async def test_answers_that_show_whatsapp_up_do_not_open_the_breaker(
    emulator: RunningEmulator,
) -> None:
    breaker = CircuitBreaker(min_requests=5, failure_ratio=0.5, open_duration=60)
    async with gateway_with_breaker(emulator, breaker) as gateway:
        for _ in range(10):
            assert (await gateway.get(new_wa_id())).code == grpc.StatusCode.NOT_FOUND
    assert breaker.state is BreakerState.CLOSED


# ---------------------------------------------------------------------------- rate shaping


async def test_upstream_requests_are_paced_to_the_configured_rate(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_ids = [known_contact(emulator) for _ in range(12)]
    async with gateway_factory(upstream_rate_limit=10, upstream_burst=2) as gateway:
        outcomes = await asyncio.gather(*(gateway.get(w, timeout=10) for w in wa_ids))
    assert all(o.ok for o in outcomes)
    times = sorted(r.time for r in emulator.state.requests("GET"))
    assert len(times) == 12
    # 2 at once from the burst, then one every 0.1 s: the last comes 1 s after the first was
    # sent. The times are when the emulator, in this busy test process, saw each request; the
    # first can be seen >0.1 s late (it also waited for the login), so 0.2 s is allowed.
    # Unpaced, all 12 would come within milliseconds.
    assert times[-1] - times[0] >= 0.8
    for earlier, later in itertools.pairwise(times[2:]):
        assert later - earlier >= 0.07  # spacing, with room for scheduling jitter


async def test_a_call_that_cannot_get_a_token_before_its_deadline_fails_at_once(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    first, second = known_contact(emulator), known_contact(emulator)
    async with gateway_factory(upstream_rate_limit=0.5, upstream_burst=1) as gateway:
        assert (await gateway.get(first)).ok
        outcome = await gateway.get(second, timeout=1.0)  # the next token is 2 s away
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcome.reason == "UPSTREAM_RATE_LIMITED"
    assert outcome.metadata == {"limitedBy": "gateway"}
    assert (outcome.retry_seconds or 0) > 1
    assert emulator.state.count("GET", path(second)) == 0


# ---------------------------------------------------------------------------- admission


async def test_beyond_the_in_flight_and_waiting_bounds_callers_are_refused_at_once(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_ids = [known_contact(emulator) for _ in range(10)]
    emulator.state.add_fault(Fault("/v1/contacts/*", method="GET", delay=1.0, times=None))
    finished: list[str] = []

    async def read(wa_id: str, gateway: Gateway) -> grpc.StatusCode:
        outcome = await gateway.get(wa_id, timeout=10)
        finished.append(outcome.code.name)
        return outcome.code

    async with gateway_factory(upstream_max_in_flight=2, upstream_max_waiting=2) as gateway:
        codes = await asyncio.gather(*(read(w, gateway) for w in wa_ids))

    assert codes.count(grpc.StatusCode.OK) == 4  # 2 in flight + 2 waiting
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 6
    # the refused ones were answered before any slow upstream answer came back
    assert finished[:6] == ["RESOURCE_EXHAUSTED"] * 6
    assert emulator.state.count("GET") == 4
