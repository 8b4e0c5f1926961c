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
import math
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.app.config import ConfigError, GatewayConfig
from gateway.app.senders import INFOBIP, SenderConfig
from gateway.backends.base import Backend, BackendObserver
from gateway.backends.http import HttpUpstream, aiohttp_transport, tls_verification
from gateway.backends.infobip.client import DEFAULT_BURST as INFOBIP_BURST
from gateway.backends.infobip.client import DEFAULT_RATE_LIMIT as INFOBIP_RATE_LIMIT
from gateway.backends.infobip.client import InfobipBackend
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

    upstream_tls: Mapping[str, ssl.SSLContext | bool]  # by sender number; False: insecure
    listener_tls: ListenerTls | None  # None: plaintext
    webhook_tls: ssl.SSLContext | None = None  # None: the webhook listener is plain HTTP


def prepare(config: GatewayConfig) -> Runtime:
    """Read every sender's CA bundle, the listener's certificate, key and client CA, and the
    webhook listener's certificate and key; check them."""
    upstream_tls: dict[str, ssl.SSLContext | bool] = {}
    for sender in config.resolved_senders().senders:
        try:
            upstream_tls[sender.number] = tls_verification(sender.ca_file, sender.insecure)
        except (OSError, ssl.SSLError) as error:
            where = (
                f"--senders: sender {sender.number}: key 'ca_file':"
                if sender.number
                else "--upstream-ca-file"
            )
            raise ConfigError(f"{where} {sender.ca_file} is unreadable: {error}") from None
    return Runtime(upstream_tls, _listener_tls(config), _webhook_tls(config))


def build_backend(
    sender: SenderConfig,
    config: GatewayConfig,
    runtime: Runtime,
    observer: BackendObserver,
    secrets: Sequence[str] = (),
) -> Backend:
    """The backend of one sender, with its own connection pool and safeguards (breaker, retry
    budget, admission, pacing): a failing sender never slows or trips another.

    ``secrets`` (every configured secret) are redacted from upstream text it passes on.
    """

    def breaker_changed(old: BreakerState, new: BreakerState) -> None:
        level = logging.ERROR if new is BreakerState.OPEN else logging.WARNING
        log.log(
            level, "upstream circuit breaker of sender %s: %s -> %s", sender.label, old.name,
            new.name,
        )  # fmt: skip
        observer.breaker_changed(new.value)

    rate, burst = pace_of(sender, config)
    safeguards = Safeguards.configured(
        retries=config.upstream_retries,
        rate_limit=rate,
        burst=burst,
        max_in_flight=config.upstream_max_in_flight,
        max_waiting=config.upstream_max_waiting,
        observer=observer,
        on_breaker_change=breaker_changed,
    )
    # No more connections than requests admitted at once: the queue is kept in front of the
    # pool, where it is bounded (--upstream-max-waiting).
    transport = aiohttp_transport(
        max_connections=config.upstream_max_in_flight, verify=runtime.upstream_tls[sender.number]
    )
    if sender.backend == INFOBIP:
        assert sender.api_key is not None
        upstream = HttpUpstream(
            transport,
            base_url=sender.url,
            request_timeout=config.upstream_timeout,
            name="Infobip API",
            observer=observer,
            secrets=secrets,
        )
        return InfobipBackend(
            upstream, sender=sender.number, api_key=sender.api_key, safeguards=safeguards
        )
    upstream = HttpUpstream(
        transport,
        base_url=sender.url,
        request_timeout=config.upstream_timeout,
        observer=observer,
        secrets=secrets,
    )
    return OnPremBackend(
        upstream,
        username=sender.username,
        password=sender.password,
        token=sender.token,
        safeguards=safeguards,
    )


def pace_of(sender: SenderConfig, config: GatewayConfig) -> tuple[float, int]:
    """A sender's pacing (requests/s, burst): its own ``rate_limit``, else the flags; an
    Infobip sender at most Infobip's documented 10 requests/s (bursts of 10) unless its
    ``rate_limit`` says otherwise (then in bursts of at most a second's worth)."""
    if sender.backend != INFOBIP:
        rate = config.upstream_rate_limit if sender.rate_limit is None else sender.rate_limit
        return rate, config.upstream_burst
    if sender.rate_limit is not None:
        # Its own rate, in bursts no larger than a second's worth of it.
        return sender.rate_limit, min(config.upstream_burst, max(1, math.ceil(sender.rate_limit)))
    # The flags only lower Infobip's limit: 0 (no pacing) does not lift it.
    flags = config.upstream_rate_limit
    rate = INFOBIP_RATE_LIMIT if flags == 0 else min(flags, INFOBIP_RATE_LIMIT)
    return rate, min(config.upstream_burst, INFOBIP_BURST)


def read_policy(path: Path) -> Policy:
    """The caller-authorization policy at ``path``, checked now so a bad one stops start-up."""
    try:
        return load_policy(path)
    except PolicyError as error:
        raise ConfigError(f"--authz-policy {path}: {error}") from None


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


def _webhook_tls(config: GatewayConfig) -> ssl.SSLContext | None:
    """The webhook listener's server TLS context, or None for plain HTTP."""
    if config.webhook_tls_cert is None or config.webhook_tls_key is None:
        return None
    _read_file(config.webhook_tls_cert, "--webhook-tls-cert")
    _read_file(config.webhook_tls_key, "--webhook-tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(
            str(config.webhook_tls_cert), str(config.webhook_tls_key), password=_refuse_passphrase
        )
    except _EncryptedKey:
        raise ConfigError(
            f"--webhook-tls-key {config.webhook_tls_key} is encrypted; give it unencrypted"
        ) from None
    except (OSError, ssl.SSLError):
        raise ConfigError(
            f"--webhook-tls-cert {config.webhook_tls_cert} and --webhook-tls-key "
            f"{config.webhook_tls_key} are not a PEM certificate and its matching key"
        ) from None
    return context
