"""The ``identity-gateway`` command: ``serve``, ``emulator``, ``get`` and ``ack``.

This is the only module that reads the environment. Every ``serve`` flag can also be set as
``IDENTITY_GATEWAY_<FLAG_IN_UPPER_SNAKE>``; a flag given on the command line wins. Secrets are
never flags: the upstream password comes from ``IDENTITY_GATEWAY_UPSTREAM_PASSWORD`` or
``--upstream-password-file``, a static token from ``IDENTITY_GATEWAY_UPSTREAM_TOKEN`` or
``--upstream-token-file``.

Bad configuration prints one line on stderr and exits with status 2 before anything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway import __version__
from gateway.app import settings
from gateway.app.config import ConfigError, GatewayConfig, split_host_port
from gateway.app.secrets import read_secret
from gateway.app.senders import load_senders
from gateway.app.settings import env_name
from gateway.app.startup import prepare, read_policy
from gateway.telemetry.logs import configure_logging

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and no abbreviated flags: an abbreviation would let
    ``--upstream-password SECRET`` pass for ``--upstream-password-file`` and echo the secret."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            # Name the unknown flags only: the values after them may be secrets.
            flags = [w.split("=", 1)[0] for w in message[len(prefix) :].split() if w[:1] == "-"]
            message = prefix + (" ".join(flags) or "(values not shown)")
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="identity-gateway",
        description="gRPC gateway over the WhatsApp Business API's contact identity endpoints.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Every flag can also be set as IDENTITY_GATEWAY_<FLAG>.",
    )
    settings.add_arguments(serve)

    emulator = commands.add_parser("emulator", help="run the bundled WhatsApp API emulator")
    emulator.add_argument("--listen", default="127.0.0.1:9090", help="HOST:PORT (127.0.0.1:9090)")
    emulator.add_argument("--username", default="admin", help="login user (admin)")
    emulator.add_argument(
        "--token-lifetime", type=float, default=7 * 24 * 3600.0, help="seconds (7 days)"
    )
    emulator.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate")
    emulator.add_argument("--tls-key", type=Path, help="the certificate's private key")
    emulator.add_argument(
        "--webhook-url",
        help="POST a user_identity_changed webhook here when a contact's identity changes "
        "(with Authorization: Bearer $IDENTITY_GATEWAY_EMULATOR_WEBHOOK_SECRET when set)",
    )
    emulator.add_argument(
        "--synthetic-contacts",
        action="store_true",
        help="answer every digit-only wa_id with a stable made-up identity (benchmarks)",
    )

    get = commands.add_parser("get", help="read an identity through a running gateway")
    get.add_argument("wa_id")
    get.add_argument("--bypass-cache", action="store_true", help="read from WhatsApp")
    ack = commands.add_parser("ack", help="acknowledge an identity through a running gateway")
    ack.add_argument("wa_id")
    ack.add_argument("hash")
    for client in (get, ack):
        client.add_argument(
            "--target", default=DEFAULT_TARGET, help=f"HOST:PORT ({DEFAULT_TARGET})"
        )
        client.add_argument(
            "--sender",
            default="",
            help="the business number to go through (default: the gateway's default sender)",
        )
        client.add_argument(
            "--ca-file", type=Path, help="use TLS, trusting the gateway's certificate to this CA"
        )
        client.add_argument(
            "--cert-file", type=Path, help="client certificate for mutual TLS (with --ca-file)"
        )
        client.add_argument("--key-file", type=Path, help="the client certificate's private key")
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> GatewayConfig:
    """The serve configuration from flags, then the environment, then defaults; secret files
    and the authorization policy are read here, once."""
    values = settings.read(args, environ)
    senders_path = values["senders"]
    senders = None
    if isinstance(senders_path, Path):
        _refuse_flag_mode_sender(values, environ)  # before any file is read
        senders = load_senders(senders_path, environ)
    password = _secret(values["upstream-password-file"], environ, "upstream-password")
    token = _secret(values["upstream-token-file"], environ, "upstream-token")
    if senders is None and values["upstream-username"] is None:
        password = None  # a password alone means nothing; token mode ignores it
    policy_path = values["authz-policy"]
    config_values = {
        setting.field: values[setting.flag]
        for setting in settings.SETTINGS
        if setting.in_config and values[setting.flag] is not None
    }
    config_values["upstream_url"] = str(values["upstream-url"] or "")
    config_values["log_level"] = str(values["log-level"]).lower()
    return GatewayConfig(
        **config_values,
        upstream_password=password,
        upstream_token=token,
        webhook_secret=_secret(values["webhook-secret-file"], environ, "webhook-secret"),
        senders=senders,
        authz_policy=read_policy(policy_path) if isinstance(policy_path, Path) else None,
    )


def _refuse_flag_mode_sender(values: Mapping[str, object], environ: Mapping[str, str]) -> None:
    """With --senders, refuse what would describe flag mode's sender, before any file is read."""
    for flag in settings.FLAG_MODE_ONLY:
        if values[flag] not in (None, False, ""):
            raise settings.flag_mode_conflict(f"--{flag} (or {env_name(flag)})")
    for secret, _ in settings.SECRET_VARIABLES:
        if environ.get(env_name(secret)):
            raise settings.flag_mode_conflict(env_name(secret))


