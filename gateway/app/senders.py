"""The business numbers ("senders") the gateway serves, and the upstream behind each (spec §6).

With ``--senders PATH`` they come from a TOML file::

    default_sender = "15550001111"          # requests with an empty sender; required with 2+

    [[senders]]
    number = "15550001111"                  # digits only: the RPCs' `sender`
    backend = "onprem"
    url = "https://whatsapp-webapp.internal:9090"
    username = "gateway"                    # login mode; or token_env / token_file
    password_env = "WA_ONPREM_PASSWORD"     # or password_file
    ca_file = "/etc/whatsapp/ca.pem"        # optional
    rate_limit = 20                         # optional, requests/s toward this sender's API
    webhook_secret_env = "WA_ONPREM_WEBHOOK_SECRET"   # or webhook_secret_file

    [[senders]]
    number = "447796344125"
    backend = "infobip"
    url = "https://xxxxx.api.infobip.com"
    api_key_env = "INFOBIP_API_KEY"         # or api_key_file

Without it, the ``--upstream-*`` flags describe one ``onprem`` sender with no number ("flag
mode", :meth:`Senders.single`). Secrets are never written in the file: only ``*_env`` (a
variable's name) or ``*_file`` (a path); they are read here, once, at start-up. Every problem
is a :class:`~gateway.app.settings.ConfigError` naming the file, the sender and the key::

    senders = load_senders(Path("senders.toml"), os.environ)
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.app.secrets import read_secret
from gateway.app.settings import ConfigError, header_safe, upstream_url_problem
from gateway.identifiers import is_sender_number

ONPREM = "onprem"
INFOBIP = "infobip"
BACKENDS = (ONPREM, INFOBIP)

# Keys every sender may have, and each backend's own.
_COMMON_KEYS = frozenset({"number", "backend", "rate_limit"})
_BACKEND_KEYS: Mapping[str, frozenset[str]] = {
    ONPREM: frozenset(
        {
            "url",
            "username",
            "password_env",
            "password_file",
            "token_env",
            "token_file",
            "ca_file",
            "webhook_secret_env",
            "webhook_secret_file",
        }
    ),
    INFOBIP: frozenset({"url", "api_key_env", "api_key_file"}),
}
# Secrets written inline, under the name they would have; each must be *_env or *_file.
_INLINE_SECRETS = frozenset(
    {"password", "token", "api_key", "webhook_secret", "app_secret", "verify_token", "access_token"}
)
_TOP_KEYS = frozenset({"default_sender", "senders"})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class SenderConfig:
    """One sender, its secrets read. ``number`` is empty for flag mode's one sender."""

    number: str
    backend: str
    url: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    api_key: str | None = dataclasses.field(default=None, repr=False)
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    ca_file: Path | None = None
    insecure: bool = False
    rate_limit: float | None = None  # None: the backend's default (see GatewayServer)

    @property
    def label(self) -> str:
        """How logs and metrics name it: its number, or ``default`` in flag mode."""
        return self.number or "default"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret it holds, for redaction."""
        values = (self.password, self.token, self.api_key, self.webhook_secret)
        return tuple(value for value in values if value)


@dataclasses.dataclass(frozen=True)
class Senders:
    """Every sender, and which one answers requests that name none."""

    senders: tuple[SenderConfig, ...]
    default: str

    @property
    def by_number(self) -> dict[str, SenderConfig]:
        return {sender.number: sender for sender in self.senders}

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for redaction from upstream text."""
        return tuple(secret for sender in self.senders for secret in sender.secrets)


