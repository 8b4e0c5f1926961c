"""The gateway's configuration: one frozen, validated object built at the edge and passed down.

The command line (:mod:`gateway.cli`) is the only place that reads flags, files and the
environment; it builds a :class:`GatewayConfig`, whose constructor checks every value, so the
rest of the gateway never sees a bad setting.

    config = GatewayConfig(upstream_url="http://127.0.0.1:9090", upstream_username="admin",
                           upstream_password="secret")
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import ssl
import urllib.parse
from pathlib import Path

from gateway.policy import Policy


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another; the message names it."""


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """Everything ``identity-gateway serve`` needs, checked when built.

    Secrets (``upstream_password``, ``upstream_token``) are excluded from ``repr`` so the object
    can be logged safely.
    """

    upstream_url: str
    listen: str = "[::]:50051"
    upstream_username: str | None = None
    upstream_password: str | None = dataclasses.field(default=None, repr=False)
    upstream_token: str | None = dataclasses.field(default=None, repr=False)
    upstream_ca_file: Path | None = None
    upstream_insecure: bool = False
    tls_cert: Path | None = None  # the gRPC listener's certificate chain (PEM); None = plaintext
    tls_key: Path | None = None  # its private key (PEM, unencrypted)
    tls_client_ca: Path | None = None  # CA bundle that client certificates must chain to (mTLS)
    upstream_timeout: float = 5.0
    cache_ttl: float = 30.0
    cache_max_entries: int = 100_000
    metrics_listen: str | None = None
    log_level: str = "info"
    upstream_rate_limit: float = 20.0  # requests/s toward WhatsApp; 0 turns pacing off
    upstream_burst: int = 60
    upstream_max_in_flight: int = 8
    upstream_max_waiting: int = 256
    upstream_retries: int = 2
    cache_backend: str = "memory"  # or redis://host:port/db, shared by every replica
    cache_backend_timeout: float = 0.25  # per Redis call; slower counts as Redis being down
    webhook_listen: str | None = None  # HOST:PORT of the WhatsApp webhook endpoint; None = off
    authz_policy: Policy | None = None  # caller authorization; None = every caller allowed
    shutdown_grace: float = 10.0
    reflection: bool = True
    workers: int = 1
    reuse_port: bool = False  # set for each of several workers sharing the port

    def __post_init__(self) -> None:
        self._check_upstream_url()
        self._check_credentials()
        split_host_port(self.listen, "--listen")
        if self.metrics_listen is not None:
            split_host_port(self.metrics_listen, "--metrics-listen")
        if self.cache_backend != "memory":
            url = urllib.parse.urlsplit(self.cache_backend)
            if url.scheme not in ("redis", "rediss") or not url.hostname:
                raise ConfigError("--cache-backend must be memory or redis://host:port/db")
        if not 0 < self.cache_backend_timeout < math.inf:
            raise ConfigError("--cache-backend-timeout must be a positive number of seconds")
        if self.webhook_listen is not None:
            split_host_port(self.webhook_listen, "--webhook-listen")
        if not 0 < self.upstream_timeout < math.inf:
            raise ConfigError("--upstream-timeout must be a positive number of seconds")
        if not 0 <= self.cache_ttl < math.inf:
            raise ConfigError("--cache-ttl must be zero (no caching) or a positive number")
        if self.cache_max_entries < 1:
            raise ConfigError("--cache-max-entries must be at least 1")
        if not 1 <= self.workers <= 64:
            raise ConfigError("--workers must be between 1 and 64")
        if not 0 <= self.upstream_rate_limit < math.inf:
            raise ConfigError("--upstream-rate-limit must be zero (off) or requests per second")
        if self.upstream_burst < 1:
            raise ConfigError("--upstream-burst must be at least 1")
        if self.upstream_max_in_flight < 1:
            raise ConfigError("--upstream-max-in-flight must be at least 1")
        if self.upstream_max_waiting < 0:
            raise ConfigError("--upstream-max-waiting must be zero or more")
        if not 0 <= self.upstream_retries <= 10:
            raise ConfigError("--upstream-retries must be between 0 and 10")
        if not 0 <= self.shutdown_grace < math.inf:
            raise ConfigError("--shutdown-grace must be zero or more seconds")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.upstream_ca_file is not None:
            self._check_ca_file(self.upstream_ca_file)
        self._check_listener_tls()

    def _check_upstream_url(self) -> None:
        if not self.upstream_url:
            raise ConfigError("--upstream-url is required (or IDENTITY_GATEWAY_UPSTREAM_URL)")
        url = urllib.parse.urlsplit(self.upstream_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError("--upstream-url must be an https:// URL with a host")
        try:
            url.port  # noqa: B018 (parsing the port is the check)
        except ValueError:
            raise ConfigError("--upstream-url has an invalid port") from None
        if url.username or url.password or url.query or url.fragment:
            raise ConfigError("--upstream-url must not carry credentials, a query or a fragment")
        if url.scheme == "http" and not _is_loopback(url.hostname):
            raise ConfigError("--upstream-url must use https:// (http:// only for loopback hosts)")

    def _check_credentials(self) -> None:
        if self.upstream_token is not None and self.upstream_username is not None:
            raise ConfigError(
                "give either a static token (--upstream-token-file) or a login "
                "(--upstream-username), not both"
            )
        if self.upstream_token is None and self.upstream_username is None:
            raise ConfigError(
                "no upstream credentials: give --upstream-username with "
                "IDENTITY_GATEWAY_UPSTREAM_PASSWORD, or --upstream-token-file"
            )
        if self.upstream_username is not None and not self.upstream_password:
            raise ConfigError(
                "--upstream-username needs a password: set IDENTITY_GATEWAY_UPSTREAM_PASSWORD "
                "or --upstream-password-file"
            )
        if self.upstream_token is not None and not _is_header_safe(self.upstream_token):
            raise ConfigError("the upstream token is empty or holds characters a header cannot")
        if self.upstream_username is not None and (
            not self.upstream_username or ":" in self.upstream_username
        ):
            raise ConfigError("--upstream-username must be non-empty and hold no ':'")

    @staticmethod
    def _check_ca_file(path: Path) -> None:
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"--upstream-ca-file {path} is unreadable: {error}") from None

    def _check_listener_tls(self) -> None:
        """The listener's certificate, key and client CA: present together, readable, matching.

        Messages name the flag and the path, never file contents: the key is a secret.
        """
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "--tls-key" if self.tls_key is None else "--tls-cert"
            raise ConfigError(f"--tls-cert and --tls-key go together: {missing} is missing")
        if self.tls_cert is None or self.tls_key is None:
            if self.tls_client_ca is not None:
                raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return
        _read_file(self.tls_cert, "--tls-cert")
        _read_file(self.tls_key, "--tls-key")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(self.tls_cert))
        except (OSError, ssl.SSLError):
            raise ConfigError(f"--tls-cert {self.tls_cert} holds no PEM certificate") from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                str(self.tls_cert), str(self.tls_key), password=_refuse_passphrase
            )
        except _EncryptedKey:
            raise ConfigError(
                f"--tls-key {self.tls_key} is encrypted; give it unencrypted (gRPC takes no "
                "passphrase)"
            ) from None
        except (OSError, ssl.SSLError) as error:
            if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
                raise ConfigError(
                    f"--tls-key {self.tls_key} does not match the certificate in --tls-cert"
                ) from None
            raise ConfigError(f"--tls-key {self.tls_key} holds no PEM private key") from None
        if self.tls_client_ca is not None:
            _read_file(self.tls_client_ca, "--tls-client-ca")
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(
                    cafile=str(self.tls_client_ca)
                )
            except (OSError, ssl.SSLError):
                raise ConfigError(
                    f"--tls-client-ca {self.tls_client_ca} holds no PEM certificate"
                ) from None

    @property
    def listener_security(self) -> str:
        """``plaintext``, ``tls`` or ``mtls``: how the gRPC listener meets its callers."""
        if self.tls_cert is None:
            return "plaintext"
        return "tls" if self.tls_client_ca is None else "mtls"

    @property
    def login_mode(self) -> bool:
        """True when the gateway logs in with a username and password."""
        return self.upstream_username is not None

    @property
    def upstream_host(self) -> str:
        """The upstream's host, for messages that must not carry the whole URL."""
        return urllib.parse.urlsplit(self.upstream_url).hostname or ""


def split_host_port(address: str, flag: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts; a ConfigError naming ``flag`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} must be HOST:PORT, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_header_safe(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable() and value.strip() == value