def _secret(path: object, environ: Mapping[str, str], variable: str) -> str | None:
    """A secret from its file (flag or environment), else from its environment variable."""
    if isinstance(path, Path):
        return read_secret(path)
    return environ.get(env_name(variable)) or None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``identity-gateway`` and ``python -m gateway``; returns the exit status."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "serve":
        return _serve(args, env)
    if args.command == "emulator":
        return _emulator(args, env)
    try:
        tls = _client_tls(args)
    except ConfigError as error:
        print(f"identity-gateway {args.command}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    # grpc is imported only where it is used: `serve --workers` forks before any grpc exists.
    import grpc

    from gateway.app.client import run_ack, run_get

    if tls is None:
        channel = grpc.insecure_channel(args.target)
    else:
        ca, key, chain = tls
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=chain
        )
        channel = grpc.secure_channel(args.target, credentials)
    with channel:
        if args.command == "get":
            return run_get(
                channel,
                args.wa_id,
                bypass_cache=args.bypass_cache,
                sender=args.sender,
                out=sys.stdout,
                err=sys.stderr,
            )
        return run_ack(
            channel, args.wa_id, args.hash, sender=args.sender, out=sys.stdout, err=sys.stderr
        )


def _client_tls(args: argparse.Namespace) -> tuple[bytes, bytes | None, bytes | None] | None:
    """``get``/``ack``: (CA, client key, client chain) as PEM for a TLS channel, or None for
    plaintext. The gateway checks the files' contents in the handshake."""
    if args.ca_file is None:
        if args.cert_file is not None or args.key_file is not None:
            raise ConfigError("--cert-file and --key-file need --ca-file")
        return None
    if (args.cert_file is None) != (args.key_file is None):
        raise ConfigError("--cert-file and --key-file go together")
    ca = _read_pem(args.ca_file, "--ca-file")
    if args.cert_file is None:
        return ca, None, None
    return ca, _read_pem(args.key_file, "--key-file"), _read_pem(args.cert_file, "--cert-file")


def _read_pem(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag} {path} is unreadable: {error.strerror}") from None


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        config = config_from_args(args, environ)
        runtime = prepare(config)  # every file read and checked before anything listens or forks
    except ConfigError as error:
        print(f"identity-gateway: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level)
    if config.workers > 1:
        from gateway.app.workers import run_workers

        return run_workers(config, config.workers)
    from gateway.app.server import serve  # grpc is first imported here

    try:
        asyncio.run(serve(config, runtime))
    except OSError as error:
        print(f"identity-gateway: {error}", file=sys.stderr)
        return 1
    return 0


def _emulator(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the WhatsApp API emulator: a development tool, installed beside the gateway only
    from a checkout (``make run`` and ``make test`` do it), never in the production image."""
    try:
        from whatsapp_emulator.emulator import run_emulator
    except ModuleNotFoundError:
        print(
            "identity-gateway emulator: the WhatsApp API emulator is a development tool and is "
            "not installed here; from a checkout, run `make run`, or `pip install ./emulator`",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        host, port = split_host_port(args.listen, "--listen")
    except ConfigError as error:
        print(f"identity-gateway emulator: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if (args.tls_cert is None) != (args.tls_key is None):
        print("identity-gateway emulator: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("info")
    password = environ.get(env_name("emulator-password"), "secret")
    # Secrets from the environment only, as for the gateway: never flags.
    secrets: dict[str, str] = {}
    if environ.get(env_name("emulator-webhook-secret")):
        secrets["webhook_secret"] = environ[env_name("emulator-webhook-secret")]
    if environ.get(env_name("emulator-infobip-api-key")):
        secrets["infobip_api_key"] = environ[env_name("emulator-infobip-api-key")]
    try:
        asyncio.run(
            run_emulator(
                host,
                port,
                username=args.username,
                password=password,
                token_lifetime=args.token_lifetime,
                certfile=str(args.tls_cert) if args.tls_cert else None,
                keyfile=str(args.tls_key) if args.tls_key else None,
                synthetic_contacts=args.synthetic_contacts,
                webhook_url=args.webhook_url,
                **secrets,
            )
        )
    except ValueError as error:  # a bad --webhook-url, refused before listening
        print(f"identity-gateway emulator: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
