"""The gateway's configuration: one frozen, validated object built at the edge and passed down.

The command line (:mod:`gateway.app.cli`) is the only place that reads flags, files and the
environment; it builds a :class:`GatewayConfig`, whose constructor checks every value, so the
rest of the gateway never sees a bad setting.

    config = GatewayConfig(upstream_url="http://127.0.0.1:9090", upstream_username="admin",
                           upstream_password="secret")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.app import settings
from gateway.app.senders import ONPREM, SenderConfig, Senders
from gateway.app.settings import ConfigError, split_host_port
from gateway.serving.policy import Policy

__all__ = ["ConfigError", "GatewayConfig", "split_host_port"]
_d = settings.default


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """Everything ``identity-gateway serve`` needs, checked when built.

    Defaults and single-value checks come from :data:`gateway.app.settings.SETTINGS`; the
    checks that relate settings to each other are here.

    Secrets (``upstream_password``, ``upstream_token``, ``webhook_secret``, and every secret of
    ``senders``) are excluded from ``repr`` so the object can be logged safely. Without
    ``senders`` the ``upstream_*`` fields describe one On-Premises sender ("flag mode").
    """

    upstream_url: str = ""
    listen: str = _d("listen")
    upstream_username: str | None = None
    upstream_password: str | None = dataclasses.field(default=None, repr=False)
    upstream_token: str | None = dataclasses.field(default=None, repr=False)
    upstream_ca_file: Path | None = None
    upstream_insecure: bool = _d("upstream-insecure")
    tls_cert: Path | None = None  # the gRPC listener's certificate chain (PEM); None = plaintext
    tls_key: Path | None = None  # its private key (PEM, unencrypted)
    tls_client_ca: Path | None = None  # CA bundle that client certificates must chain to (mTLS)
    upstream_timeout: float = _d("upstream-timeout")
    cache_ttl: float = _d("cache-ttl")
    cache_max_entries: int = _d("cache-max-entries")
    metrics_listen: str | None = None
    log_level: str = _d("log-level")
    upstream_rate_limit: float = _d("upstream-rate-limit")
    upstream_burst: int = _d("upstream-burst")
    upstream_max_in_flight: int = _d("upstream-max-in-flight")
    upstream_max_waiting: int = _d("upstream-max-waiting")
    upstream_retries: int = _d("upstream-retries")
    cache_backend: str = _d("cache-backend")
    cache_backend_timeout: float = _d("cache-backend-timeout")
    webhook_listen: str | None = None  # HOST:PORT of the WhatsApp webhook endpoint; None = off
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)  # flag mode's
    webhook_allow_unauthenticated: bool = _d("webhook-allow-unauthenticated")
    webhook_tls_cert: Path | None = None
    webhook_tls_key: Path | None = None
    senders: Senders | None = None  # from --senders; None: flag mode
    # The senders served (resolved_senders), derived once from the fields above.
    _served: Senders = dataclasses.field(init=False, repr=False, compare=False)
    authz_policy: Policy | None = None  # caller authorization; None = every caller allowed
    shutdown_grace: float = _d("shutdown-grace")
    reflection: bool = _d("reflection")
    workers: int = _d("workers")
    reuse_port: bool = False  # set for each of several workers sharing the port

    def __post_init__(self) -> None:
        object.__setattr__(self, "_served", self.senders or self._flag_mode_sender())
        if self.senders is None:
            self._check_upstream_url()
            self._check_credentials()
        else:
            self._check_no_flag_mode_sender()
        for setting in settings.SETTINGS:
            if setting.in_config:
                settings.check(setting, getattr(self, setting.field))
        self._check_listener_tls()
        self._check_webhooks()

    def resolved_senders(self) -> Senders:
        """The senders served: the file's, or flag mode's one On-Premises sender (no number)."""
        return self._served

    def _flag_mode_sender(self) -> Senders:
        single = SenderConfig(
            number="",
            backend=ONPREM,
            url=self.upstream_url,
            username=self.upstream_username,
            password=self.upstream_password,
            token=self.upstream_token,
            webhook_secret=self.webhook_secret,
            ca_file=self.upstream_ca_file,
            insecure=self.upstream_insecure,
        )
        return Senders((single,), default="")

    @property
    def unauthenticated_webhooks(self) -> bool:
        """Whether the webhook listener takes pushes without a secret for some sender."""
        return self.webhook_listen is not None and any(
            sender.backend == ONPREM and sender.webhook_secret is None
            for sender in self.resolved_senders().senders
        )

    def _check_no_flag_mode_sender(self) -> None:
        """With --senders, the connection and credential settings would describe a second,
        nameless sender: refuse them rather than guess."""
        for flag in settings.FLAG_MODE_ONLY:
            setting = settings.BY_FLAG[flag]
            if setting.in_config and getattr(self, setting.field) not in (None, False, ""):
                raise settings.flag_mode_conflict(f"--{flag}")
        for secret, _ in settings.SECRET_VARIABLES:  # their values, from a variable or a file
            if getattr(self, secret.replace("-", "_")) is not None:
                raise settings.flag_mode_conflict(
                    f"{settings.env_name(secret)} (or --{secret}-file)"
                )

    def _check_webhooks(self) -> None:
        if (self.webhook_tls_cert is None) != (self.webhook_tls_key is None):
            missing = "--webhook-tls-key" if self.webhook_tls_key is None else "--webhook-tls-cert"
            raise ConfigError(
                f"--webhook-tls-cert and --webhook-tls-key go together: {missing} is missing"
            )
        for sender in self.resolved_senders().senders:
            secret = sender.webhook_secret
            if secret is not None and not settings.header_safe(secret):
                where = (
                    f"sender {sender.number}'s webhook secret"
                    if sender.number
                    else "the webhook secret (IDENTITY_GATEWAY_WEBHOOK_SECRET or "
                    "--webhook-secret-file)"
                )
                raise ConfigError(
                    f"{where} must be printable ASCII, not empty, with no spaces around it"
                )
        if self.webhook_listen is None or self.webhook_allow_unauthenticated:
            return
        for sender in self.resolved_senders().senders:
            if sender.backend == ONPREM and sender.webhook_secret is None:
                how = (
                    f"set webhook_secret_env or webhook_secret_file for sender {sender.number} "
                    "in the senders file"
                    if sender.number
                    else "set IDENTITY_GATEWAY_WEBHOOK_SECRET or --webhook-secret-file"
                )
                raise ConfigError(
                    f"--webhook-listen: sender {sender.label} (onprem) has no webhook secret: "
                    f"{how}, or pass --webhook-allow-unauthenticated"
                )

    def _check_upstream_url(self) -> None:
        if not self.upstream_url:
            raise ConfigError(
                "--upstream-url is required (or IDENTITY_GATEWAY_UPSTREAM_URL), or --senders"
            )
        problem = settings.upstream_url_problem(self.upstream_url)
        if problem is not None:
            raise ConfigError(f"--upstream-url {problem}")

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
        if self.upstream_token is not None and not settings.header_safe(self.upstream_token):
            raise ConfigError("the upstream token is empty or holds characters a header cannot")
        if self.upstream_username is not None and (
            not self.upstream_username or ":" in self.upstream_username
        ):
            raise ConfigError("--upstream-username must be non-empty and hold no ':'")

    def _check_listener_tls(self) -> None:
        """The listener's certificate, key and client CA come together (their files are read
        by :func:`gateway.app.startup.prepare`)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "--tls-key" if self.tls_key is None else "--tls-cert"
            raise ConfigError(f"--tls-cert and --tls-key go together: {missing} is missing")
        if self.tls_cert is None and self.tls_client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")

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
