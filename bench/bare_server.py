"""The baseline of spec §5: a bare ``grpc.aio`` server answering a constant GetIdentityResponse.

Same process model as the gateway (one asyncio process, the same server options), no cache,
no validation, no metrics, no logging: what gRPC itself costs.

    python bench/bare_server.py --port 50061
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from google.protobuf import timestamp_pb2
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


async def main(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(ConstantIdentityService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
