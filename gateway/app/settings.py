"""Every ``identity-gateway serve`` setting, stated once: its flag, environment variable,
default, check and help text.

The argument parser (:func:`add_arguments`), the reading of the environment (:func:`read`),
:class:`~gateway.app.config.GatewayConfig`'s defaults and checks, and the README's
configuration table (:func:`readme_table`, kept in step by a test) all derive from
:data:`SETTINGS`::

    python -m gateway.app.settings          # print the README table

Each flag ``--some-flag`` is also ``IDENTITY_GATEWAY_SOME_FLAG``; a flag on the command line
wins. Booleans are ``--flag`` / ``--no-flag``, and ``true`` / ``false`` in the environment.
Secrets are never flags: :data:`SECRET_VARIABLES` come from the environment (or the
``*-file`` flags) only.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "IDENTITY_GATEWAY_"
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another; the message names it."""


def env_name(flag: str) -> str:
    """``upstream-url`` → ``IDENTITY_GATEWAY_UPSTREAM_URL``."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def split_host_port(address: str, flag: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts; a ConfigError naming ``flag`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} must be HOST:PORT, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def upstream_url_problem(url: str) -> str | None:
    """What is wrong with an upstream base URL ("must be ..."), or None: ``https://`` with a
    host, or ``http://`` to a loopback host only; no credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an https:// URL with a host"
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        return "has an invalid port"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "must not carry credentials, a query or a fragment"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return "must use https:// (http:// only for loopback hosts)"
    return None


def header_safe(value: str) -> bool:
    """Whether a credential can be sent in an HTTP header as it is."""
    return bool(value) and value.isascii() and value.isprintable() and value.strip() == value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# A check returns what is wrong with a value ("must be ..."), or None when it is right.
Check = Callable[[Any], str | None]


def _range(low: float, high: float, rule: str, *, open_low: bool = False) -> Check:
    def check(value: Any) -> str | None:
        above = value > low if open_low else value >= low
        return None if above and value <= high else rule  # NaN fails both

    return check


def _host_port(value: Any) -> str | None:
    try:
        split_host_port(str(value), "")
    except ConfigError:
        return f"must be HOST:PORT, got {value!r}"
    return None


def _cache_backend(value: Any) -> str | None:
    if value == "memory":
        return None
    url = urllib.parse.urlsplit(str(value))
    if url.scheme in ("redis", "rediss") and url.hostname:
        return None
    return "must be memory or redis://host:port/db"


def _log_level(value: Any) -> str | None:
    return None if value in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


