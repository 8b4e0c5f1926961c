"""Caller authorization and the acknowledge audit, through a real server and the emulator."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from whatsapp_emulator.emulator import RunningEmulator

from gateway.serving.policy import parse_policy, token_digest
from tests.conftest import GatewayFactory, new_wa_id

pytestmark = pytest.mark.integration

HASH = "UKD6Y/5SqDU="
READER_TOKEN = "reader-token-5d1f0c"
VERIFIER_TOKEN = "verifier-token-93be2a"
VERIFIER_SPIFFE = "spiffe://cluster.local/ns/messaging/sa/verifier"
POLICY = {
    "trust_xfcc": True,
    "callers": [
        {
            "name": "reader",
            "token_sha256": [token_digest(READER_TOKEN)],
            "methods": ["GetIdentity"],
        },
        {
            "name": "verifier",
            "token_sha256": [token_digest(VERIFIER_TOKEN)],
            "spiffe_ids": [VERIFIER_SPIFFE],
            "methods": ["*"],
        },
    ],
}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_callers_get_only_the_methods_their_policy_grants(
    emulator: RunningEmulator, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    caplog.set_level(logging.INFO, logger="gateway.audit")
    async with gateway_factory(authz_policy=parse_policy(json.dumps(POLICY))) as gateway:
        anonymous = await gateway.get(wa_id)
        unknown = await gateway.get(wa_id, metadata=bearer("made-up"))
        read = await gateway.get(wa_id, metadata=bearer(READER_TOKEN))
        refused = await gateway.ack(wa_id, HASH, metadata=bearer(READER_TOKEN))
        allowed = await gateway.ack(wa_id, HASH, metadata=bearer(VERIFIER_TOKEN))
        xfcc = f"By=spiffe://cluster.local/ns/id/sa/gw;Hash=ab12;URI={VERIFIER_SPIFFE}"
        by_mesh = await gateway.ack(wa_id, HASH, metadata=(("x-forwarded-client-cert", xfcc),))

    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    assert anonymous.reason == "CALLER_UNAUTHENTICATED"
    assert unknown.code == grpc.StatusCode.UNAUTHENTICATED
    assert "made-up" not in unknown.message
    assert read.ok, read
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.reason == "CALLER_NOT_PERMITTED"
    assert refused.metadata == {"method": "AcknowledgeIdentity", "caller": "reader"}
    assert allowed.ok, allowed
    assert by_mesh.ok, by_mesh
    assert emulator.state.count("PUT") == 2  # the refused acknowledge never reached WhatsApp

    audits = [r for r in caplog.records if r.name == "gateway.audit"]
    lines = [(r.fields["caller"], r.fields["outcome"]) for r in audits]  # type: ignore[attr-defined]
    assert lines == [("reader", "CALLER_NOT_PERMITTED"), ("verifier", "OK"), ("verifier", "OK")]
    for record in audits:
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["wa_id"] == "*" * (len(wa_id) - 4) + wa_id[-4:]
        assert fields["hash"] == HASH
        assert READER_TOKEN not in record.getMessage() + json.dumps(fields)


async def test_without_a_policy_every_acknowledge_is_still_audited(
    emulator: RunningEmulator, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    caplog.set_level(logging.INFO, logger="gateway.audit")
    async with gateway_factory() as gateway:
        assert (await gateway.ack(wa_id, HASH)).ok
        assert (await gateway.ack(wa_id, "c3RhbGU=")).code == grpc.StatusCode.FAILED_PRECONDITION
        assert (await gateway.ack("bad", HASH)).code == grpc.StatusCode.INVALID_ARGUMENT
    outcomes = [
        (r.fields["caller"], r.fields["outcome"])  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "gateway.audit"
    ]
    assert outcomes == [
        ("anonymous", "OK"),
        ("anonymous", "HASH_MISMATCH"),
        ("anonymous", "INVALID_WA_ID"),
    ]


def test_a_bad_policy_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "authz.json"
    policy.write_text(json.dumps({"callers": [{"name": "x", "methods": ["Nope"]}]}))
    command = [
        str(Path(sys.executable).parent / "identity-gateway"),
        "serve",
        "--upstream-url",
        "http://127.0.0.1:9",
        "--upstream-token-file",
        str(policy),  # any readable file will do as a token here
        "--authz-policy",
        str(policy),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=20, env={})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--authz-policy" in done.stderr


async def test_a_cached_identity_is_not_served_to_a_caller_the_policy_refuses(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    """The cache-hit short path answers without reading metadata, so it must not be installed
    while a policy is: an anonymous or unknown caller asking for a cached identity is refused."""
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    async with gateway_factory(authz_policy=parse_policy(json.dumps(POLICY))) as gateway:
        first = await gateway.get(wa_id, metadata=bearer(READER_TOKEN))
        cached = await gateway.get(wa_id, metadata=bearer(READER_TOKEN))
        anonymous = await gateway.get(wa_id)
        unknown = await gateway.get(wa_id, metadata=bearer("made-up"))

    assert first.ok
    assert cached.ok
    assert cached.response.cache_hit
    assert (anonymous.code, anonymous.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )
    assert (unknown.code, unknown.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )
