"""The ``identity-gateway get`` and ``ack`` commands: a small synchronous gRPC client.

They take a ``grpc.Channel``, so tests drive them through ``grpc_testing`` channels and people
through a real one:

    with grpc.insecure_channel("127.0.0.1:50051") as channel:
        exit_code = run_get(channel, "16315551234", bypass_cache=False, out=sys.stdout,
                            err=sys.stderr)

Success prints the response as JSON (protobuf's canonical JSON mapping) on ``out`` and returns
0. An RPC error prints the status code, message and decoded details on ``err`` and returns 1.
"""

from __future__ import annotations

import json
from typing import IO, Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc

DEFAULT_TIMEOUT = 10.0


def run_get(
    channel: grpc.Channel,
    wa_id: str,
    *,
    bypass_cache: bool,
    out: IO[str],
    err: IO[str],
    sender: str = "",
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Call GetIdentity and print the answer; the process exit code."""
    stub = identity_pb2_grpc.IdentityServiceStub(channel)
    request = identity_pb2.GetIdentityRequest(wa_id=wa_id, bypass_cache=bypass_cache, sender=sender)
    return _call(stub.GetIdentity, request, out=out, err=err, timeout=timeout)


def run_ack(
    channel: grpc.Channel,
    wa_id: str,
    identity_hash: str,
    *,
    out: IO[str],
    err: IO[str],
    sender: str = "",
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Call AcknowledgeIdentity and print the answer; the process exit code."""
    stub = identity_pb2_grpc.IdentityServiceStub(channel)
    request = identity_pb2.AcknowledgeIdentityRequest(
        wa_id=wa_id, hash=identity_hash, sender=sender
    )
    return _call(stub.AcknowledgeIdentity, request, out=out, err=err, timeout=timeout)


def _call(method: Any, request: Any, *, out: IO[str], err: IO[str], timeout: float) -> int:
    try:
        response = method(request, timeout=timeout)
    except grpc.RpcError as error:
        err.write(json.dumps(describe_error(error), indent=2) + "\n")
        return 1
    out.write(
        json.dumps(
            json_format.MessageToDict(
                response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
            indent=2,
        )
        + "\n"
    )
    return 0


def describe_error(error: grpc.RpcError) -> dict[str, Any]:
    """An RPC error as a JSON-ready dict: code, message, and each rich-status detail decoded."""
    call: Any = error  # a grpc.Call as well, for every error a stub raises
    described: dict[str, Any] = {"code": call.code().name, "message": call.details() or ""}
    try:
        status = rpc_status.from_call(call)
    except (ValueError, DecodeError):
        # Details that disagree with the call (a proxy rewrote it) or do not decode: show the
        # code and message, which are still true.
        described["details_error"] = "grpc-status-details-bin is inconsistent or undecodable"
        return described
    if status is None:
        return described
    details: list[dict[str, Any]] = []
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                details.append(
                    {"@type": kind.DESCRIPTOR.full_name, **json_format.MessageToDict(message)}
                )
                break
        else:
            details.append({"@type": detail.type_url})
    described["details"] = details
    return described
