"""The contract from another language: clients/node/client.js against a real gateway.

The Node client loads the repo's identity.proto with @grpc/proto-loader and decodes the
``grpc-status-details-bin`` trailer itself, so these tests prove that a non-Python caller can
read and acknowledge identities and act on the ErrorInfo (spec 2, 4.5).

The gateway runs in this test's event loop, so the client runs through
``asyncio.create_subprocess_exec``: a blocking ``subprocess.run`` would stall the very server it
is calling.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from whatsapp_emulator.emulator import RunningEmulator

from tests.conftest import Gateway, new_wa_id

pytestmark = pytest.mark.integration

NODE_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
CLIENT = NODE_CLIENT_DIR / "client.js"
HASH = "UKD6Y/5SqDU="
DOMAIN = "identity-gateway.whatsapp"  # fixed by spec 4.5: callers in any language match it
CREATED_MS = 1600132094000
RUN_TIMEOUT = 30.0  # a hang guard: node starts and answers in well under a second

NodeResult = tuple[int, dict[str, Any]]
RunNode = Callable[..., Awaitable[NodeResult]]


def identity_path(wa_id: str) -> str:
    return f"/v1/contacts/{wa_id}/identity"


def parse_rfc3339(text: str) -> dt.datetime:
    # protobuf's JSON form may carry 9 fractional digits; datetime keeps 6.
    whole, _, rest = text.removesuffix("Z").partition(".")
    micros = rest[:6].ljust(6, "0") if rest else "000000"
    return dt.datetime.fromisoformat(f"{whole}.{micros}+00:00")


@pytest.fixture
def run_node(gateway: Gateway) -> RunNode:
    """Run ``node clients/node/client.js --target <the gateway> ARGS``; (exit code, its JSON)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: install Node.js 20 or newer to test clients/node")
    if not (NODE_CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(
            "clients/node/node_modules is missing: run `make test`, or "
            "`cd clients/node && npm ci` once"
        )
    target = f"127.0.0.1:{gateway.server.port}"

    async def run(*args: str) -> NodeResult:
        process = await asyncio.create_subprocess_exec(
            node,
            str(CLIENT),
            "--target",
            target,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.communicate()
            raise
        assert process.returncode is not None
        context = f"exit {process.returncode}\nstdout: {stdout!r}\nstderr: {stderr!r}"
        try:
            output = json.loads(stdout)
        except json.JSONDecodeError:
            pytest.fail(f"the client did not print one JSON object: {context}")
        assert isinstance(output, dict), context
        return process.returncode, output

    return run


async def test_get_reads_an_identity_then_serves_it_from_the_cache(
    emulator: RunningEmulator, run_node: RunNode
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH, created_timestamp=CREATED_MS, acknowledged=False)

    before = dt.datetime.now(dt.UTC)
    first_code, first = await run_node("get", "+" + wa_id)
    second_code, second = await run_node("get", wa_id)

    assert (first_code, second_code) == (0, 0), (first, second)
    assert first["identity"] == {
        "wa_id": wa_id,
        "hash": HASH,
        "create_time": "2020-09-15T01:08:14Z",  # CREATED_MS, as RFC 3339
        "acknowledged": False,
    }
    assert first["cache_hit"] is False
    fetch_time = parse_rfc3339(first["fetch_time"])
    assert before - dt.timedelta(seconds=1) <= fetch_time <= dt.datetime.now(dt.UTC)
    # The second read proves cache_hit is decoded, not defaulted.
    assert second["cache_hit"] is True
    assert second["fetch_time"] == first["fetch_time"]
    assert emulator.state.count("GET", identity_path(wa_id)) == 1


async def test_ack_acknowledges_the_identity_upstream(
    emulator: RunningEmulator, run_node: RunNode
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH, acknowledged=False)

    code, output = await run_node("ack", wa_id, HASH)

    assert (code, output) == (0, {})
    contact = emulator.state.identity(wa_id)
    assert contact is not None
    assert contact.acknowledged is True
    assert emulator.state.count("PUT", identity_path(wa_id)) == 1

    read_code, read = await run_node("get", wa_id)
    assert read_code == 0, read
    assert read["identity"]["acknowledged"] is True


async def test_not_found_carries_the_error_info(
    emulator: RunningEmulator, run_node: RunNode
) -> None:
    wa_id = new_wa_id()  # never stored in the emulator

    code, output = await run_node("get", wa_id)

    assert code == 1, output
    assert output["code"] == "NOT_FOUND"
    assert isinstance(output["message"], str)
    assert output["message"]
    assert output["errorInfo"] == {
        "reason": "CONTACT_NOT_FOUND",
        "domain": DOMAIN,
        "metadata": {"upstreamStatus": "404", "whatsappCode": "1006"},
    }


async def test_a_stale_hash_is_a_hash_mismatch(
    emulator: RunningEmulator, run_node: RunNode
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)

    code, output = await run_node("ack", wa_id, "c3RhbGVIYXNo")

    assert code == 1, output
    assert output["code"] == "FAILED_PRECONDITION"
    assert output["errorInfo"]["reason"] == "HASH_MISMATCH"
    assert output["errorInfo"]["domain"] == DOMAIN
    contact = emulator.state.identity(wa_id)
    assert contact is not None
    assert contact.acknowledged is False