_SECONDS = _range(0.0, math.inf, "must be a positive number of seconds", open_low=True)
_AT_LEAST_1 = _range(1, math.inf, "must be at least 1")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``serve`` setting."""

    flag: str  # without the leading dashes
    kind: type  # str, int, float, bool or Path
    default: object  # None: unset
    help: str  # what it does, for --help and the README
    metavar: str = ""  # the value's name in --help and the README ("" for booleans)
    shown_default: str = ""  # the default as the README shows it, when not the value itself
    check: Check | None = None  # run by GatewayConfig on a value that is set
    in_config: bool = True  # False: read by start-up (a file), not a GatewayConfig field

    @property
    def env(self) -> str:
        return env_name(self.flag)

    @property
    def field(self) -> str:
        """The :class:`~gateway.app.config.GatewayConfig` attribute it sets."""
        return self.flag.replace("-", "_")

    def describe_default(self) -> str:
        if self.shown_default:
            return self.shown_default
        if self.kind is bool:
            return "on" if self.default else "off"
        return f"`{self.default}`"


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", str, "[::]:50051", "gRPC listen address", "HOST:PORT", check=_host_port),
    Setting(
        "senders",
        Path,
        None,
        "TOML file of the business numbers served and the upstream behind each (see "
        "[Senders](#senders)); with it, the `--upstream-*` connection flags are refused",
        "PATH",
        "none: the flags describe one `onprem` sender",
        in_config=False,
    ),
    Setting(
        "upstream-url",
        str,
        None,
        "WhatsApp API base URL; `https://`, or `http://` to loopback only",
        "URL",
        "required",
    ),
    Setting("upstream-username", str, None, "login user (selects login mode)", "NAME", "none"),
    Setting(
        "upstream-password-file",
        Path,
        None,
        "file holding the login password",
        "PATH",
        "none",
        in_config=False,
    ),
    Setting(
        "upstream-token-file",
        Path,
        None,
        "file holding a static bearer token (selects token mode)",
        "PATH",
        "none",
        in_config=False,
    ),
    Setting(
        "upstream-ca-file",
        Path,
        None,
        "CA bundle that verifies WhatsApp's (usually self-signed) certificate",
        "PATH",
        "system CAs",
    ),
    Setting(
        "upstream-insecure",
        bool,
        False,
        "skip TLS verification; logged as a warning at start",
    ),
    Setting(
        "upstream-timeout",
        float,
        5.0,
        "cap on one upstream HTTP request",
        "SECONDS",
        "`5`",
        check=_SECONDS,
    ),
    Setting(
        "cache-ttl",
        float,
        30.0,
        "how long an identity is served from the cache; `0` disables caching",
        "SECONDS",
        "`30`",
        check=_range(0.0, math.inf, "must be zero (no caching) or a positive number"),
    ),
    Setting(
        "cache-max-entries",
        int,
        100_000,
        "bound on cached identities; least recently used are evicted",
        "N",
        check=_AT_LEAST_1,
    ),
    Setting(
        "metrics-listen",
        str,
        None,
        "Prometheus `/metrics` over HTTP; unset = off",
        "HOST:PORT",
        "off",
        check=_host_port,
    ),
    Setting(
        "log-level",
        str,
        "info",
        "`debug`, `info`, `warning`, `error`",
        "LEVEL",
        check=_log_level,
    ),
    Setting(
        "shutdown-grace",
        float,
        10.0,
        "how long in-flight RPCs may run after SIGTERM",
        "SECONDS",
        "`10`",
        check=_range(0.0, math.inf, "must be zero or more seconds"),
    ),
    Setting("reflection", bool, True, "gRPC server reflection"),
    Setting(
        "workers",
        int,
        1,
        "processes sharing the port (`SO_REUSEPORT`), each with its own cache and upstream "
        "client; worker *k* serves metrics on the metrics port + *k*",
        "N",
        check=_range(1, 64, "must be between 1 and 64"),
    ),
    Setting(
        "upstream-rate-limit",
        float,
        20.0,
        "requests per second toward WhatsApp (token bucket); `0` = no pacing",
        "N",
        "`20`",
        check=_range(0.0, math.inf, "must be zero (off) or requests per second"),
    ),
    Setting("upstream-burst", int, 60, "burst allowed by the token bucket", "N", check=_AT_LEAST_1),
    Setting(
        "upstream-max-in-flight",
        int,
        8,
        "upstream requests at once (and pooled connections); raise it with the rate limit "
        "for a slow upstream",
        "N",
        check=_AT_LEAST_1,
    ),
    Setting(
        "upstream-max-waiting",
        int,
        256,
        "calls that may queue for an upstream slot or token; beyond it, "
        "`RESOURCE_EXHAUSTED` at once",
        "N",
        check=_range(0, math.inf, "must be zero or more"),
    ),
    Setting(
        "upstream-retries",
        int,
        2,
        "retries of an UNAVAILABLE-class outcome",
        "N",
        check=_range(0, 10, "must be between 0 and 10"),
    ),
    Setting(
        "authz-policy",
        Path,
        None,
        "caller authorization policy (see below); unset = every caller allowed",
        "PATH",
        "off",
        in_config=False,
    ),
    Setting(
        "cache-backend",
        str,
        "memory",
        "where cached identities live: this process, or Redis shared by every replica and worker",
        "memory\\|redis://host:port/db",
        check=_cache_backend,
    ),
    Setting(
        "cache-backend-timeout",
        float,
        0.25,
        "cap on one Redis call; a slower Redis counts as down (reads go upstream)",
        "SECONDS",
        check=_SECONDS,
    ),
    Setting(
        "webhook-listen",
        str,
        None,
        "HTTP endpoint for WhatsApp's webhook (`POST /webhook`); unset = off",
        "HOST:PORT",
        "off",
        check=_host_port,
    ),
    Setting(
        "webhook-secret-file",
        Path,
        None,
        "file holding the On-Premises webhook's secret (flag mode; with `--senders`, each "
        "sender's `webhook_secret_env` or `webhook_secret_file`)",
        "PATH",
        "none",
        in_config=False,
    ),
    Setting(
        "webhook-allow-unauthenticated",
        bool,
        False,
        "accept On-Premises webhooks without a secret; logged as a warning at start",
    ),
    Setting(
        "webhook-tls-cert",
        Path,
        None,
        "PEM certificate chain for the webhook listener; with `--webhook-tls-key` it speaks HTTPS",
        "PATH",
        "off (plain HTTP)",
    ),
    Setting(
        "webhook-tls-key",
        Path,
        None,
        "unencrypted PEM private key matching `--webhook-tls-cert`",
        "PATH",
        "none",
    ),
    Setting(
        "tls-cert",
        Path,
        None,
        "PEM certificate chain for the gRPC listener; with `--tls-key`, the listener speaks TLS",
        "PATH",
        "off (plaintext)",
    ),
    Setting(
        "tls-key", Path, None, "unencrypted PEM private key matching `--tls-cert`", "PATH", "none"
    ),
    Setting(
        "tls-client-ca",
        Path,
        None,
        "PEM CA bundle; callers must present a client certificate it signed (mutual TLS). "
        "Needs `--tls-cert` and `--tls-key`",
        "PATH",
        "off",
    ),
)
BY_FLAG: Mapping[str, Setting] = {setting.flag: setting for setting in SETTINGS}

# Secrets: environment variables only (or their *-file flag), never flags.
SECRET_VARIABLES: tuple[tuple[str, str], ...] = (
    ("upstream-password", "the login password itself"),
    ("upstream-token", "the static bearer token itself"),
    ("webhook-secret", "the On-Premises webhook's secret itself (flag mode)"),
)
# What describes flag mode's one sender: refused beside --senders (which describes each sender
# in its file), with every secret variable above.
FLAG_MODE_ONLY: tuple[str, ...] = (
    "upstream-url",
    "upstream-username",
    "upstream-password-file",
    "upstream-token-file",
    "upstream-ca-file",
    "upstream-insecure",
    "webhook-secret-file",
)


def flag_mode_conflict(given: str) -> ConfigError:
    """The error for ``given`` (a flag or variable of :data:`FLAG_MODE_ONLY` or
    :data:`SECRET_VARIABLES`) beside ``--senders``."""
    return ConfigError(
        f"--senders and {given} do not go together: with --senders, each sender's connection "
        "and secrets are in the senders file"
    )


def default(flag: str) -> Any:
    """The default of ``flag``: what :class:`~gateway.app.config.GatewayConfig` starts from."""
    return BY_FLAG[flag].default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting to ``serve``'s parser. Defaults are None: unset, so the environment
    can be read for it (:func:`read`)."""
    for setting in SETTINGS:
        shown = _plain(setting.describe_default())
        help_text = f"{_plain(setting.help)} (env {setting.env}; default {shown})"
        help_text = help_text.replace("%", "%%")
        if setting.kind is bool:
            parser.add_argument(
                f"--{setting.flag}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{setting.flag}",
                type=setting.kind,
                default=None,
                metavar=setting.metavar.replace("\\", ""),
                help=help_text,
            )


