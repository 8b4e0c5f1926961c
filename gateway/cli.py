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
from gateway.config import ConfigError, GatewayConfig, split_host_port
from gateway.logs import configure_logging
from gateway.policy import Policy, PolicyError, load_policy

ENV_PREFIX = "IDENTITY_GATEWAY_"
DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_CONFIG = 2

# serve's settings: (flag, type, default). Each also reads IDENTITY_GATEWAY_<FLAG>. Booleans are
# --flag / --no-flag on the command line and true/false in the environment.
SERVE_SETTINGS: tuple[tuple[str, type, object], ...] = (
    ("listen", str, "[::]:50051"),
    ("upstream-url", str, None),
    ("upstream-username", str, None),
    ("upstream-password-file", Path, None),
    ("upstream-token-file", Path, None),
    ("upstream-ca-file", Path, None),
    ("upstream-timeout", float, 5.0),
    ("cache-ttl", float, 30.0),
    ("cache-max-entries", int, 100_000),
    ("metrics-listen", str, None),
    ("log-level", str, "info"),
    ("shutdown-grace", float, 10.0),
    ("upstream-insecure", bool, False),
    ("reflection", bool, True),
    ("workers", int, 1),
    ("upstream-rate-limit", float, 20.0),
    ("upstream-burst", int, 60),
    ("upstream-max-in-flight", int, 8),
    ("upstream-max-waiting", int, 256),
    ("upstream-retries", int, 2),
    ("authz-policy", Path, None),
    ("webhook-listen", str, None),
    ("cache-backend", str, "memory"),
    ("cache-backend-timeout", float, 0.25),
    ("tls-cert", Path, None),
    ("tls-key", Path, None),
    ("tls-client-ca", Path, None),
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str) -> str:
    """``upstream-url`` → ``IDENTITY_GATEWAY_UPSTREAM_URL``."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


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
    for flag, kind, default in SERVE_SETTINGS:
        help_text = f"(env {env_name(flag)}; default {default})"
        if kind is bool:
            serve.add_argument(
                f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            serve.add_argument(f"--{flag}", type=kind, default=None, help=help_text)

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
        help="POST a user_identity_changed webhook here when a contact's identity changes",
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
            "--ca-file", type=Path, help="use TLS, trusting the gateway's certificate to this CA"
        )
        client.add_argument(
            "--cert-file", type=Path, help="client certificate for mutual TLS (with --ca-file)"
        )
        client.add_argument("--key-file", type=Path, help="the client certificate's private key")
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> GatewayConfig:
    """The serve configuration from flags, then the environment, then defaults."""

    def setting(flag: str, kind: type, default: object) -> object:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            return value
        raw = environ.get(env_name(flag))
        if raw is None or raw == "":
            return default
        if kind is bool:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ConfigError(f"{env_name(flag)} must be true or false")
            return raw.strip().lower() in _TRUE
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{env_name(flag)}={raw!r} is not a valid {kind.__name__}") from None

    values = {flag: setting(flag, kind, default) for flag, kind, default in SERVE_SETTINGS}

    password = _secret(values["upstream-password-file"], environ, "UPSTREAM_PASSWORD")
    token = _secret(values["upstream-token-file"], environ, "UPSTREAM_TOKEN")
    if values["upstream-username"] is None:
        password = None  # a password alone means nothing; token mode ignores it
    return GatewayConfig(
        upstream_url=str(values["upstream-url"] or ""),
        listen=str(values["listen"]),
        upstream_username=_optional_str(values["upstream-username"]),
        upstream_password=password,
        upstream_token=token,
        upstream_ca_file=_optional_path(values["upstream-ca-file"]),
        upstream_insecure=bool(values["upstream-insecure"]),
        upstream_timeout=float(str(values["upstream-timeout"])),
        cache_ttl=float(str(values["cache-ttl"])),
        cache_max_entries=int(str(values["cache-max-entries"])),
        metrics_listen=_optional_str(values["metrics-listen"]),
        log_level=str(values["log-level"]).lower(),
        shutdown_grace=float(str(values["shutdown-grace"])),
        reflection=bool(values["reflection"]),
        workers=int(str(values["workers"])),
        upstream_rate_limit=float(str(values["upstream-rate-limit"])),
        upstream_burst=int(str(values["upstream-burst"])),
        upstream_max_in_flight=int(str(values["upstream-max-in-flight"])),
        upstream_max_waiting=int(str(values["upstream-max-waiting"])),
        upstream_retries=int(str(values["upstream-retries"])),
        authz_policy=_policy(values["authz-policy"]),
        webhook_listen=_optional_str(values["webhook-listen"]),
        cache_backend=str(values["cache-backend"]),
        cache_backend_timeout=float(str(values["cache-backend-timeout"])),
        tls_cert=_optional_path(values["tls-cert"]),
        tls_key=_optional_path(values["tls-key"]),
        tls_client_ca=_optional_path(values["tls-client-ca"]),
    )


def _policy(path: object) -> Policy | None:
    """The caller-authorization policy at ``path``, checked now so a bad one stops start-up."""
    if not isinstance(path, Path):
        return None
    try:
        return load_policy(path)
    except PolicyError as error:
        raise ConfigError(f"--authz-policy {path}: {error}") from None


def _secret(path: object, environ: Mapping[str, str], name: str) -> str | None:
    """A secret from its file (flag or environment), else from ``IDENTITY_GATEWAY_<name>``."""
    if isinstance(path, Path):
        try:
            # Only the line ending an editor adds: spaces may be part of a password.
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read the secret file {path}: {reason}") from None
        if not value.strip():
            raise ConfigError(f"the secret file {path} is empty")
        return value
    return environ.get(ENV_PREFIX + name) or None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_path(value: object) -> Path | None:
    return value if isinstance(value, Path) else None


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

    from gateway.client import run_ack, run_get

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
                channel, args.wa_id, bypass_cache=args.bypass_cache, out=sys.stdout, err=sys.stderr
            )
        return run_ack(channel, args.wa_id, args.hash, out=sys.stdout, err=sys.stderr)


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
    except ConfigError as error:
        print(f"identity-gateway: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level)
    if config.workers > 1:
        from gateway.workers import run_workers

        return run_workers(config, config.workers)
    from gateway.server import serve  # grpc is first imported here

    try:
        asyncio.run(serve(config))
    except OSError as error:
        print(f"identity-gateway: {error}", file=sys.stderr)
        return 1
    return 0


def _emulator(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gateway.emulator import run_emulator

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
            )
        )
    except ValueError as error:  # a bad --webhook-url, refused before listening
        print(f"identity-gateway emulator: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
