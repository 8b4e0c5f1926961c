"""The serve configuration: flags, IDENTITY_GATEWAY_* variables, secrets and validation (spec 3).

Everything goes through the real parser (``build_parser().parse_args``) and
``config_from_args``, with an explicit environment mapping, never ``os.environ``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import ssl
from pathlib import Path
from typing import Any

import certifi
import pytest

from gateway.app import settings
from gateway.app.cli import EXIT_CONFIG, build_parser, config_from_args, main
from gateway.app.config import ConfigError, GatewayConfig
from gateway.app.startup import prepare

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

URL = "https://graph.wa.example.com"
TOKEN = "tok-Kq93-SECRET"
PASSWORD = "pw-Zx71-SECRET"
ENV_URL = "IDENTITY_GATEWAY_UPSTREAM_URL"
ENV_TOKEN = "IDENTITY_GATEWAY_UPSTREAM_TOKEN"
ENV_PASSWORD = "IDENTITY_GATEWAY_UPSTREAM_PASSWORD"
TOKEN_ENV: dict[str, str] = {ENV_URL: URL, ENV_TOKEN: TOKEN}
LOGIN_ENV: dict[str, str] = {ENV_URL: URL, ENV_PASSWORD: PASSWORD}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def load(argv: list[str], environ: dict[str, str]) -> GatewayConfig:
    config = config_from_args(parse(*argv), environ)
    return config


def config_error(argv: list[str], environ: dict[str, str]) -> str:
    """The ConfigError message the arguments and environment produce (fails if none)."""
    with pytest.raises(ConfigError) as caught:
        config_from_args(parse(*argv), environ)
    return str(caught.value)


def startup_error(argv: list[str], environ: dict[str, str]) -> str:
    """The ConfigError message start-up (``prepare``) gives for the configuration's files; the
    configuration itself reads no file, so it must be accepted first."""
    config = load(argv, environ)
    with pytest.raises(ConfigError) as caught:
        prepare(config)
    return str(caught.value)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults ------------------------------------------------------------------------------


def test_defaults_match_the_spec_table() -> None:
    config = load([], TOKEN_ENV)

    assert config.listen == "[::]:50051"
    assert config.upstream_timeout == 5
    assert config.cache_ttl == 30
    assert config.cache_max_entries == 100_000
    assert config.log_level == "info"
    assert config.metrics_listen is None
    assert config.upstream_insecure is False
    assert config.upstream_ca_file is None
    assert config.upstream_username is None


def test_gateway_config_defaults_match_the_spec_table() -> None:
    config = GatewayConfig(upstream_url=URL, upstream_token=TOKEN)

    assert config.listen == "[::]:50051"
    assert config.upstream_timeout == 5
    assert config.cache_ttl == 30
    assert config.cache_max_entries == 100_000
    assert config.log_level == "info"
    assert config.metrics_listen is None
    assert config.upstream_insecure is False


# --- every flag from the environment, flag wins ---------------------------------------------

CA_FILE = certifi.where()


@dataclasses.dataclass(frozen=True)
class Setting:
    flag: str
    attribute: str
    env_value: str
    flag_value: str
    expected_from_env: Any
    expected_from_flag: Any
    base_env: dict[str, str] = dataclasses.field(default_factory=lambda: dict(TOKEN_ENV))

    @property
    def env_name(self) -> str:
        return "IDENTITY_GATEWAY_" + self.flag.removeprefix("--").upper().replace("-", "_")


SETTINGS = [
    Setting("--listen", "listen", "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7001",
            "127.0.0.1:7002"),
    Setting("--upstream-url", "upstream_url", "https://env.example.com",
            "https://flag.example.com", "https://env.example.com", "https://flag.example.com",
            base_env={ENV_TOKEN: TOKEN}),
    Setting("--upstream-username", "upstream_username", "env-user", "flag-user", "env-user",
            "flag-user", base_env=dict(LOGIN_ENV)),
    Setting("--upstream-ca-file", "upstream_ca_file", CA_FILE, CA_FILE, Path(CA_FILE),
            Path(CA_FILE)),
    Setting("--upstream-timeout", "upstream_timeout", "2.5", "7", 2.5, 7.0),
    Setting("--cache-ttl", "cache_ttl", "0", "12.5", 0.0, 12.5),
    Setting("--cache-max-entries", "cache_max_entries", "10", "20", 10, 20),
    Setting("--metrics-listen", "metrics_listen", "127.0.0.1:9101", "127.0.0.1:9102",
            "127.0.0.1:9101", "127.0.0.1:9102"),
    Setting("--log-level", "log_level", "debug", "error", "debug", "error"),
]  # fmt: skip
SETTING_IDS = [setting.flag for setting in SETTINGS]


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_setting_can_come_from_its_environment_variable(setting: Setting) -> None:
    environ = {**setting.base_env, setting.env_name: setting.env_value}

    config = load([], environ)

    assert getattr(config, setting.attribute) == setting.expected_from_env


@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_flag_wins_over_its_environment_variable(setting: Setting) -> None:
    environ = {**setting.base_env, setting.env_name: setting.env_value}

    config = load([setting.flag, setting.flag_value], environ)

    assert getattr(config, setting.attribute) == setting.expected_from_flag


def test_every_serve_flag_has_an_environment_test() -> None:
    """A new serve flag must be added to SETTINGS or to the explicit tests below."""
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    serve = subparsers.choices["serve"]
    flags = {
        option
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    explicitly_tested = {
        "--upstream-password-file",
        "--upstream-token-file",
        "--upstream-insecure",
        "--no-upstream-insecure",
        "--reflection",
        "--no-reflection",
        "--shutdown-grace",
        "--workers",
        "--upstream-rate-limit",
        "--upstream-burst",
        "--upstream-max-in-flight",
        "--upstream-max-waiting",
        "--upstream-retries",
        "--authz-policy",
        "--tls-cert",  # the three listener TLS flags: tests/test_tls.py
        "--tls-key",
        "--tls-client-ca",
        "--webhook-listen",  # tests/test_webhook_loop.py
        "--cache-backend",  # tests/test_shared_cache.py
        "--cache-backend-timeout",
        "--senders",  # tests/test_senders.py
        "--webhook-secret-file",  # these five: tests/test_webhook_auth.py
        "--webhook-allow-unauthenticated",
        "--no-webhook-allow-unauthenticated",
        "--webhook-tls-cert",
        "--webhook-tls-key",
    }

    assert flags == {setting.flag for setting in SETTINGS} | explicitly_tested


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on"])
def test_upstream_insecure_can_be_switched_on_from_the_environment(value: str) -> None:
    config = load([], {**TOKEN_ENV, "IDENTITY_GATEWAY_UPSTREAM_INSECURE": value})

    assert config.upstream_insecure is True


@pytest.mark.parametrize("value", ["0", "false", "no", "off"])
def test_upstream_insecure_stays_off_when_the_environment_says_false(value: str) -> None:
    config = load([], {**TOKEN_ENV, "IDENTITY_GATEWAY_UPSTREAM_INSECURE": value})

    assert config.upstream_insecure is False


def test_upstream_insecure_flag_wins_over_a_false_environment_variable() -> None:
    environ = {**TOKEN_ENV, "IDENTITY_GATEWAY_UPSTREAM_INSECURE": "false"}

    config = load(["--upstream-insecure"], environ)

    assert config.upstream_insecure is True


def test_reflection_is_on_by_default_and_switched_off_by_flag_or_environment() -> None:
    assert load([], TOKEN_ENV).reflection is True
    assert load(["--no-reflection"], TOKEN_ENV).reflection is False
    off_env = {**TOKEN_ENV, "IDENTITY_GATEWAY_REFLECTION": "false"}
    assert load([], off_env).reflection is False
    assert load(["--reflection"], off_env).reflection is True


def test_a_boolean_environment_variable_must_say_true_or_false() -> None:
    message = config_error([], {**TOKEN_ENV, "IDENTITY_GATEWAY_REFLECTION": "maybe"})

    assert "IDENTITY_GATEWAY_REFLECTION" in message


def test_workers_come_from_flag_or_environment_and_are_bounded() -> None:
    assert load([], TOKEN_ENV).workers == 1
    assert load(["--workers", "2"], TOKEN_ENV).workers == 2
    assert load([], {**TOKEN_ENV, "IDENTITY_GATEWAY_WORKERS": "3"}).workers == 3
    assert "--workers" in config_error(["--workers", "0"], TOKEN_ENV)


@pytest.mark.parametrize(
    ("flag", "attribute", "default", "value"),
    [
        ("--upstream-rate-limit", "upstream_rate_limit", 20.0, 0.0),
        ("--upstream-burst", "upstream_burst", 60, 5),
        ("--upstream-max-in-flight", "upstream_max_in_flight", 8, 4),
        ("--upstream-max-waiting", "upstream_max_waiting", 256, 0),
        ("--upstream-retries", "upstream_retries", 2, 0),
    ],
)
def test_upstream_safeguards_have_defaults_flags_and_environment_variables(
    flag: str, attribute: str, default: float, value: float
) -> None:
    env_var = "IDENTITY_GATEWAY_" + flag.removeprefix("--").upper().replace("-", "_")
    assert getattr(load([], TOKEN_ENV), attribute) == default
    assert getattr(load([flag, str(value)], TOKEN_ENV), attribute) == value
    assert getattr(load([], {**TOKEN_ENV, env_var: str(value)}), attribute) == value


@pytest.mark.parametrize(
    "argv",
    [
        ["--upstream-rate-limit", "-1"],
        ["--upstream-burst", "0"],
        ["--upstream-max-in-flight", "0"],
        ["--upstream-max-waiting", "-1"],
        ["--upstream-retries", "11"],
    ],
)
def test_bad_upstream_safeguards_are_rejected_naming_the_flag(argv: list[str]) -> None:
    assert argv[0] in config_error(argv, TOKEN_ENV)


def test_the_cache_backend_is_memory_or_a_redis_url() -> None:
    assert load([], TOKEN_ENV).cache_backend == "memory"
    redis_env = {**TOKEN_ENV, "IDENTITY_GATEWAY_CACHE_BACKEND": "redis://10.0.0.5:6379/2"}
    assert load([], redis_env).cache_backend == "redis://10.0.0.5:6379/2"
    assert "--cache-backend" in config_error(["--cache-backend", "memcached://x"], TOKEN_ENV)
    assert load(["--cache-backend-timeout", "1.5"], TOKEN_ENV).cache_backend_timeout == 1.5
    assert "--cache-backend-timeout" in config_error(["--cache-backend-timeout", "0"], TOKEN_ENV)


def test_shutdown_grace_comes_from_flag_then_environment_then_default() -> None:
    environ = {**TOKEN_ENV, "IDENTITY_GATEWAY_SHUTDOWN_GRACE": "3"}

    default_grace = config_from_args(parse(), TOKEN_ENV).shutdown_grace
    env_grace = config_from_args(parse(), environ).shutdown_grace
    flag_grace = config_from_args(parse("--shutdown-grace", "4.5"), environ).shutdown_grace

    assert default_grace == 10
    assert env_grace == 3
    assert flag_grace == 4.5


# --- secrets -------------------------------------------------------------------------------


def test_password_comes_from_the_environment() -> None:
    config = load(["--upstream-username", "admin"], LOGIN_ENV)

    assert config.upstream_username == "admin"
    assert config.upstream_password == PASSWORD
    assert config.login_mode


def test_password_file_wins_over_the_environment_and_loses_its_trailing_newline(
    tmp_path: Path,
) -> None:
    password_file = write(tmp_path / "password", "from-file-pw\n")

    config = load(
        ["--upstream-username", "admin", "--upstream-password-file", str(password_file)],
        LOGIN_ENV,
    )

    assert config.upstream_password == "from-file-pw"


def test_password_file_can_be_named_in_the_environment(tmp_path: Path) -> None:
    password_file = write(tmp_path / "password", "env-file-pw\n")
    environ = {
        ENV_URL: URL,
        "IDENTITY_GATEWAY_UPSTREAM_USERNAME": "admin",
        "IDENTITY_GATEWAY_UPSTREAM_PASSWORD_FILE": str(password_file),
    }

    config = load([], environ)

    assert config.upstream_password == "env-file-pw"


def test_token_comes_from_the_environment() -> None:
    config = load([], TOKEN_ENV)

    assert config.upstream_token == TOKEN
    assert not config.login_mode


def test_token_file_wins_over_the_environment_and_loses_its_trailing_newline(
    tmp_path: Path,
) -> None:
    token_file = write(tmp_path / "token", "from-file-token\n")

    config = load(["--upstream-token-file", str(token_file)], TOKEN_ENV)

    assert config.upstream_token == "from-file-token"


def test_token_file_can_be_named_in_the_environment(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "env-file-token\n")
    environ = {ENV_URL: URL, "IDENTITY_GATEWAY_UPSTREAM_TOKEN_FILE": str(token_file)}

    config = load([], environ)

    assert config.upstream_token == "env-file-token"


@pytest.mark.parametrize(
    "argv",
    [
        ["--upstream-password", PASSWORD],
        [f"--upstream-password={PASSWORD}"],
        ["--upstream-token", TOKEN],
        [f"--upstream-token={TOKEN}"],
    ],
    ids=["password", "password=", "token", "token="],
)
def test_secrets_are_not_accepted_as_plain_flags(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("--upstream-url", URL, "--upstream-username", "admin", *argv)

    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unrecognized arguments: --upstream-" in err
    assert PASSWORD not in err
    assert TOKEN not in err


def test_repr_of_a_login_config_never_shows_the_password() -> None:
    config = load(["--upstream-username", "admin"], LOGIN_ENV)

    assert config.upstream_password == PASSWORD  # it is there, just not shown
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)


def test_repr_of_a_token_config_never_shows_the_token() -> None:
    config = load([], TOKEN_ENV)

    assert config.upstream_token == TOKEN
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config)


def test_repr_of_a_directly_built_config_never_shows_secrets() -> None:
    login = GatewayConfig(upstream_url=URL, upstream_username="admin", upstream_password=PASSWORD)
    token = GatewayConfig(upstream_url=URL, upstream_token=TOKEN)

    assert PASSWORD not in repr(login)
    assert TOKEN not in repr(token)


# --- bad configuration -----------------------------------------------------------------------


def test_missing_upstream_url_is_rejected() -> None:
    message = config_error([], {ENV_TOKEN: TOKEN})

    assert "--upstream-url" in message


@pytest.mark.parametrize(
    "url", ["http://graph.wa.example.com", "http://10.0.0.7:9090", "http://192.168.1.1"]
)
def test_plain_http_to_a_non_loopback_host_is_rejected(url: str) -> None:
    message = config_error(["--upstream-url", url], TOKEN_ENV)

    assert "--upstream-url" in message
    assert "https" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9090",
        "http://127.0.0.1",
        "http://localhost:9090",
        "http://localhost",
        "http://[::1]:9090",
        "http://[::1]",
    ],
)
def test_plain_http_to_a_loopback_host_is_allowed(url: str) -> None:
    config = load(["--upstream-url", url], TOKEN_ENV)

    assert config.upstream_url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://admin:hunter2-SECRET@graph.wa.example.com",
        "https://admin@graph.wa.example.com",
        "https://graph.wa.example.com/?access_token=hunter2-SECRET",
        "https://graph.wa.example.com/v1?x=1",
    ],
    ids=["user-and-password", "user", "token-query", "query"],
)
def test_upstream_url_with_credentials_or_a_query_is_rejected_without_echoing_it(
    url: str,
) -> None:
    message = config_error(["--upstream-url", url], TOKEN_ENV)

    assert "--upstream-url" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("url", ["ftp://graph.wa.example.com", "https://", "graph.wa.example.com"])
def test_upstream_url_that_is_not_an_http_url_is_rejected(url: str) -> None:
    message = config_error(["--upstream-url", url], TOKEN_ENV)

    assert "--upstream-url" in message


@pytest.mark.parametrize(
    "url", ["https://graph.wa.example.com:abc", "https://graph.wa.example.com:99999"]
)
def test_upstream_url_with_a_malformed_port_is_rejected(url: str) -> None:
    message = config_error(["--upstream-url", url], TOKEN_ENV)

    assert "--upstream-url" in message


def test_token_and_username_together_are_rejected() -> None:
    environ = {**TOKEN_ENV, ENV_PASSWORD: PASSWORD}

    message = config_error(["--upstream-username", "admin"], environ)

    assert "--upstream-username" in message
    assert "--upstream-token-file" in message
    assert TOKEN not in message
    assert PASSWORD not in message


def test_token_file_and_username_together_are_rejected(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "file-token\n")
    environ = {ENV_URL: URL, ENV_PASSWORD: PASSWORD}

    message = config_error(
        ["--upstream-username", "admin", "--upstream-token-file", str(token_file)], environ
    )

    assert "--upstream-username" in message
    assert "--upstream-token-file" in message


def test_username_without_a_password_is_rejected() -> None:
    message = config_error(["--upstream-username", "admin"], {ENV_URL: URL})

    assert "--upstream-username" in message
    assert "IDENTITY_GATEWAY_UPSTREAM_PASSWORD" in message


def test_no_credentials_at_all_are_rejected() -> None:
    message = config_error([], {ENV_URL: URL})

    assert "--upstream-username" in message
    assert "--upstream-token-file" in message


def test_password_without_a_username_is_not_credentials() -> None:
    message = config_error([], LOGIN_ENV)

    assert "--upstream-username" in message
    assert PASSWORD not in message


def test_token_that_cannot_be_a_header_is_rejected_without_echoing_it() -> None:
    bad_token = "tok-SECRET\r\nX-Injected: 1"

    message = config_error([], {ENV_URL: URL, ENV_TOKEN: bad_token})

    assert "token" in message
    assert "tok-SECRET" not in message


def test_missing_ca_file_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"

    message = startup_error(["--upstream-ca-file", str(missing)], TOKEN_ENV)

    assert "--upstream-ca-file" in message
    assert str(missing) in message


@pytest.mark.parametrize(
    "content",
    ["this is not a certificate\n", "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n", ""],
    ids=["text", "broken-pem", "empty"],
)
def test_garbage_ca_file_is_rejected(tmp_path: Path, content: str) -> None:
    garbage = write(tmp_path / "ca.pem", content)

    message = startup_error(["--upstream-ca-file", str(garbage)], TOKEN_ENV)

    assert "--upstream-ca-file" in message


def test_a_directory_as_ca_file_is_rejected(tmp_path: Path) -> None:
    message = startup_error(["--upstream-ca-file", str(tmp_path)], TOKEN_ENV)

    assert "--upstream-ca-file" in message


def test_a_readable_ca_file_passes_start_up_and_verifies_the_upstream() -> None:
    runtime = prepare(load(["--upstream-ca-file", CA_FILE], TOKEN_ENV))

    context = runtime.upstream_tls[""]  # flag mode's one sender
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_a_bad_ca_file_stops_the_command_line_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-ca.pem"

    status = main(["serve", "--upstream-ca-file", str(missing)], TOKEN_ENV)

    assert status == EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--upstream-ca-file" in err
    assert str(missing) in err


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan"])
def test_non_positive_upstream_timeout_is_rejected(value: str) -> None:
    message = config_error(["--upstream-timeout", value], TOKEN_ENV)

    assert "--upstream-timeout" in message


def test_non_positive_upstream_timeout_from_the_environment_is_rejected() -> None:
    message = config_error([], {**TOKEN_ENV, "IDENTITY_GATEWAY_UPSTREAM_TIMEOUT": "0"})

    assert "upstream-timeout" in message.lower().replace("_", "-")


@pytest.mark.parametrize("value", ["-1", "-0.001", "nan"])
def test_negative_cache_ttl_is_rejected(value: str) -> None:
    message = config_error(["--cache-ttl", value], TOKEN_ENV)

    assert "--cache-ttl" in message


def test_zero_cache_ttl_is_allowed_and_disables_caching() -> None:
    config = load(["--cache-ttl", "0"], TOKEN_ENV)

    assert config.cache_ttl == 0


@pytest.mark.parametrize("value", ["0", "-5"])
def test_cache_max_entries_below_one_is_rejected(value: str) -> None:
    message = config_error(["--cache-max-entries", value], TOKEN_ENV)

    assert "--cache-max-entries" in message


@pytest.mark.parametrize("value", ["verbose", "trace", "critical", ""])
def test_unknown_log_level_is_rejected(value: str) -> None:
    message = config_error(["--log-level", value], TOKEN_ENV)

    assert "--log-level" in message


@pytest.mark.parametrize(
    "address",
    ["50051", "localhost", "localhost:http", "localhost:70000", ":50051", "127.0.0.1:"],
)
def test_bad_listen_address_is_rejected(address: str) -> None:
    message = config_error(["--listen", address], TOKEN_ENV)

    assert "--listen" in message


@pytest.mark.parametrize("address", ["9100", "localhost:metrics", "localhost:65536"])
def test_bad_metrics_listen_address_is_rejected(address: str) -> None:
    message = config_error(["--metrics-listen", address], TOKEN_ENV)

    assert "--metrics-listen" in message


@pytest.mark.parametrize("flag", ["--upstream-password-file", "--upstream-token-file"])
def test_unreadable_secret_file_is_rejected(tmp_path: Path, flag: str) -> None:
    missing = tmp_path / "no-such-secret"

    message = config_error(["--upstream-username", "admin", flag, str(missing)], {ENV_URL: URL})

    assert str(missing) in message


@pytest.mark.parametrize("flag", ["--upstream-password-file", "--upstream-token-file"])
@pytest.mark.parametrize("content", ["", "\n", "   \n\n"], ids=["empty", "newline", "blank"])
def test_empty_secret_file_is_rejected(tmp_path: Path, flag: str, content: str) -> None:
    empty = write(tmp_path / "secret", content)

    message = config_error(["--upstream-username", "admin", flag, str(empty)], {ENV_URL: URL})

    assert str(empty) in message
    assert "empty" in message


def test_secret_file_that_is_not_text_is_rejected(tmp_path: Path) -> None:
    binary = tmp_path / "password"
    binary.write_bytes(b"\xff\xfe\x00garbage")

    message = config_error(
        ["--upstream-username", "admin", "--upstream-password-file", str(binary)], {ENV_URL: URL}
    )

    assert str(binary) in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IDENTITY_GATEWAY_UPSTREAM_TIMEOUT", "soon"),
        ("IDENTITY_GATEWAY_CACHE_TTL", "30s"),
        ("IDENTITY_GATEWAY_SHUTDOWN_GRACE", "ten"),
        ("IDENTITY_GATEWAY_CACHE_MAX_ENTRIES", "1.5"),
        ("IDENTITY_GATEWAY_CACHE_MAX_ENTRIES", "many"),
    ],
)
def test_environment_variable_with_a_non_number_is_rejected(name: str, value: str) -> None:
    message = config_error([], {**TOKEN_ENV, name: value})

    assert name in message


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_upstream_insecure_environment_variable_must_be_a_boolean(value: str) -> None:
    message = config_error([], {**TOKEN_ENV, "IDENTITY_GATEWAY_UPSTREAM_INSECURE": value})

    assert "IDENTITY_GATEWAY_UPSTREAM_INSECURE" in message


def test_negative_shutdown_grace_is_rejected() -> None:
    message = config_error(["--shutdown-grace", "-1"], TOKEN_ENV)

    assert "--shutdown-grace" in message


# --- GatewayConfig checks its own values ---------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"upstream_url": ""}, "--upstream-url"),
        ({"upstream_url": "http://graph.wa.example.com"}, "--upstream-url"),
        ({"upstream_timeout": 0.0}, "--upstream-timeout"),
        ({"upstream_timeout": -1.0}, "--upstream-timeout"),
        ({"cache_ttl": -1.0}, "--cache-ttl"),
        ({"cache_max_entries": 0}, "--cache-max-entries"),
        ({"log_level": "loud"}, "--log-level"),
        ({"listen": "nowhere"}, "--listen"),
        ({"metrics_listen": "nowhere"}, "--metrics-listen"),
        ({"upstream_username": "admin"}, "--upstream-username"),
        ({"upstream_token": None}, "--upstream-token-file"),
    ],
)
def test_gateway_config_rejects_bad_values_naming_the_setting(
    overrides: dict[str, Any], named: str
) -> None:
    values: dict[str, Any] = {"upstream_url": URL, "upstream_token": TOKEN, **overrides}

    with pytest.raises(ConfigError) as caught:
        GatewayConfig(**values)

    assert named in str(caught.value)


def test_gateway_config_reads_no_file_and_start_up_rejects_a_missing_ca_file() -> None:
    missing = Path("/nonexistent/ca.pem")
    config = GatewayConfig(upstream_url=URL, upstream_token=TOKEN, upstream_ca_file=missing)

    with pytest.raises(ConfigError) as caught:
        prepare(config)

    assert "--upstream-ca-file" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- the settings table: README and --help derive from it -------------------------------------


def readme_configuration_table() -> str:
    """The README's configuration table: under "### Configuration", from its header line to the
    first line that is not a table row."""
    lines = README.read_text(encoding="utf-8").splitlines()
    heading = lines.index("### Configuration")
    header = lines.index("| flag | environment variable | meaning | default |", heading)
    assert not [line for line in lines[heading + 1 : header] if line.startswith("#")], (
        "the table is not under the Configuration heading"
    )
    end = header
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[header:end]) + "\n"


def test_the_readme_configuration_table_is_derived_from_the_settings() -> None:
    # When this fails, regenerate the table: python -m gateway.app.settings
    assert readme_configuration_table() == settings.readme_table()


def serve_help_entries(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """``identity-gateway serve --help``: each option's entry (its flags and help) by each of its
    flags, with the whitespace argparse wraps it with removed."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--help"])
    assert exited.value.code == 0
    entries: dict[str, str] = {}
    flags: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):  # an option's first line: its flags, then maybe its help
            invocation = re.split(r"\s{2,}", line.strip())[0]
            flags = re.findall(r"--[\w-]+", invocation)
            entries.update(dict.fromkeys(flags, ""))
        elif not line.startswith("   "):  # not a wrapped help line: the entry has ended
            flags = []
        for flag in flags:
            entries[flag] += "".join(line.split())
    return entries


def test_serve_help_names_every_settings_flag_environment_variable_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries = serve_help_entries(capsys)
    for setting in settings.SETTINGS:
        flag = f"--{setting.flag}"
        assert flag in entries, f"serve --help does not list {flag}"
        entry = entries[flag]
        assert re.search(rf"{setting.env}(?!\w)", entry), f"{flag}: no {setting.env} in its help"
        first_words = " ".join(setting.help.replace("`", "").split()[:4])
        assert "".join(first_words.split()) in entry, f"{flag}: no {first_words!r} in its help"
        if setting.kind is bool:
            assert f"--no-{setting.flag}" in entries, f"serve --help does not list --no-{flag}"