def _plain(markdown: str) -> str:
    """README text for a terminal: no backticks or emphasis."""
    return markdown.replace("`", "").replace("*", "")


def read(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's value: the flag, else its environment variable, else the default."""
    return {setting.flag: _value(setting, args, environ) for setting in SETTINGS}


def _value(setting: Setting, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    value = getattr(args, setting.field)
    if value is not None:
        return value
    raw = environ.get(setting.env)
    if raw is None or raw == "":
        return setting.default
    if setting.kind is bool:
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{setting.env} must be true or false")
        return raw.strip().lower() in _TRUE
    try:
        return setting.kind(raw)
    except ValueError:
        raise ConfigError(f"{setting.env}={raw!r} is not a valid {setting.kind.__name__}") from None


def check(setting: Setting, value: Any) -> None:
    """Raise ConfigError naming the flag if ``value`` breaks the setting's rule."""
    if value is not None and setting.check is not None:
        problem = setting.check(value)
        if problem is not None:
            raise ConfigError(f"--{setting.flag} {problem}")


def readme_table() -> str:
    """The README's configuration table, in Markdown."""
    lines = [
        "| flag | environment variable | meaning | default |",
        "|---|---|---|---|",
    ]
    secrets = dict(SECRET_VARIABLES)
    for setting in SETTINGS:
        if setting.kind is bool:
            flag = f"`--{setting.flag}`"
            if setting.default:
                flag = f"`--{setting.flag}` / `--no-{setting.flag}`"
            env = f"`{setting.env}` (`true`/`false`)"
        else:
            flag = f"`--{setting.flag} {setting.metavar}`"
            env = f"`{setting.env}`"
        lines.append(f"| {flag} | {env} | {setting.help} | {setting.describe_default()} |")
        secret = setting.flag.removesuffix("-file")
        if secret in secrets:
            lines.append(f"| | `{env_name(secret)}` | {secrets[secret]} | none |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(readme_table(), end="")
