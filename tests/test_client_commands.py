"""The ``get`` and ``ack`` client commands, driven through a scripted ``grpc_testing`` channel.

Each test runs the command in a worker thread, takes the RPC it made from the testing channel,
checks the request, and answers it with a response or a (rich) error status.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc_testing
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from whatsapp.identity.v1 import identity_pb2

from gateway.app.client import run_ack, run_get

SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
GET_IDENTITY = SERVICE.methods_by_name["GetIdentity"]
ACKNOWLEDGE_IDENTITY = SERVICE.methods_by_name["AcknowledgeIdentity"]
WA_ID = "16315551234"
HASH = "UKD6Y/5SqDU="
DOMAIN = "identity.whatsapp.example"
RESULT_WAIT = 20.0  # seconds; a hang guard, not a timing assertion


class Outputs:
    """Where a command writes: fresh StringIO streams."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()


@pytest.fixture
def channel() -> Any:
    return grpc_testing.channel(
        identity_pb2.DESCRIPTOR.services_by_name.values(), grpc_testing.strict_real_time()
    )


@pytest.fixture
def pool() -> Iterator[futures.ThreadPoolExecutor]:
    with futures.ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def start_get(
    pool: futures.ThreadPoolExecutor,
    channel: Any,
    outputs: Outputs,
    *,
    wa_id: str = WA_ID,
    bypass_cache: bool = False,
) -> futures.Future[int]:
    return pool.submit(
        run_get, channel, wa_id, bypass_cache=bypass_cache, out=outputs.out, err=outputs.err
    )


def start_ack(
    pool: futures.ThreadPoolExecutor,
    channel: Any,
    outputs: Outputs,
    *,
    wa_id: str = WA_ID,
    identity_hash: str = HASH,
) -> futures.Future[int]:
    return pool.submit(run_ack, channel, wa_id, identity_hash, out=outputs.out, err=outputs.err)


def rich_status(
    code: int, message: str, *details: Any
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(code, details, trailing metadata) of a google.rpc.Status carrying ``details``."""
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    converted = rpc_status.to_status(status)
    return converted.code, converted.details, tuple(converted.trailing_metadata)


def error_info(reason: str, **metadata: str) -> Any:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)


def identity_response() -> identity_pb2.GetIdentityResponse:
    return identity_pb2.GetIdentityResponse(
        identity=identity_pb2.Identity(
            wa_id=WA_ID,
            hash=HASH,
            create_time={"seconds": 1_700_000_000, "nanos": 123_000_000},
            acknowledged=True,
        ),
        cache_hit=True,
        fetch_time={"seconds": 1_700_000_100},
    )


# --- get ------------------------------------------------------------------------------------


def test_get_sends_the_wa_id_without_bypass_cache_by_default(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs)

    _metadata, request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(identity_response(), (), grpc.StatusCode.OK, "")

    assert result.result(timeout=RESULT_WAIT) == 0
    assert isinstance(request, identity_pb2.GetIdentityRequest)
    assert request.wa_id == WA_ID
    assert request.bypass_cache is False


def test_get_with_bypass_cache_asks_the_gateway_to_bypass_it(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs, wa_id="447700900123", bypass_cache=True)

    _metadata, request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(identity_response(), (), grpc.StatusCode.OK, "")

    assert result.result(timeout=RESULT_WAIT) == 0
    assert request.wa_id == "447700900123"
    assert request.bypass_cache is True


def test_get_prints_the_identity_as_json_on_stdout_and_exits_0(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs)

    _metadata, _request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(identity_response(), (), grpc.StatusCode.OK, "")

    assert result.result(timeout=RESULT_WAIT) == 0
    printed = json.loads(outputs.out.getvalue())
    assert printed["identity"]["wa_id"] == WA_ID
    assert printed["identity"]["hash"] == HASH
    assert printed["identity"]["create_time"] == "2023-11-14T22:13:20.123Z"
    assert printed["identity"]["acknowledged"] is True
    assert printed["cache_hit"] is True
    assert printed["fetch_time"] == "2023-11-14T22:15:00Z"
    assert outputs.err.getvalue() == ""


def test_get_error_prints_code_message_and_error_info_on_stderr_and_exits_1(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs)
    code, details, trailing = rich_status(
        code_pb2.NOT_FOUND,
        "WhatsApp does not know 16315551234",
        error_info("CONTACT_NOT_FOUND", wa_id=WA_ID),
    )

    _metadata, _request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(identity_pb2.GetIdentityResponse(), trailing, code, details)

    assert result.result(timeout=RESULT_WAIT) == 1
    printed = json.loads(outputs.err.getvalue())
    assert printed["code"] == "NOT_FOUND"
    assert printed["message"] == "WhatsApp does not know 16315551234"
    assert printed["details"] == [
        {
            "@type": "google.rpc.ErrorInfo",
            "reason": "CONTACT_NOT_FOUND",
            "domain": DOMAIN,
            "metadata": {"wa_id": WA_ID},
        }
    ]
    assert outputs.out.getvalue() == ""


def test_get_error_decodes_retry_info_beside_error_info(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs)
    code, details, trailing = rich_status(
        code_pb2.RESOURCE_EXHAUSTED,
        "rate limited by WhatsApp",
        error_info("UPSTREAM_RATE_LIMITED"),
        error_details_pb2.RetryInfo(retry_delay={"seconds": 2}),
    )

    _metadata, _request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(identity_pb2.GetIdentityResponse(), trailing, code, details)

    assert result.result(timeout=RESULT_WAIT) == 1
    printed = json.loads(outputs.err.getvalue())
    assert printed["code"] == "RESOURCE_EXHAUSTED"
    assert printed["details"][0]["reason"] == "UPSTREAM_RATE_LIMITED"
    assert printed["details"][1] == {"@type": "google.rpc.RetryInfo", "retryDelay": "2s"}


def test_get_error_decodes_bad_request_field_violations(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs, wa_id="not-a-number")
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="wa_id", description="must be 1 to 20 ASCII digits"
    )
    code, details, trailing = rich_status(
        code_pb2.INVALID_ARGUMENT,
        "invalid wa_id",
        error_info("INVALID_WA_ID"),
        error_details_pb2.BadRequest(field_violations=[violation]),
    )

    _metadata, request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(identity_pb2.GetIdentityResponse(), trailing, code, details)

    assert result.result(timeout=RESULT_WAIT) == 1
    assert request.wa_id == "not-a-number"
    printed = json.loads(outputs.err.getvalue())
    assert printed["code"] == "INVALID_ARGUMENT"
    assert printed["details"][1]["@type"] == "google.rpc.BadRequest"
    assert printed["details"][1]["fieldViolations"] == [
        {"field": "wa_id", "description": "must be 1 to 20 ASCII digits"}
    ]


def test_get_error_without_rich_status_prints_code_and_message_only(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_get(pool, channel, outputs)

    _metadata, _request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(
        identity_pb2.GetIdentityResponse(), (), grpc.StatusCode.UNAVAILABLE, "upstream down"
    )

    assert result.result(timeout=RESULT_WAIT) == 1
    printed = json.loads(outputs.err.getvalue())
    assert printed == {"code": "UNAVAILABLE", "message": "upstream down"}
    assert outputs.out.getvalue() == ""


def test_get_error_whose_rich_status_disagrees_with_the_call_still_exits_1(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    """A status proto that does not match the call (e.g. a proxy rewrote the message)."""
    outputs = Outputs()
    result = start_get(pool, channel, outputs)
    _code, _details, trailing = rich_status(
        code_pb2.NOT_FOUND, "original message", error_info("CONTACT_NOT_FOUND")
    )

    _metadata, _request, rpc = channel.take_unary_unary(GET_IDENTITY)
    rpc.terminate(
        identity_pb2.GetIdentityResponse(), trailing, grpc.StatusCode.NOT_FOUND, "rewritten"
    )

    assert result.result(timeout=RESULT_WAIT) == 1
    printed = json.loads(outputs.err.getvalue())
    assert printed["code"] == "NOT_FOUND"
    assert printed["message"] == "rewritten"


# --- ack ------------------------------------------------------------------------------------


def test_ack_sends_the_wa_id_and_hash_and_exits_0(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_ack(pool, channel, outputs)

    _metadata, request, rpc = channel.take_unary_unary(ACKNOWLEDGE_IDENTITY)
    rpc.terminate(identity_pb2.AcknowledgeIdentityResponse(), (), grpc.StatusCode.OK, "")

    assert result.result(timeout=RESULT_WAIT) == 0
    assert isinstance(request, identity_pb2.AcknowledgeIdentityRequest)
    assert request.wa_id == WA_ID
    assert request.hash == HASH
    assert json.loads(outputs.out.getvalue()) == {}
    assert outputs.err.getvalue() == ""


def test_ack_hash_mismatch_prints_the_error_info_and_exits_1(
    channel: Any, pool: futures.ThreadPoolExecutor
) -> None:
    outputs = Outputs()
    result = start_ack(pool, channel, outputs, identity_hash="Su9l2C1YsAk=")
    code, details, trailing = rich_status(
        code_pb2.FAILED_PRECONDITION,
        "the hash is not the user's current one",
        error_info("HASH_MISMATCH", wa_id=WA_ID),
    )

    _metadata, request, rpc = channel.take_unary_unary(ACKNOWLEDGE_IDENTITY)
    rpc.terminate(identity_pb2.AcknowledgeIdentityResponse(), trailing, code, details)

    assert result.result(timeout=RESULT_WAIT) == 1
    assert request.hash == "Su9l2C1YsAk="
    printed = json.loads(outputs.err.getvalue())
    assert printed["code"] == "FAILED_PRECONDITION"
    assert printed["message"] == "the hash is not the user's current one"
    assert printed["details"] == [
        {
            "@type": "google.rpc.ErrorInfo",
            "reason": "HASH_MISMATCH",
            "domain": DOMAIN,
            "metadata": {"wa_id": WA_ID},
        }
    ]
    assert outputs.out.getvalue() == ""


# --- both -----------------------------------------------------------------------------------

Starter = Callable[[futures.ThreadPoolExecutor, Any, Outputs], "futures.Future[int]"]
COMMANDS: list[tuple[str, Starter, Any, Any]] = [
    ("get", start_get, GET_IDENTITY, identity_pb2.GetIdentityResponse()),
    ("ack", start_ack, ACKNOWLEDGE_IDENTITY, identity_pb2.AcknowledgeIdentityResponse()),
]


@pytest.mark.parametrize(
    ("start", "method", "empty_response"),
    [command[1:] for command in COMMANDS],
    ids=[command[0] for command in COMMANDS],
)
@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (code_pb2.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (code_pb2.INTERNAL, "UPSTREAM_AUTH_FAILED"),
    ],
)
def test_each_command_reports_the_status_code_name_and_reason(
    channel: Any,
    pool: futures.ThreadPoolExecutor,
    start: Starter,
    method: Any,
    empty_response: Any,
    code: int,
    reason: str,
) -> None:
    outputs = Outputs()
    result = start(pool, channel, outputs)
    status_code, details, trailing = rich_status(code, f"failed: {reason}", error_info(reason))

    _metadata, _request, rpc = channel.take_unary_unary(method)
    rpc.terminate(empty_response, trailing, status_code, details)

    assert result.result(timeout=RESULT_WAIT) == 1
    printed = json.loads(outputs.err.getvalue())
    assert printed["code"] == status_code.name
    assert printed["message"] == f"failed: {reason}"
    assert printed["details"][0]["reason"] == reason
    assert printed["details"][0]["domain"] == DOMAIN
