"""What ``make run`` starts: the WhatsApp API emulator and the gateway, together, on loopback.

    python -m whatsapp_emulator.devserver --gateway-port 50051 --emulator-port 9090

The gateway logs in to the emulator with its demo credentials, exactly as it would log in to a
real WhatsApp Business API; Ctrl-C (or SIGTERM) drains the gateway, then stops the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.app.config import GatewayConfig
from gateway.app.server import serve
from gateway.contract import SERVICE_NAME
from gateway.telemetry.logs import configure_logging
from whatsapp_emulator.emulator import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    DEMO_CONTACTS,
    RunningEmulator,
)


def _banner(gateway: str, emulator_url: str) -> str:
    wa_id, contact = next(iter(DEMO_CONTACTS.items()))
    exe = f"{sys.prefix}/bin/identity-gateway"
    return "\n".join(
        [
            f"WhatsApp API emulator: {emulator_url} (demo contacts: {', '.join(DEMO_CONTACTS)})",
            f"Gateway: {gateway} (gRPC, plaintext, server reflection on)",
            "",
            "In another terminal:",
            f"  {exe} get {wa_id} --target {gateway}",
            f"  {exe} ack {wa_id} {contact.hash} --target {gateway}",
            f'  grpcurl -plaintext -d \'{{"wa_id": "{wa_id}"}}\' {gateway} '
            f"{SERVICE_NAME}/GetIdentity",
            f"  curl -X PUT {emulator_url}/_emulator/contacts/{wa_id} "
            '-d \'{"hash": "bmV3SGFzaA=="}\'   # change the identity',
            "",
            "Logs follow (JSON lines on stderr). Stop with Ctrl-C.",
            "",
        ]
    )


async def run(gateway_port: int, emulator_port: int, log_level: str) -> None:
    async with RunningEmulator("127.0.0.1", emulator_port) as emulator:
        listen = f"127.0.0.1:{gateway_port}"
        config = GatewayConfig(
            upstream_url=emulator.url,
            listen=listen,
            upstream_username=DEFAULT_USERNAME,
            upstream_password=DEFAULT_PASSWORD,
            log_level=log_level,
            shutdown_grace=2.0,
        )
        print(_banner(listen, emulator.url), flush=True)
        await serve(config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway-port", type=int, default=50051)
    parser.add_argument("--emulator-port", type=int, default=9090)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    configure_logging(args.log_level)
    try:
        asyncio.run(run(args.gateway_port, args.emulator_port, args.log_level))
    except OSError as error:
        print(
            f"cannot start: {error} (choose other ports with GATEWAY_PORT=... "
            "EMULATOR_PORT=... make run)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
