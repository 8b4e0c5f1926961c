"""Hostile callers and a misbehaving WhatsApp: each ends in its status, nothing leaks, and the
gateway stays up (issue: resilience and security)."""

from __future__ import annotations

import grpc
import pytest
from whatsapp.identity.v1 import identity_pb2
from whatsapp_emulator.emulator import Fault, RunningEmulator

from tests.conftest import Gateway, GatewayFactory, Outcome, call, new_wa_id

pytestmark = pytest.mark.integration

HASH = "UKD6Y/5SqDU="
SERVICE = "/whatsapp.identity.v1.IdentityService"

PATH_INJECTIONS = [
    "../users/login",
    "16315551234/../../users/login",
    "1234%2F5678",
    "%2e%2e%2fusers%2flogin",
    "16315551234?admin=1",
    "16315551234#x",
    "16315551234\x00",
    "16315551234\n",
    " 16315551234",
    "0x16315551234",
    "\u0661\u0662\u0663\u0664\u0665\u0666\u0667",  # Arabic-Indic digits
    "\uff11\uff16\uff13\uff11\uff15\uff15\uff15\uff11",  # fullwidth digits
    "+",
    "++16315551234",
    "9" * 1000,
]


async def assert_still_serving(emulator: RunningEmulator, gateway: Gateway) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    outcome = await gateway.get(wa_id)
    assert outcome.ok, outcome


@pytest.mark.parametrize("wa_id", PATH_INJECTIONS)
async def test_path_injection_attempts_never_reach_whatsapp(
    emulator: RunningEmulator, gateway: Gateway, wa_id: str
) -> None:
    for outcome in (await gateway.get(wa_id), await gateway.ack(wa_id, HASH)):
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert outcome.reason == "INVALID_WA_ID"
        assert "login" not in outcome.message
    assert emulator.state.count() == 0


async def test_an_oversized_request_is_refused_and_the_server_stays_up(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    outcome = await gateway.get("1" * 100_000)  # above the 64 KiB request cap
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert emulator.state.count() == 0
    await assert_still_serving(emulator, gateway)


async def test_an_oversized_hash_is_invalid(emulator: RunningEmulator, gateway: Gateway) -> None:
    outcome = await gateway.ack(new_wa_id(), "A" * 10_000)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.reason == "INVALID_HASH"
    assert emulator.state.count() == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x05\xff\xfe\xfd\xfc\xfb",  # field 1 (wa_id) holding invalid UTF-8
        b"\x0a\xff\xff\xff\xff\x0f",  # a length running past the end
        b"\xff\xff\xff",  # not protobuf at all
    ],
    ids=["invalid-utf8", "truncated", "garbage"],
)
async def test_a_request_that_is_not_protobuf_is_invalid_argument(
    emulator: RunningEmulator, gateway: Gateway, payload: bytes
) -> None:
    raw = gateway.channel.unary_unary(
        f"{SERVICE}/GetIdentity",
        request_serializer=lambda data: data,
        response_deserializer=identity_pb2.GetIdentityResponse.FromString,
    )
    outcome = await call(raw, payload)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.reason == "MALFORMED_REQUEST"
    assert [v.field for v in outcome.bad_requests[0].field_violations] == ["request"]
    await assert_still_serving(emulator, gateway)


async def _get_with(emulator: RunningEmulator, gateway: Gateway, **fault: object) -> Outcome:
    """Read a contact whose every upstream answer is ``Fault(**fault)``."""
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    emulator.state.add_fault(Fault(f"/v1/contacts/{wa_id}/identity", times=None, **fault))  # type: ignore[arg-type]
    return await gateway.get(wa_id)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ('{"contacts": {"hash": 123, "created_timestamp": 1, "acknowledged": true}}', "hash"),
        ('{"contacts": {"hash": "x", "created_timestamp": "soon", "acknowledged": true}}', "ts"),
        ('{"contacts": {"hash": "x", "created_timestamp": 1, "acknowledged": "maybe"}}', "ack"),
        ('{"contacts": []}', "empty array"),
        ('{"contacts": null}', "null"),
        ("[1, 2, 3]", "array"),
        ('"just a string"', "string"),
        ('{"contacts": {"hash": "\\ud800", "created_timestamp": 1, "acknowledged": true}}', "utf"),
    ],
)
async def test_a_200_with_wrong_types_is_a_bad_response(
    emulator: RunningEmulator, gateway: Gateway, body: str, what: str
) -> None:
    outcome = await _get_with(emulator, gateway, status=200, body=body)
    assert outcome.code == grpc.StatusCode.INTERNAL, what
    assert outcome.reason == "UPSTREAM_BAD_RESPONSE"
    assert body not in outcome.message


async def test_slow_headers_are_an_upstream_timeout(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    async with gateway_factory(upstream_timeout=0.3) as gateway:
        outcome = await _get_with(emulator, gateway, delay=3)
        await assert_still_serving(emulator, gateway)
    assert outcome.reason == "UPSTREAM_TIMEOUT"


async def test_a_401_storm_does_not_log_in_for_every_request(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    await assert_still_serving(emulator, gateway)  # logged in once
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    emulator.state.add_fault(Fault("/v1/contacts/*", status=401, times=None))

    outcomes = [await gateway.get(wa_id, bypass_cache=True) for _ in range(30)]

    assert {o.reason for o in outcomes} == {"UPSTREAM_AUTH_FAILED"}
    # one re-login for the first 401; its token refused too, the session backs off
    assert emulator.state.count("POST", "/v1/users/login") <= 3
    assert emulator.state.count("GET") < 30 + 3
    emulator.state.clear_faults()
    for outcome in outcomes:
        assert "Bearer" not in outcome.message


async def test_nothing_of_the_upstream_body_reaches_the_caller(
    emulator: RunningEmulator, gateway: Gateway
) -> None:
    secret_body = (
        '{"errors": [{"code": 1014, "title": "Internal error", "details": "db password=hunter2 '
        'at /srv/app.py line 42"}], "trace": "Traceback (most recent call last)"}'
    )
    outcome = await _get_with(emulator, gateway, status=500, body=secret_body)
    assert outcome.reason == "UPSTREAM_INTERNAL_ERROR"
    for leaked in ("hunter2", "/srv/app.py", "Traceback", "password"):
        assert leaked not in outcome.message
        assert all(leaked not in value for value in outcome.metadata.values())
