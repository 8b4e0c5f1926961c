"""The baselines of spec §5: a bare ``grpc.aio`` server answering a constant GetIdentityResponse.

Same process model as the gateway (one asyncio process, the same server options), no cache,
no validation, no metrics, no logging: what gRPC itself costs.

With ``--upstream URL`` each call first reads the demo identity from the WhatsApp API with a
bare ``httpx.AsyncClient`` over the gateway's transport (the two parts of a cache miss composed,
with nothing in between), then answers the same constant. The bench compares it with the
bound ``1 / (1/grpc + 1/httpx)``: what composing the parts costs beyond their sum. Its
failures are not counted (h2load sees HTTP statuses only, and this server has no metrics): the
emulator, which it reads, has no faults set in the bench.

    python bench/bare_server.py --port 50061
    python bench/bare_server.py --port 50062 --upstream http://127.0.0.1:9090
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import httpx
from google.protobuf import timestamp_pb2
from pyload import bare_client, bearer_headers
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc

RESPONSE = identity_pb2.GetIdentityResponse(
    identity=identity_pb2.Identity(
        wa_id="16315551234",
        hash="UKD6Y/5SqDU=",
        create_time=timestamp_pb2.Timestamp(seconds=1600132094),
        acknowledged=False,
    ),
    cache_hit=True,
    fetch_time=timestamp_pb2.Timestamp(seconds=1700000000),
)


class ConstantIdentityService(identity_pb2_grpc.IdentityServiceServicer):  # type: ignore[misc]
    async def GetIdentity(
        self, request: identity_pb2.GetIdentityRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetIdentityResponse:
        return RESPONSE


class ComposedIdentityService(identity_pb2_grpc.IdentityServiceServicer):  # type: ignore[misc]
    """Reads the identity upstream on every call, then answers the constant."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self._client = client
        self._headers = headers

    async def GetIdentity(
        self, request: identity_pb2.GetIdentityRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetIdentityResponse:
        response = await self._client.get(
            f"/v1/contacts/{request.wa_id}/identity", headers=self._headers
        )
        response.json()
        return RESPONSE


async def main(port: int, upstream: str | None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    client = None
    if upstream is None:
        servicer: identity_pb2_grpc.IdentityServiceServicer = ConstantIdentityService()
    else:
        # As many connections as the gateway's default --upstream-max-in-flight.
        client = bare_client("gateway", upstream, 8)
        servicer = ComposedIdentityService(client, await bearer_headers(client))
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)
    if client is not None:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="WhatsApp API URL: read the identity on every call")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.upstream))
