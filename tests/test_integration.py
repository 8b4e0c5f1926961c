"""The gateway end to end: a real grpc.aio server, a real channel, the emulator on a socket."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from whatsapp.identity.v1 import identity_pb2
from whatsapp_emulator.emulator import Fault, RunningEmulator, error_envelope

from gateway.serving.status import DOMAIN
from tests.conftest import Gateway, GatewayFactory, Outcome, call, new_wa_id, wait_until

pytestmark = pytest.mark.integration

HASH = "UKD6Y/5SqDU="
CREATED_MS = 1600132094000


def identity_path(wa_id: str) -> str:
    return f"/v1/contacts/{wa_id}/identity"


def known_contact(emulator: RunningEmulator, **options: Any) -> str:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH, created_timestamp=CREATED_MS, **options)
    return wa_id


# ---------------------------------------------------------------------------- the happy path


async def test_a_read_goes_upstream_once_then_is_served_from_the_cache(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)

    first = await gateway.get("+" + wa_id)
    second = await gateway.get(wa_id)  # the exact cached key: the short path
    third = await gateway.get("+" + wa_id)  # another form of it: validated, then a hit

    assert first.ok, first
    assert second.ok, second
    assert third.response == second.response
    identity = first.response.identity
    assert (identity.wa_id, identity.hash, identity.acknowledged) == (wa_id, HASH, False)
    assert identity.create_time.ToMilliseconds() == CREATED_MS
    assert (first.response.cache_hit, second.response.cache_hit) == (False, True)
    assert second.response.fetch_time == first.response.fetch_time
    assert emulator.state.count("GET", identity_path(wa_id)) == 1


@pytest.mark.parametrize(
    "variant",
    [
        {"shape": "array"},
        {"acknowledged_as": "string", "acknowledged": True},
        {"timestamp_as": "string"},
        {"meta": False},
    ],
    ids=["array", "string-acknowledged", "string-timestamp", "no-meta"],
)
async def test_every_tolerated_response_variant_is_read(
    emulator: RunningEmulator, gateway: Gateway, variant: dict[str, Any]
) -> None:
    wa_id = known_contact(emulator, **variant)
    outcome = await gateway.get(wa_id)
    assert outcome.ok, outcome
    assert outcome.response.identity.hash == HASH
    assert outcome.response.identity.acknowledged is variant.get("acknowledged", False)
    assert outcome.response.identity.create_time.ToMilliseconds() == CREATED_MS


async def test_bypass_cache_reads_upstream_and_refreshes_the_cache(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    assert (await gateway.get(wa_id)).ok
    emulator.state.set_identity(wa_id, "bmV3SGFzaA==", created_timestamp=CREATED_MS + 1)

    stale = await gateway.get(wa_id)
    fresh = await gateway.get(wa_id, bypass_cache=True)
    after = await gateway.get(wa_id)

    assert stale.response.identity.hash == HASH
    assert (fresh.response.identity.hash, fresh.response.cache_hit) == ("bmV3SGFzaA==", False)
    assert (after.response.identity.hash, after.response.cache_hit) == ("bmV3SGFzaA==", True)
    assert emulator.state.count("GET", identity_path(wa_id)) == 2


async def test_acknowledge_then_read_shows_acknowledged_without_a_new_read(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    assert (await gateway.get(wa_id)).response.identity.acknowledged is False

    assert (await gateway.ack(wa_id, HASH)).ok
    after = await gateway.get(wa_id)

    assert after.response.identity.acknowledged is True
    assert after.response.cache_hit is True
    assert emulator.state.count("GET", identity_path(wa_id)) == 1
    assert emulator.state.identity(wa_id) is not None
    assert emulator.state.identity(wa_id).acknowledged is True  # type: ignore[union-attr]
    [put] = emulator.state.requests("PUT", identity_path(wa_id))
    assert put.json() == {"hash": HASH}


async def read_held_at_whatsapp(
    emulator: RunningEmulator, gateway: Gateway
) -> tuple[str, asyncio.Task[Outcome]]:
    """A read of a new contact, held at WhatsApp for 1.5 s (time for a change to land, even on a
    loaded machine); it will answer with the identity as it was when the read arrived
    (unacknowledged, the original hash), whatever happens meanwhile.
    """
    wa_id = known_contact(emulator)
    before = {"hash": HASH, "created_timestamp": CREATED_MS, "acknowledged": False}
    emulator.state.add_fault(
        Fault(identity_path(wa_id), method="GET", delay=1.5, status=200, json={"contacts": before})
    )
    slow_read = asyncio.create_task(gateway.get(wa_id))
    assert await wait_until(lambda: emulator.state.count("GET", identity_path(wa_id)) == 1)
    return wa_id, slow_read


async def test_a_read_overtaken_by_an_acknowledge_does_not_cache_the_old_state(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id, slow_read = await read_held_at_whatsapp(emulator, gateway)

    assert (await gateway.ack(wa_id, HASH)).ok
    overtaken = await slow_read
    after = await gateway.get(wa_id)

    assert overtaken.response.identity.acknowledged is False  # asked before the acknowledge
    assert after.response.identity.acknowledged is True
    assert after.response.cache_hit is False  # read again, not the stale answer from the cache
    assert (await gateway.get(wa_id)).response.cache_hit is True


async def test_a_read_overtaken_by_a_reported_change_does_not_cache_the_old_hash(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id, slow_read = await read_held_at_whatsapp(emulator, gateway)

    report = identity_pb2.ReportIdentityChangeRequest(wa_id=wa_id, hash="bmV3SGFzaA==")
    assert (await call(gateway.stub.ReportIdentityChange, report)).ok
    await slow_read
    after = await gateway.get(wa_id)

    assert (after.response.identity.hash, after.response.cache_hit) == ("bmV3SGFzaA==", True)


@pytest.mark.parametrize("body", ["null", "{}", "empty", "meta"])
async def test_every_acknowledge_success_body_is_accepted(
    emulator: RunningEmulator, gateway: Gateway, body: str
) -> None:
    emulator.state.update_settings(ack_success_body=body)
    wa_id = known_contact(emulator)
    assert (await gateway.ack(wa_id, HASH)).ok


async def test_a_caching_ttl_of_zero_reads_upstream_every_time(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = known_contact(emulator)
    async with gateway_factory(cache_ttl=0) as gateway:
        outcomes = [await gateway.get(wa_id) for _ in range(3)]
    assert [o.response.cache_hit for o in outcomes] == [False, False, False]
    assert emulator.state.count("GET", identity_path(wa_id)) == 3


async def test_an_expired_identity_is_read_again_not_served_from_the_cache(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = known_contact(emulator)
    async with gateway_factory(cache_ttl=0.3) as gateway:
        first = await gateway.get(wa_id)
        hit = await gateway.get(wa_id)  # the exact cached key: the short path
        await asyncio.sleep(0.4)
        expired = await gateway.get(wa_id)
    assert [o.response.cache_hit for o in (first, hit, expired)] == [False, True, False]
    assert emulator.state.count("GET", identity_path(wa_id)) == 2


async def test_a_hit_keeps_its_identity_from_being_the_next_evicted(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    a, b, c = (known_contact(emulator) for _ in range(3))
    async with gateway_factory(cache_max_entries=2) as gateway:
        await gateway.get(a)
        await gateway.get(b)
        assert (await gateway.get(a)).response.cache_hit  # the short path: a is now recent
        await gateway.get(c)  # evicts the least recently used: b
        after = [(await gateway.get(wa_id)).response.cache_hit for wa_id in (a, b)]
    assert after == [True, False]


async def test_a_static_token_is_sent_as_a_bearer_token(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    token, _ = emulator.state.issue_token()
    wa_id = known_contact(emulator)
    async with gateway_factory(
        upstream_username=None, upstream_password=None, upstream_token=token
    ) as gateway:
        assert (await gateway.get(wa_id)).ok
    assert emulator.state.count("POST", "/v1/users/login") == 0
    [get] = emulator.state.requests("GET", identity_path(wa_id))
    assert get.headers["authorization"] == f"Bearer {token}"


async def test_trace_metadata_reaches_whatsapp(emulator: RunningEmulator, gateway: Gateway) -> None:
    wa_id = known_contact(emulator)
    trace = (
        ("x-request-id", "req-42"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "vendor=x"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba8"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
        ("x-b3-flags", "0"),
        ("x-not-a-trace-header", "kept-away"),
    )
    assert (await gateway.get(wa_id, metadata=trace)).ok
    [get] = emulator.state.requests("GET", identity_path(wa_id))
    for name, value in trace[:-1]:
        assert get.headers[name] == value
    assert "x-not-a-trace-header" not in get.headers


async def test_an_oversized_trace_header_is_not_forwarded_as_it_is(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    """Spec 4.1: no caller can make the gateway's own upstream requests invalid. An
    x-request-id over 1,024 characters is replaced by a generated one; other trace headers
    that long are dropped."""
    wa_id = known_contact(emulator)
    long_id = "r" * 1025
    long_state = "vendor=" + "x" * 1100
    trace = (("x-request-id", long_id), ("tracestate", long_state), ("x-b3-sampled", "1"))
    assert (await gateway.get(wa_id, metadata=trace)).ok
    [get] = emulator.state.requests("GET", identity_path(wa_id))
    assert get.headers["x-request-id"] != long_id
    assert 0 < len(get.headers["x-request-id"]) <= 1024
    assert "tracestate" not in get.headers
    assert get.headers["x-b3-sampled"] == "1"


async def test_oversized_trace_headers_are_logged_once_not_per_call(
    emulator: RunningEmulator, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    wa_id = known_contact(emulator)
    trace = (("tracestate", "x" * 2000),)
    with caplog.at_level(logging.WARNING, logger="gateway.serving.servicer"):
        for _ in range(20):
            assert (await gateway.get(wa_id, bypass_cache=True, metadata=trace)).ok
    lines = [r.getMessage() for r in caplog.records if "did not forward" in r.getMessage()]
    assert lines == ["did not forward a caller's tracestate of 2000 characters (at most 1024)"]


# ---------------------------------------------------------------------------- coalescing


async def test_a_thousand_concurrent_cold_reads_cause_one_upstream_request(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(identity_path(wa_id), method="GET", delay=0.3))

    outcomes = await asyncio.gather(*(gateway.get(wa_id, timeout=30) for _ in range(1000)))

    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
    assert {o.response.identity.hash for o in outcomes} == {HASH}
    assert emulator.state.count("GET", identity_path(wa_id)) == 1


async def test_a_caller_that_gives_up_does_not_fail_the_others(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(identity_path(wa_id), method="GET", delay=0.5))

    impatient, patient = await asyncio.gather(
        gateway.get(wa_id, timeout=0.1), gateway.get(wa_id, timeout=10)
    )

    assert impatient.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert patient.ok, patient
    assert emulator.state.count("GET", identity_path(wa_id)) == 1


async def test_a_revoked_token_causes_exactly_one_relogin(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_ids = [known_contact(emulator) for _ in range(50)]
    assert (await gateway.get(wa_ids[0])).ok
    assert emulator.state.count("POST", "/v1/users/login") == 1

    emulator.state.revoke_tokens()
    outcomes = await asyncio.gather(*(gateway.get(w) for w in wa_ids[1:]))

    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
    assert emulator.state.count("POST", "/v1/users/login") == 2


async def test_errors_are_not_cached(emulator: RunningEmulator, gateway: Gateway) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(
        Fault(identity_path(wa_id), status=500, json=error_envelope(1014), times=1)
    )
    assert (await gateway.get(wa_id)).code == grpc.StatusCode.INTERNAL
    assert (await gateway.get(wa_id)).ok


# ---------------------------------------------------------------------------- errors, by row


async def test_an_invalid_wa_id_is_rejected_without_calling_whatsapp(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    for hostile in ("../users/login", "1234%2F5678", "١٢٣٤٥٦٧٨", "12345", "1" * 16, ""):
        outcome = await gateway.get(hostile)
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, hostile
        assert outcome.reason == "INVALID_WA_ID"
        [bad] = outcome.bad_requests
        assert [v.field for v in bad.field_violations] == ["wa_id"]
    assert emulator.state.count() == 0


async def test_an_invalid_hash_is_rejected_without_calling_whatsapp(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    outcome = await gateway.ack(new_wa_id(), "not a hash!")
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.reason == "INVALID_HASH"
    assert [v.field for v in outcome.bad_requests[0].field_violations] == ["hash"]
    assert emulator.state.count() == 0


async def test_an_unknown_contact_is_not_found(emulator: RunningEmulator, gateway: Gateway) -> None:
    outcome = await gateway.get(new_wa_id())
    assert outcome.code == grpc.StatusCode.NOT_FOUND
    assert outcome.reason == "CONTACT_NOT_FOUND"
    assert outcome.error_infos[0].domain == DOMAIN
    assert outcome.metadata == {"upstreamStatus": "404", "whatsappCode": "1006"}


@pytest.mark.parametrize("mismatch", ["400", "409"])
async def test_acknowledging_a_stale_hash_is_a_hash_mismatch_and_refreshes_the_cache(
    emulator: RunningEmulator, gateway: Gateway, mismatch: str
) -> None:
    emulator.state.update_settings(ack_mismatch=mismatch)
    wa_id = known_contact(emulator)
    assert (await gateway.get(wa_id)).ok
    emulator.state.set_identity(wa_id, "bmV3SGFzaA==")  # the identity changes again

    outcome = await gateway.ack(wa_id, HASH)
    reread = await gateway.get(wa_id)

    assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION
    assert outcome.reason == "HASH_MISMATCH"
    assert outcome.metadata["upstreamStatus"] == mismatch
    assert "read the identity again" in outcome.message
    assert (reread.response.identity.hash, reread.response.cache_hit) == ("bmV3SGFzaA==", False)


# (fault, expected code, reason, expected metadata, RetryInfo seconds or None)
UPSTREAM_ERROR_ROWS: list[tuple[str, Fault, grpc.StatusCode, str, dict[str, str], float | None]] = [
    (
        "400-rejected",
        Fault("/v1/contacts/*", times=None, status=400, json=error_envelope(1025, "bad")),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_REJECTED_REQUEST",
        {"upstreamStatus": "400", "whatsappCode": "1025"},
        None,
    ),
    (
        "422-rejected",
        Fault("/v1/contacts/*", times=None, status=422),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_REJECTED_REQUEST",
        {"upstreamStatus": "422"},
        None,
    ),
    (
        "403-auth",
        Fault("/v1/contacts/*", times=None, status=403, json=error_envelope(1005)),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
        {"upstreamStatus": "403", "whatsappCode": "1005"},
        None,
    ),
    (
        "401-after-relogin",
        Fault("/v1/contacts/*", times=None, status=401),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
        {"upstreamStatus": "401"},
        None,
    ),
    (
        "429-retry-after",
        Fault(
            "/v1/contacts/*", status=429, json=error_envelope(1015), headers={"Retry-After": "7"}
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_RATE_LIMITED",
        {"upstreamStatus": "429", "whatsappCode": "1015"},
        7.0,
    ),
    (
        "429-default-delay",
        Fault("/v1/contacts/*", times=None, status=429),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_RATE_LIMITED",
        {"upstreamStatus": "429"},
        1.0,
    ),
    (
        "503-overloaded",
        Fault("/v1/contacts/*", times=None, status=503, json=error_envelope(1016)),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {"upstreamStatus": "503", "whatsappCode": "1016"},
        1.0,
    ),
    (
        "502-html",
        Fault(
            "/v1/contacts/*",
            times=None,
            status=502,
            body="<html><body>Bad Gateway at 10.0.0.7</body></html>",
            headers={"Content-Type": "text/html"},
        ),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {"upstreamStatus": "502"},
        1.0,
    ),
    (
        "500-internal",
        Fault(
            "/v1/contacts/*",
            times=None,
            status=500,
            json=error_envelope(1014, "stack trace: secret"),
        ),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_INTERNAL_ERROR",
        {"upstreamStatus": "500", "whatsappCode": "1014"},
        None,
    ),
    (
        "418-other",
        Fault("/v1/contacts/*", times=None, status=418),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_ERROR",
        {"upstreamStatus": "418"},
        None,
    ),
    (
        "malformed-200",
        Fault("/v1/contacts/*", times=None, malformed=True),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_BAD_RESPONSE",
        {"upstreamStatus": "200"},
        None,
    ),
    (
        "oversized-200",
        Fault("/v1/contacts/*", times=None, body_size=10 * 1024 * 1024),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_BAD_RESPONSE",
        {"upstreamStatus": "200"},
        None,
    ),
    (
        "dropped-connection",
        Fault("/v1/contacts/*", times=None, drop=True),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {},
        None,
    ),
    (
        "dropped-mid-body",
        Fault("/v1/contacts/*", times=None, drop_mid_body=True),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {},
        None,
    ),
]


@pytest.mark.parametrize(
    ("fault", "code", "reason", "metadata", "retry"),
    [row[1:] for row in UPSTREAM_ERROR_ROWS],
    ids=[row[0] for row in UPSTREAM_ERROR_ROWS],
)
async def test_each_upstream_outcome_becomes_its_status(
    emulator: RunningEmulator,
    gateway: Gateway,
    fault: Fault,
    code: grpc.StatusCode,
    reason: str,
    metadata: dict[str, str],
    retry: float | None,
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(fault)

    outcome = await gateway.get(wa_id)

    assert outcome.code == code, outcome
    assert outcome.reason == reason
    assert outcome.error_infos[0].domain == DOMAIN
    assert outcome.metadata == metadata
    assert outcome.retry_seconds == retry
    for secret in ("secret", "10.0.0.7", "<html", "Bearer", "tok"):
        assert secret not in outcome.message


async def test_a_stalled_answer_is_an_upstream_timeout(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(identity_path(wa_id), stall_after_headers=30))
    async with gateway_factory(upstream_timeout=0.3) as gateway:
        outcome = await gateway.get(wa_id, timeout=10)
    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.reason == "UPSTREAM_TIMEOUT"


async def test_the_callers_deadline_is_deadline_exceeded(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    wa_id = known_contact(emulator)
    emulator.state.add_fault(Fault(identity_path(wa_id), delay=2))
    outcome = await gateway.ack(wa_id, HASH, timeout=0.2)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_unreachable_whatsapp_is_unavailable(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(upstream_url="http://127.0.0.1:9") as gateway:
        outcome = await gateway.get(new_wa_id())
    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.reason == "UPSTREAM_UNAVAILABLE"
    assert "127.0.0.1" not in outcome.message


@pytest.mark.parametrize(
    ("mode", "whatsapp_code"), [("reject", None), ("password_change", "1024"), ("locked", "1031")]
)
async def test_a_failed_login_is_an_auth_failure_and_is_not_retried_at_once(
    emulator: RunningEmulator, gateway: Gateway, mode: str, whatsapp_code: str | None
) -> None:
    emulator.state.update_settings(login_mode=mode)
    wa_id = known_contact(emulator)

    # Concurrent callers share the one login; a caller right after it is within the backoff
    # (at least 0.5 s), whatever the machine's load, so no second login is tried.
    outcomes = list(await asyncio.gather(*(gateway.get(wa_id) for _ in range(5))))
    outcomes.append(await gateway.get(wa_id))

    assert {o.code for o in outcomes} == {grpc.StatusCode.INTERNAL}
    assert {o.reason for o in outcomes} == {"UPSTREAM_AUTH_FAILED"}
    # One caller saw WhatsApp's own refusal; the others, that the login just failed.
    answered = [o for o in outcomes if "upstreamStatus" in o.metadata]
    assert answered
    assert {o.metadata.get("whatsappCode") for o in answered} == {whatsapp_code}
    assert outcomes[-1].retry_seconds is not None  # the backoff says when to try again
    assert emulator.state.count("POST", "/v1/users/login") == 1
    assert emulator.state.count("GET") == 0


async def test_wrong_credentials_are_an_auth_failure(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    async with gateway_factory(upstream_password="wrong-password") as gateway:
        outcome = await gateway.get(known_contact(emulator))
    assert outcome.reason == "UPSTREAM_AUTH_FAILED"
    assert outcome.metadata == {"upstreamStatus": "401", "whatsappCode": "1005"}
    assert "wrong-password" not in outcome.message


# ---------------------------------------------------------------------------- mesh basics


async def test_health_is_serving_for_both_names(gateway: Gateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", "whatsapp.identity.v1.IdentityService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_does_not_depend_on_whatsapp(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(upstream_url="http://127.0.0.1:9") as gateway:
        health = health_pb2_grpc.HealthStub(gateway.channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_identity_service(gateway: Gateway) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for answer in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in answer.list_services_response.service}
        break
    assert "whatsapp.identity.v1.IdentityService" in names
    assert "grpc.health.v1.Health" in names