def load_senders(path: Path, environ: Mapping[str, str]) -> Senders:
    """The senders file at ``path``, checked, its secrets read from ``environ`` and files."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"--senders {path} is unreadable: {reason}") from None
    return parse_senders(text, path, environ)


def parse_senders(text: str, path: Path, environ: Mapping[str, str]) -> Senders:
    """The senders a TOML ``text`` describes (``path`` names it in errors and anchors relative
    file paths)."""
    where = f"--senders {path}"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}: not TOML: {error}") from None
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: default_sender, senders)")
    raw = document.get("senders")
    if not isinstance(raw, list) or not raw or not all(isinstance(s, dict) for s in raw):
        raise ConfigError(f"{where}: key 'senders' must be one or more [[senders]] tables")
    senders: list[SenderConfig] = []
    for index, table in enumerate(raw, start=1):
        sender = _sender(table, index, _Reader(where, path.parent, environ))
        if any(sender.number == other.number for other in senders):
            raise ConfigError(
                f"{where}: sender {sender.number}: key 'number': duplicate, another sender has it"
            )
        senders.append(sender)
    default = document.get("default_sender")
    if default is None:
        if len(senders) > 1:
            raise ConfigError(
                f"{where}: key 'default_sender' is required with {len(senders)} senders"
            )
        default = senders[0].number
    if not isinstance(default, str) or default not in {s.number for s in senders}:
        raise ConfigError(f"{where}: key 'default_sender' must be the number of one of the senders")
    return Senders(tuple(senders), default)


class _Reader:
    """Reads one sender's values, naming the file, the sender and the key in every error."""

    def __init__(self, where: str, base: Path, environ: Mapping[str, str]) -> None:
        self.where = where
        self.base = base
        self.environ = environ
        self.sender = ""

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: sender {self.sender}: key {key!r}: {problem}")

    def string(self, table: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing (required)")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string")
        return value

    def path(self, table: Mapping[str, Any], key: str) -> Path | None:
        value = self.string(table, key)
        return None if value is None else self.base / value

    def secret(self, table: Mapping[str, Any], name: str) -> str | None:
        """The secret ``name`` from ``{name}_env`` or ``{name}_file``; None if neither is set."""
        env_key, file_key = f"{name}_env", f"{name}_file"
        variable, file = self.string(table, env_key), self.path(table, file_key)
        if variable is not None and file is not None:
            raise self.fail(file_key, f"give {env_key} or {file_key}, not both")
        if variable is not None:
            if _VARIABLE_NAME.fullmatch(variable) is None:
                # Not echoed: what stands here may be the secret itself, written by mistake.
                raise self.fail(env_key, "must be the name of an environment variable")
            value = self.environ.get(variable)
            if value is None:
                raise self.fail(env_key, f"the environment variable {variable} is not set")
            if not value:
                raise self.fail(env_key, f"the environment variable {variable} is empty")
            return value
        if file is not None:
            try:
                return read_secret(file)
            except ConfigError as error:
                raise self.fail(file_key, str(error)) from None
        return None


def _sender(table: Mapping[str, Any], index: int, read: _Reader) -> SenderConfig:
    number = table.get("number")
    valid = isinstance(number, str) and is_sender_number(number)
    read.sender = number if valid and isinstance(number, str) else f"#{index}"
    if not valid or not isinstance(number, str):
        raise read.fail("number", "must be the business phone number: 6 to 15 digits, no '+'")
    backend = table.get("backend")
    if backend not in BACKENDS:
        raise read.fail("backend", f"must be one of {', '.join(BACKENDS)}")
    allowed = _COMMON_KEYS | _BACKEND_KEYS[backend]
    for key in table:
        if key in _INLINE_SECRETS:
            raise read.fail(
                key, f"secrets are never written in the file: give {key}_env or {key}_file"
            )
        if key not in allowed:
            raise read.fail(key, f"unknown for backend {backend!r}")
    url = read.string(table, "url", required=True)
    assert url is not None
    problem = upstream_url_problem(url)
    if problem is not None:
        raise read.fail("url", problem)
    rate_limit = table.get("rate_limit")
    if rate_limit is not None and (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, int | float)
        or not 0 <= rate_limit < math.inf
    ):
        raise read.fail("rate_limit", "must be zero (no pacing) or requests per second")
    if backend == INFOBIP:
        api_key = read.secret(table, "api_key")
        if api_key is None:
            raise read.fail("api_key_env", "missing: give api_key_env or api_key_file")
        if not header_safe(api_key):
            raise read.fail(_given(table, "api_key"), "the key holds characters a header cannot")
        return SenderConfig(
            number,
            backend,
            url,
            api_key=api_key,
            rate_limit=None if rate_limit is None else float(rate_limit),
        )
    username = read.string(table, "username")
    password = read.secret(table, "password")
    token = read.secret(table, "token")
    if username is not None and token is not None:
        raise read.fail(
            _given(table, "token"), "give a login (username) or a static token, not both"
        )
    if token is not None and not header_safe(token):
        raise read.fail(_given(table, "token"), "the token holds characters a header cannot")
    if username is None and token is None:
        raise read.fail("username", "missing: give username and password_env, or token_env")
    if username is not None and password is None:
        raise read.fail("password_env", "missing: username needs password_env or password_file")
    if username is not None and ":" in username:
        raise read.fail("username", "must hold no ':'")
    return SenderConfig(
        number,
        backend,
        url,
        username=username,
        password=password if username is not None else None,
        token=token,
        webhook_secret=read.secret(table, "webhook_secret"),
        ca_file=read.path(table, "ca_file"),
        rate_limit=None if rate_limit is None else float(rate_limit),
    )


def _given(table: Mapping[str, Any], name: str) -> str:
    """Which of ``{name}_env`` and ``{name}_file`` the table gives (for messages)."""
    return f"{name}_file" if f"{name}_file" in table else f"{name}_env"
