"""The real ``identity-gateway`` console script, run as a subprocess (spec 3).

Bad configuration must stop start-up with exit status 2, exactly one line on stderr naming the
problem, nothing on stdout, and nothing listening.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import __version__

HANG_GUARD = 20.0  # seconds; a hang guard, not a timing assertion
URL = "https://graph.wa.example.com"
PASSWORD = "pw-Zx71-SECRET"
TOKEN = "tok-Kq93-SECRET"
GATEWAY = Path(sys.executable).parent / "identity-gateway"


def clean_env(**variables: str) -> dict[str, str]:
    """The inherited environment minus every IDENTITY_GATEWAY_* variable, plus ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("IDENTITY_GATEWAY_")
    }
    env.update(variables)
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def assert_nothing_listens(port: int) -> None:
    """Nothing holds the port: binding it ourselves succeeds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def serve_argv(port: int) -> list[str]:
    return [str(GATEWAY), "serve", "--listen", f"127.0.0.1:{port}", "--upstream-url", URL]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@dataclasses.dataclass(frozen=True)
class BadConfig:
    """Extra ``serve`` arguments and IDENTITY_GATEWAY_* variables; the text stderr must name."""

    name: str
    build: Callable[[Path], tuple[list[str], dict[str, str]]]
    names: str


LOGIN = {"IDENTITY_GATEWAY_UPSTREAM_PASSWORD": PASSWORD}
WITH_TOKEN = {"IDENTITY_GATEWAY_UPSTREAM_TOKEN": TOKEN}

BAD_CONFIGS = [
    BadConfig("missing-upstream-url", lambda _: ([], WITH_TOKEN), "--upstream-url"),
    BadConfig(
        "http-to-a-remote-host",
        lambda _: (["--upstream-url", "http://graph.wa.example.com"], WITH_TOKEN),
        "--upstream-url",
    ),
    BadConfig(
        "token-and-username",
        lambda _: (
            ["--upstream-url", URL, "--upstream-username", "admin"],
            {**WITH_TOKEN, **LOGIN},
        ),
        "--upstream-username",
    ),
    BadConfig("no-credentials", lambda _: (["--upstream-url", URL], {}), "credentials"),
    BadConfig(
        "zero-timeout",
        lambda _: (["--upstream-url", URL, "--upstream-timeout", "0"], WITH_TOKEN),
        "--upstream-timeout",
    ),
    BadConfig(
        "negative-timeout",
        lambda _: (["--upstream-url", URL, "--upstream-timeout=-1"], WITH_TOKEN),
        "--upstream-timeout",
    ),
    BadConfig(
        "missing-ca-file",
        lambda tmp: (
            ["--upstream-url", URL, "--upstream-ca-file", str(tmp / "missing.pem")],
            WITH_TOKEN,
        ),
        "--upstream-ca-file",
    ),
    BadConfig(
        "garbage-ca-file",
        lambda tmp: (
            [
                "--upstream-url",
                URL,
                "--upstream-ca-file",
                str(write(tmp / "ca.pem", "not a certificate\n")),
            ],
            WITH_TOKEN,
        ),
        "--upstream-ca-file",
    ),
    BadConfig(
        "env-not-a-number",
        lambda _: (["--upstream-url", URL], {**WITH_TOKEN, "IDENTITY_GATEWAY_CACHE_TTL": "soon"}),
        "IDENTITY_GATEWAY_CACHE_TTL",
    ),
    BadConfig(
        "env-insecure-maybe",
        lambda _: (
            ["--upstream-url", URL],
            {**WITH_TOKEN, "IDENTITY_GATEWAY_UPSTREAM_INSECURE": "maybe"},
        ),
        "IDENTITY_GATEWAY_UPSTREAM_INSECURE",
    ),
    BadConfig(
        "empty-token-file",
        lambda tmp: (
            ["--upstream-url", URL, "--upstream-token-file", str(write(tmp / "token", "\n"))],
            {},
        ),
        "token",
    ),
    BadConfig(
        "bad-metrics-listen",
        lambda _: (["--upstream-url", URL, "--metrics-listen", "9100"], WITH_TOKEN),
        "--metrics-listen",
    ),
    BadConfig(
        "flag-not-a-number",
        lambda _: (["--upstream-url", URL, "--upstream-timeout", "soon"], WITH_TOKEN),
        "--upstream-timeout",
    ),
    BadConfig(
        "url-with-a-malformed-port",
        lambda _: (["--upstream-url", "https://graph.wa.example.com:abc"], WITH_TOKEN),
        "--upstream-url",
    ),
]


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[bad.name for bad in BAD_CONFIGS])
def test_bad_configuration_exits_2_with_one_stderr_line_before_listening(
    bad: BadConfig, tmp_path: Path
) -> None:
    port = free_port()
    extra_args, variables = bad.build(tmp_path)

    result = run(
        [str(GATEWAY), "serve", "--listen", f"127.0.0.1:{port}", *extra_args],
        clean_env(**variables),
        tmp_path,
    )

    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert bad.names in lines[0]
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_nothing_listens(port)


@pytest.mark.parametrize(
    "extra_args",
    [
        ["--upstream-timeout", "0"],
        ["--upstream-url", "http://graph.wa.example.com"],
        ["--upstream-token-file", "/nonexistent/token"],
        ["--log-level", "loud"],
    ],
    ids=["timeout", "http-url", "token-file", "log-level"],
)
def test_password_from_the_environment_never_appears_in_errors(
    extra_args: list[str], tmp_path: Path
) -> None:
    port = free_port()

    result = run(
        [
            str(GATEWAY),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream-url",
            URL,
            "--upstream-username",
            "admin",
            *extra_args,
        ],
        clean_env(IDENTITY_GATEWAY_UPSTREAM_PASSWORD=PASSWORD),
        tmp_path,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() != ""
    assert PASSWORD not in result.stderr
    assert PASSWORD not in result.stdout
    assert_nothing_listens(port)


def test_token_from_the_environment_never_appears_in_errors(tmp_path: Path) -> None:
    port = free_port()

    result = run(
        [*serve_argv(port), "--upstream-username", "admin"],
        clean_env(
            IDENTITY_GATEWAY_UPSTREAM_TOKEN=TOKEN, IDENTITY_GATEWAY_UPSTREAM_PASSWORD=PASSWORD
        ),
        tmp_path,
    )

    assert result.returncode == 2, result.stderr
    assert TOKEN not in result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize(
    ("flag", "secret"),
    [("--upstream-password", PASSWORD), ("--upstream-token", TOKEN)],
    ids=["password", "token"],
)
def test_secret_given_as_a_plain_flag_is_refused_without_echoing_it(
    flag: str, secret: str, tmp_path: Path
) -> None:
    port = free_port()

    result = run(
        [*serve_argv(port), "--upstream-username", "admin", flag, secret],
        clean_env(),
        tmp_path,
    )

    assert secret not in result.stderr
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr
    assert result.stdout == ""
    assert_nothing_listens(port)


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    result = run([str(GATEWAY), "--version"], clean_env(), tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"identity-gateway {__version__}"


def test_python_dash_m_gateway_help_lists_every_command(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "gateway", "--help"], clean_env(), tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: identity-gateway")
    for command in ("serve", "emulator", "get", "ack"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), command


def test_serve_help_lists_every_spec_flag_and_no_plain_secret_flag(tmp_path: Path) -> None:
    result = run([str(GATEWAY), "serve", "--help"], clean_env(), tmp_path)

    assert result.returncode == 0, result.stderr
    help_text = result.stdout
    for flag in (
        "--listen",
        "--upstream-url",
        "--upstream-username",
        "--upstream-password-file",
        "--upstream-token-file",
        "--upstream-ca-file",
        "--upstream-insecure",
        "--upstream-timeout",
        "--cache-ttl",
        "--cache-max-entries",
        "--metrics-listen",
        "--log-level",
    ):
        assert flag in help_text, flag
    assert re.search(r"--upstream-password(?!-file)", help_text) is None
    assert re.search(r"--upstream-token(?!-file)", help_text) is None


def test_get_without_a_reachable_gateway_exits_1_with_a_json_error(tmp_path: Path) -> None:
    port = free_port()

    result = run(
        [str(GATEWAY), "get", "16315551234", "--target", f"127.0.0.1:{port}"],
        clean_env(),
        tmp_path,
    )

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert json.loads(result.stderr)["code"] == "UNAVAILABLE"
