"""The one step at start-up that reads files and builds TLS contexts.

    config = GatewayConfig(...)              # values only, checked when built: no file is read
    runtime = prepare(config)                # ConfigError naming the flag if a file is bad
    async with GatewayServer(config, runtime=runtime): ...

The command line calls :func:`prepare` before anything listens (and before ``--workers``
forks, each worker preparing its own afterwards), so a bad file stops start-up with exit 2.
Messages name the flag and the path, never a file's contents: keys and secrets stay out.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from pathlib import Path

from gateway.app.config import ConfigError, GatewayConfig
from gateway.backends.base import BackendObserver
from gateway.backends.http import HttpUpstream, aiohttp_transport, tls_verification
from gateway.backends.onprem.client import OnPremBackend
from gateway.backends.safeguards import BreakerState, Safeguards
from gateway.serving.policy import Policy, PolicyError, load_policy

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ListenerTls:
    """The gRPC listener's PEM files, checked (gRPC itself is imported only after a fork)."""

    key: bytes = dataclasses.field(repr=False)
    chain: bytes
    client_ca: bytes | None  # None: no client certificate required


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What the configuration's files hold, ready to use."""

    upstream_tls: ssl.SSLContext | bool  # False: --upstream-insecure
    listener_tls: ListenerTls | None  # None: plaintext


def prepare(config: GatewayConfig) -> Runtime:
    """Read the CA bundle and the listener's certificate, key and client CA; check them."""
    try:
        upstream_tls = tls_verification(config.upstream_ca_file, config.upstream_insecure)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"--upstream-ca-file {config.upstream_ca_file} is unreadable: {error}"
        ) from None
    return Runtime(upstream_tls, _listener_tls(config))


def read_secret(path: Path) -> str:
    """A secret from its file, less the line ending an editor adds (spaces may belong to it)."""
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the secret file {path}: {reason}") from None
    if not value.strip():
        raise ConfigError(f"the secret file {path} is empty")
    return value


def read_policy(path: Path) -> Policy:
    """The caller-authorization policy at ``path``, checked now so a bad one stops start-up."""
    try:
        return load_policy(path)
    except PolicyError as error:
        raise ConfigError(f"--authz-policy {path}: {error}") from None


def onprem_backend(
    config: GatewayConfig, runtime: Runtime, observer: BackendObserver
) -> OnPremBackend:
    """The On-Premises backend the configuration describes, with its own connection pool."""

    def breaker_changed(old: BreakerState, new: BreakerState) -> None:
        level = logging.ERROR if new is BreakerState.OPEN else logging.WARNING
        log.log(level, "upstream circuit breaker: %s -> %s", old.name, new.name)
        observer.breaker_changed(new.value)

    # No more connections than requests admitted at once: the queue is kept in front of the
    # pool, where it is bounded (--upstream-max-waiting).
    transport = aiohttp_transport(
        max_connections=config.upstream_max_in_flight, verify=runtime.upstream_tls
    )
    upstream = HttpUpstream(
        transport,
        base_url=config.upstream_url,
        request_timeout=config.upstream_timeout,
        observer=observer,
    )
    safeguards = Safeguards.configured(
        retries=config.upstream_retries,
        rate_limit=config.upstream_rate_limit,
        burst=config.upstream_burst,
        max_in_flight=config.upstream_max_in_flight,
        max_waiting=config.upstream_max_waiting,
        observer=observer,
        on_breaker_change=breaker_changed,
    )
    return OnPremBackend(
        upstream,
        username=config.upstream_username,
        password=config.upstream_password,
        token=config.upstream_token,
        safeguards=safeguards,
    )


class _EncryptedKey(Exception):
    """Raised from the passphrase callback: a key that needs one cannot be given to gRPC."""


def _refuse_passphrase() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for the passphrase.
    raise _EncryptedKey


def _read_file(path: Path, flag: str) -> bytes:
    """The bytes of ``path``; a ConfigError naming ``flag`` and the reason if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{flag} {path} is unreadable: {error.strerror or 'cannot read it'}"
        ) from None


def _listener_tls(config: GatewayConfig) -> ListenerTls | None:
    """The gRPC listener's TLS files (None: plaintext), checked: readable PEM, an unencrypted
    key matching the certificate."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    chain = _read_file(config.tls_cert, "--tls-cert")
    key = _read_file(config.tls_key, "--tls-key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=chain.decode("ascii"))
    except (ValueError, ssl.SSLError):
        raise ConfigError(f"--tls-cert {config.tls_cert} holds no PEM certificate") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            str(config.tls_cert), str(config.tls_key), password=_refuse_passphrase
        )
    except _EncryptedKey:
        raise ConfigError(
            f"--tls-key {config.tls_key} is encrypted; give it unencrypted (gRPC takes no "
            "passphrase)"
        ) from None
    except (OSError, ssl.SSLError) as error:
        if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"--tls-key {config.tls_key} does not match the certificate in --tls-cert"
            ) from None
        raise ConfigError(f"--tls-key {config.tls_key} holds no PEM private key") from None
    client_ca = None
    if config.tls_client_ca is not None:
        client_ca = _read_file(config.tls_client_ca, "--tls-client-ca")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(
                cadata=client_ca.decode("ascii")
            )
        except (ValueError, ssl.SSLError):
            raise ConfigError(
                f"--tls-client-ca {config.tls_client_ca} holds no PEM certificate"
            ) from None
    return ListenerTls(key, chain, client_ca)
