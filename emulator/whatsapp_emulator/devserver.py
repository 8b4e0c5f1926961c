"""What ``make run`` starts: the WhatsApp API emulator and a gateway serving two senders.

    python -m whatsapp_emulator.devserver --gateway-port 50051 --emulator-port 9090

One emulator plays both upstreams: the On-Premises API (sender ``15550001111``, the default,
logged in to with the demo credentials) and Infobip's identity API (sender ``447796344125``,
with the demo API key). The gateway reads a real senders file, written to a temporary folder
with the secrets named by ``*_env`` keys, exactly as a deployment would; Ctrl-C (or SIGTERM)
drains the gateway, then stops the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from gateway.app.config import GatewayConfig
from gateway.app.senders import load_senders
from gateway.app.server import serve
from gateway.contract import SERVICE_NAME
from gateway.telemetry.logs import configure_logging
from whatsapp_emulator.emulator import (
    DEFAULT_INFOBIP_API_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    DEMO_CONTACTS,
    RunningEmulator,
)

ONPREM_SENDER = "15550001111"
INFOBIP_SENDER = "447796344125"
# The environment the senders file's *_env keys are read from (a deployment's is its own).
_DEMO_ENVIRONMENT = {
    "DEMO_ONPREM_PASSWORD": DEFAULT_PASSWORD,
    "DEMO_INFOBIP_API_KEY": DEFAULT_INFOBIP_API_KEY,
}


def senders_file(emulator_url: str) -> str:
    """The demo senders file: both senders on the one emulator."""
    return f"""\
# Written by `make run`: two senders, both played by the emulator at {emulator_url}.
default_sender = "{ONPREM_SENDER}"

[[senders]]
number = "{ONPREM_SENDER}"
backend = "onprem"
url = "{emulator_url}"
username = "{DEFAULT_USERNAME}"
password_env = "DEMO_ONPREM_PASSWORD"

[[senders]]
number = "{INFOBIP_SENDER}"
backend = "infobip"
url = "{emulator_url}"
api_key_env = "DEMO_INFOBIP_API_KEY"
"""


def _banner(gateway: str, emulator_url: str, senders: Path) -> str:
    wa_id, contact = next(iter(DEMO_CONTACTS.items()))
    exe = f"{sys.prefix}/bin/identity-gateway"
    return "\n".join(
        [
            f"WhatsApp API emulator: {emulator_url} (demo contacts: {', '.join(DEMO_CONTACTS)})",
            f"Gateway: {gateway} (gRPC, plaintext, server reflection on)",
            f"Senders ({senders}):",
            f"  {ONPREM_SENDER}   onprem  (the default sender)",
            f"  {INFOBIP_SENDER}  infobip",
            "",
            "In another terminal:",
            f"  {exe} get {wa_id} --target {gateway}                         # onprem",
            f"  {exe} get {wa_id} --sender {INFOBIP_SENDER} --target {gateway}  # infobip",
            f"  {exe} ack {wa_id} {contact.hash} --target {gateway}",
            f"  {exe} ack {wa_id} {contact.hash} --sender {INFOBIP_SENDER} --target {gateway}",
            f'  grpcurl -plaintext -d \'{{"wa_id": "{wa_id}", "sender": "{INFOBIP_SENDER}"}}\' '
            f"{gateway} {SERVICE_NAME}/GetIdentity",
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
        with tempfile.TemporaryDirectory(prefix="identity-gateway-run-") as folder:
            path = Path(folder) / "senders.toml"
            path.write_text(senders_file(emulator.url), encoding="utf-8")
            config = GatewayConfig(
                senders=load_senders(path, _DEMO_ENVIRONMENT),
                listen=listen,
                log_level=log_level,
                shutdown_grace=2.0,
            )
            print(_banner(listen, emulator.url, path), flush=True)
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
