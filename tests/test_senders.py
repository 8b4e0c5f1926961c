"""The senders file (spec §6): ``parse_senders`` / ``load_senders``, each sender's pacing, and
``--senders`` on the command line.

The file is parsed with an explicit environment mapping and files under ``tmp_path``; the
command line goes through the real parser, ``config_from_args`` and ``main``, never
``os.environ``. Every refusal must name the file, the sender (its number, or ``#N`` when the
number itself is bad) and the key, on one line, without a secret in it.
"""

from __future__ import annotations

import json
import math
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import certifi
import pytest

from gateway.app.cli import EXIT_CONFIG, build_parser, config_from_args, main
from gateway.app.config import ConfigError, GatewayConfig
from gateway.app.senders import (
    INFOBIP,
    ONPREM,
    SenderConfig,
    Senders,
    load_senders,
    parse_senders,
)
from gateway.app.startup import pace_of, prepare

ONPREM_NUMBER = "15550001111"
SECOND_ONPREM_NUMBER = "15550002222"
INFOBIP_NUMBER = "447796344125"
ONPREM_URL = "https://whatsapp-webapp.internal:9090"
INFOBIP_URL = "https://xxxxx.api.infobip.com"

# Recognisable secret values: none may ever appear in an error, a repr or stderr.
PASSWORD = "pw-Snd-Q81x-SECRET"
TOKEN = "tok-Snd-J27k-SECRET"
API_KEY = "key-Snd-V55m-SECRET"
WEBHOOK_SECRET = "hook-Snd-M03z-SECRET"
FILE_SECRET = "file-Snd-T44q-SECRET"
INLINE_SECRET = "inline-Snd-W09p-SECRET"
SECRETS = (PASSWORD, TOKEN, API_KEY, WEBHOOK_SECRET, FILE_SECRET, INLINE_SECRET)
ENVIRON: dict[str, str] = {
    "WA_PASSWORD": PASSWORD,
    "WA_TOKEN": TOKEN,
    "IB_API_KEY": API_KEY,
    "WA_WEBHOOK_SECRET": WEBHOOK_SECRET,
}
# The secret each backend key pair names, and the variable of ENVIRON holding it.
SECRET_VARIABLES = {
    "password": "WA_PASSWORD",
    "token": "WA_TOKEN",
    "api_key": "IB_API_KEY",
    "webhook_secret": "WA_WEBHOOK_SECRET",
}

Table = dict[str, object]


# --- building files ------------------------------------------------------------------------


def onprem(**changes: object) -> Table:
    """An On-Premises sender in login mode; a change to None drops that key."""
    base: Table = {
        "number": ONPREM_NUMBER,
        "backend": "onprem",
        "url": ONPREM_URL,
        "username": "gateway",
        "password_env": "WA_PASSWORD",
    }
    return _changed(base, changes)


def infobip(**changes: object) -> Table:
    """An Infobip sender; a change to None drops that key."""
    base: Table = {
        "number": INFOBIP_NUMBER,
        "backend": "infobip",
        "url": INFOBIP_URL,
        "api_key_env": "IB_API_KEY",
    }
    return _changed(base, changes)


def _changed(base: Table, changes: Mapping[str, object]) -> Table:
    return {key: value for key, value in {**base, **changes}.items() if value is not None}


def toml(*senders: Table, **top: object) -> str:
    """A senders file: ``top`` keys, then one ``[[senders]]`` table each."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for table in senders:
        lines += ["", "[[senders]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise TypeError(f"no TOML for {value!r}")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def senders_path(tmp_path: Path) -> Path:
    return tmp_path / "senders.toml"


def parsed(tmp_path: Path, text: str, environ: Mapping[str, str] = ENVIRON) -> Senders:
    return parse_senders(text, senders_path(tmp_path), environ)


def refused(tmp_path: Path, text: str, environ: Mapping[str, str] = ENVIRON) -> str:
    """The ConfigError message for ``text``, checked: one line naming the file, no secret."""
    path = senders_path(tmp_path)
    with pytest.raises(ConfigError) as caught:
        parse_senders(text, path, environ)
    message = str(caught.value)
    assert "\n" not in message, f"more than one line: {message!r}"
    assert "\r" not in message, f"more than one line: {message!r}"
    assert str(path) in message, f"the file is not named: {message!r}"
    for secret in (*SECRETS, *environ.values()):
        if secret:
            assert secret not in message, f"a secret is echoed: {message!r}"
    return message


def assert_names(message: str, sender: str, key: str) -> None:
    assert f"sender {sender}:" in message, f"sender {sender} is not named: {message!r}"
    assert f"key {key!r}" in message, f"key {key!r} is not named: {message!r}"


# --- a good file ---------------------------------------------------------------------------


def test_an_onprem_and_an_infobip_sender_with_a_default(tmp_path: Path) -> None:
    text = toml(
        onprem(webhook_secret_env="WA_WEBHOOK_SECRET", rate_limit=20),
        infobip(),
        default_sender=INFOBIP_NUMBER,
    )

    senders = parsed(tmp_path, text)

    assert senders.default == INFOBIP_NUMBER
    assert [sender.number for sender in senders.senders] == [ONPREM_NUMBER, INFOBIP_NUMBER]
    assert set(senders.by_number) == {ONPREM_NUMBER, INFOBIP_NUMBER}
    first = senders.by_number[ONPREM_NUMBER]
    assert first == SenderConfig(
        number=ONPREM_NUMBER,
        backend=ONPREM,
        url=ONPREM_URL,
        username="gateway",
        password=PASSWORD,
        webhook_secret=WEBHOOK_SECRET,
        rate_limit=20.0,
    )
    assert first.label == ONPREM_NUMBER
    second = senders.by_number[INFOBIP_NUMBER]
    assert second == SenderConfig(
        number=INFOBIP_NUMBER, backend=INFOBIP, url=INFOBIP_URL, api_key=API_KEY
    )
    assert set(senders.secrets) == {PASSWORD, WEBHOOK_SECRET, API_KEY}


def test_an_onprem_sender_with_a_static_token_from_the_environment(tmp_path: Path) -> None:
    text = toml(onprem(username=None, password_env=None, token_env="WA_TOKEN"))

    (sender,) = parsed(tmp_path, text).senders

    assert sender.token == TOKEN
    assert sender.username is None
    assert sender.password is None


@pytest.mark.parametrize(
    ("table", "attribute"),
    [
        (onprem(password_env=None, password_file="secrets/password"), "password"),
        (onprem(username=None, password_env=None, token_file="secrets/token"), "token"),
        (onprem(webhook_secret_file="secrets/webhook"), "webhook_secret"),
        (infobip(api_key_env=None, api_key_file="secrets/api-key"), "api_key"),
    ],
    ids=["password_file", "token_file", "webhook_secret_file", "api_key_file"],
)
@pytest.mark.parametrize("ending", ["\n", "\r\n", ""], ids=["lf", "crlf", "none"])
def test_a_secret_file_is_read_relative_to_the_senders_file_less_its_line_ending(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    table: Table,
    attribute: str,
    ending: str,
) -> None:
    conf = tmp_path / "conf"
    for name in ("password", "token", "webhook", "api-key"):
        write(conf / "secrets" / name, FILE_SECRET + ending)
    path = write(conf / "senders.toml", toml(table))
    monkeypatch.chdir(tmp_path)  # relative paths follow the file, not the working directory

    (sender,) = load_senders(path, ENVIRON).senders

    assert getattr(sender, attribute) == FILE_SECRET


def test_a_single_sender_without_default_sender_is_the_default(tmp_path: Path) -> None:
    senders = parsed(tmp_path, toml(onprem()))

    assert senders.default == ONPREM_NUMBER


def test_a_single_sender_may_name_itself_the_default(tmp_path: Path) -> None:
    senders = parsed(tmp_path, toml(infobip(), default_sender=INFOBIP_NUMBER))

    assert senders.default == INFOBIP_NUMBER


def test_a_relative_ca_file_is_resolved_against_the_senders_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    shutil.copyfile(certifi.where(), write(conf / "tls" / "ca.pem", ""))
    path = write(conf / "senders.toml", toml(onprem(ca_file="tls/ca.pem")))
    monkeypatch.chdir(tmp_path)

    senders = load_senders(path, ENVIRON)
    runtime = prepare(GatewayConfig(senders=senders))

    assert senders.senders[0].ca_file == conf / "tls" / "ca.pem"
    verify = runtime.upstream_tls[ONPREM_NUMBER]
    assert isinstance(verify, ssl.SSLContext)
    assert verify.verify_mode == ssl.CERT_REQUIRED


def test_an_absolute_ca_file_stays_as_it_is(tmp_path: Path) -> None:
    (sender,) = parsed(tmp_path, toml(onprem(ca_file=certifi.where()))).senders

    assert sender.ca_file == Path(certifi.where())


def test_a_missing_ca_file_stops_start_up_naming_the_sender_and_the_key(tmp_path: Path) -> None:
    senders = parsed(tmp_path, toml(onprem(ca_file="no-such-ca.pem")))

    with pytest.raises(ConfigError) as caught:
        prepare(GatewayConfig(senders=senders))

    message = str(caught.value)
    assert_names(message, ONPREM_NUMBER, "ca_file")
    assert str(tmp_path / "no-such-ca.pem") in message


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (20, 20.0), (2.5, 2.5)])
def test_rate_limit_may_be_zero_or_requests_per_second(
    tmp_path: Path, value: float, expected: float
) -> None:
    (sender,) = parsed(tmp_path, toml(onprem(rate_limit=value))).senders

    assert sender.rate_limit == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1:9090", "http://localhost", "http://[::1]:9"])
def test_plain_http_to_a_loopback_host_is_allowed(tmp_path: Path, url: str) -> None:
    (sender,) = parsed(tmp_path, toml(onprem(url=url))).senders

    assert sender.url == url


def test_load_senders_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-senders.toml"

    with pytest.raises(ConfigError) as caught:
        load_senders(missing, ENVIRON)

    assert str(missing) in str(caught.value)
    assert "--senders" in str(caught.value)


# --- a bad file: the sender and the key are named --------------------------------------------

INLINE_SECRET_KEYS = [
    "password",
    "token",
    "api_key",
    "webhook_secret",
    "app_secret",
    "verify_token",
    "access_token",
]


@pytest.mark.parametrize("key", INLINE_SECRET_KEYS)
def test_an_inline_secret_is_refused(tmp_path: Path, key: str) -> None:
    message = refused(tmp_path, toml(onprem(**{key: INLINE_SECRET})))

    assert_names(message, ONPREM_NUMBER, key)
    assert f"{key}_env" in message  # says how to give it instead


def test_an_inline_api_key_on_an_infobip_sender_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, toml(infobip(api_key=INLINE_SECRET)))

    assert_names(message, INFOBIP_NUMBER, "api_key")
    assert "api_key_env" in message


def test_an_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, toml(onprem(), colour="blue"))

    assert "key 'colour'" in message


@pytest.mark.parametrize(
    ("table", "sender", "key"),
    [
        (onprem(colour="blue"), ONPREM_NUMBER, "colour"),
        (onprem(pasword_env="WA_PASSWORD"), ONPREM_NUMBER, "pasword_env"),
        (onprem(api_key_env="IB_API_KEY"), ONPREM_NUMBER, "api_key_env"),
        (onprem(api_key_file="key"), ONPREM_NUMBER, "api_key_file"),
        (onprem(phone_number_id="106540352242922"), ONPREM_NUMBER, "phone_number_id"),
        (infobip(colour="blue"), INFOBIP_NUMBER, "colour"),
        (infobip(username="gateway"), INFOBIP_NUMBER, "username"),
        (infobip(password_env="WA_PASSWORD"), INFOBIP_NUMBER, "password_env"),
        (infobip(token_env="WA_TOKEN"), INFOBIP_NUMBER, "token_env"),
        (infobip(ca_file="ca.pem"), INFOBIP_NUMBER, "ca_file"),
        (infobip(webhook_secret_env="WA_WEBHOOK_SECRET"), INFOBIP_NUMBER, "webhook_secret_env"),
    ],
    ids=[
        "onprem-colour",
        "onprem-typo",
        "onprem-api_key_env",
        "onprem-api_key_file",
        "onprem-cloud-key",
        "infobip-colour",
        "infobip-username",
        "infobip-password_env",
        "infobip-token_env",
        "infobip-ca_file",
        "infobip-webhook_secret_env",
    ],
)
def test_an_unknown_key_for_the_senders_backend_is_refused(
    tmp_path: Path, table: Table, sender: str, key: str
) -> None:
    message = refused(tmp_path, toml(table))

    assert_names(message, sender, key)


def test_a_duplicate_number_is_refused(tmp_path: Path) -> None:
    text = toml(onprem(), onprem(username=None, token_env="WA_TOKEN"), default_sender=ONPREM_NUMBER)

    message = refused(tmp_path, text)

    assert_names(message, ONPREM_NUMBER, "number")
    assert "duplicate" in message


def test_a_duplicate_number_across_backends_is_refused(tmp_path: Path) -> None:
    text = toml(onprem(), infobip(number=ONPREM_NUMBER), default_sender=ONPREM_NUMBER)

    message = refused(tmp_path, text)

    assert_names(message, ONPREM_NUMBER, "number")


@pytest.mark.parametrize(
    ("senders", "sender", "key"),
    [
        ([onprem(number=None)], "#1", "number"),
        ([onprem(), infobip(number=None)], "#2", "number"),
        ([onprem(backend=None)], ONPREM_NUMBER, "backend"),
        ([onprem(url=None)], ONPREM_NUMBER, "url"),
        ([infobip(url=None)], INFOBIP_NUMBER, "url"),
        ([onprem(username=None, password_env=None)], ONPREM_NUMBER, "username"),
        ([infobip(api_key_env=None)], INFOBIP_NUMBER, "api_key_env"),
    ],
    ids=[
        "number",
        "number-of-the-second",
        "backend",
        "onprem-url",
        "infobip-url",
        "onprem-credentials",
        "infobip-api-key",
    ],
)
def test_a_missing_required_key_is_refused(
    tmp_path: Path, senders: list[Table], sender: str, key: str
) -> None:
    message = refused(tmp_path, toml(*senders, default_sender=ONPREM_NUMBER))

    assert_names(message, sender, key)


def test_two_senders_need_a_default_sender(tmp_path: Path) -> None:
    message = refused(tmp_path, toml(onprem(), infobip()))

    assert "key 'default_sender'" in message


@pytest.mark.parametrize("default", ["15550009999", "", 15550001111], ids=["other", "empty", "int"])
def test_default_sender_must_be_one_of_the_numbers(tmp_path: Path, default: object) -> None:
    message = refused(tmp_path, toml(onprem(), infobip(), default_sender=default))

    assert "key 'default_sender'" in message


@pytest.mark.parametrize(
    "number",
    [
        "",
        15550001111,
        1.5,
        True,
        pytest.param("12345", id="too-short"),
        pytest.param("1234567890123456", id="too-long"),
        pytest.param("+15550001111", id="plus"),
        pytest.param("+", id="plus-alone"),
        pytest.param("1555abc0001", id="letters"),
        pytest.param("15550001111 ", id="trailing-space"),
        pytest.param("1555\n0001111", id="newline"),
    ],
)
def test_a_bad_number_is_refused_naming_the_sender_by_its_position(
    tmp_path: Path, number: object
) -> None:
    message = refused(
        tmp_path, toml(infobip(), onprem(number=number), default_sender=INFOBIP_NUMBER)
    )

    assert_names(message, "#2", "number")


@pytest.mark.parametrize("number", ["12345", "+15550001111", "1555abc0001"])
def test_a_bad_number_is_refused_naming_the_key(tmp_path: Path, number: str) -> None:
    message = refused(tmp_path, toml(onprem(number=number)))

    assert "key 'number'" in message
    assert "digits" in message


@pytest.mark.parametrize("backend", ["cloud", "whatsapp", "ONPREM", "", 1])
def test_an_unknown_backend_is_refused(tmp_path: Path, backend: object) -> None:
    message = refused(tmp_path, toml(onprem(backend=backend)))

    assert_names(message, ONPREM_NUMBER, "backend")
    assert "onprem" in message
    assert "infobip" in message


@pytest.mark.parametrize(
    ("table", "sender", "name"),
    [
        (onprem(password_file="pw"), ONPREM_NUMBER, "password"),
        (onprem(username=None, password_env=None, token_env="WA_TOKEN", token_file="tok"),
         ONPREM_NUMBER, "token"),
        (onprem(webhook_secret_env="WA_WEBHOOK_SECRET", webhook_secret_file="hook"),
         ONPREM_NUMBER, "webhook_secret"),
        (infobip(api_key_file="key"), INFOBIP_NUMBER, "api_key"),
    ],
    ids=["password", "token", "webhook_secret", "api_key"],
)  # fmt: skip
def test_a_secret_given_as_both_env_and_file_is_refused(
    tmp_path: Path, table: Table, sender: str, name: str
) -> None:
    for file in ("pw", "tok", "hook", "key"):
        write(tmp_path / file, FILE_SECRET + "\n")

    message = refused(tmp_path, toml(table))

    assert f"sender {sender}:" in message
    assert f"{name}_env" in message
    assert f"{name}_file" in message


SECRET_ENV_TABLES = [
    (onprem(), ONPREM_NUMBER, "password"),
    (onprem(username=None, password_env=None, token_env="WA_TOKEN"), ONPREM_NUMBER, "token"),
    (onprem(webhook_secret_env="WA_WEBHOOK_SECRET"), ONPREM_NUMBER, "webhook_secret"),
    (infobip(), INFOBIP_NUMBER, "api_key"),
]
SECRET_ENV_IDS = ["password_env", "token_env", "webhook_secret_env", "api_key_env"]


@pytest.mark.parametrize(("table", "sender", "name"), SECRET_ENV_TABLES, ids=SECRET_ENV_IDS)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_secret_variable_that_is_not_set_or_empty_is_refused(
    tmp_path: Path, table: Table, sender: str, name: str, value: str | None
) -> None:
    variable = SECRET_VARIABLES[name]
    environ = {key: val for key, val in ENVIRON.items() if key != variable}
    if value is not None:
        environ[variable] = value

    message = refused(tmp_path, toml(table), environ)

    assert_names(message, sender, f"{name}_env")
    assert variable in message


SECRET_FILE_TABLES = [
    (onprem(password_env=None, password_file="secret"), ONPREM_NUMBER, "password"),
    (onprem(username=None, password_env=None, token_file="secret"), ONPREM_NUMBER, "token"),
    (onprem(webhook_secret_file="secret"), ONPREM_NUMBER, "webhook_secret"),
    (infobip(api_key_env=None, api_key_file="secret"), INFOBIP_NUMBER, "api_key"),
]
SECRET_FILE_IDS = ["password_file", "token_file", "webhook_secret_file", "api_key_file"]


@pytest.mark.parametrize(("table", "sender", "name"), SECRET_FILE_TABLES, ids=SECRET_FILE_IDS)
@pytest.mark.parametrize("problem", ["missing", "directory", "not-utf8"])
def test_an_unreadable_secret_file_is_refused(
    tmp_path: Path, table: Table, sender: str, name: str, problem: str
) -> None:
    secret = tmp_path / "secret"
    if problem == "directory":
        secret.mkdir()
    elif problem == "not-utf8":
        secret.write_bytes(b"\xff\xfe\x00" + FILE_SECRET.encode())

    message = refused(tmp_path, toml(table))

    assert_names(message, sender, f"{name}_file")
    assert str(secret) in message


@pytest.mark.parametrize(("table", "sender", "name"), SECRET_FILE_TABLES, ids=SECRET_FILE_IDS)
@pytest.mark.parametrize("content", ["", "\n", "  \r\n"], ids=["empty", "newline", "blank"])
def test_an_empty_secret_file_is_refused(
    tmp_path: Path, table: Table, sender: str, name: str, content: str
) -> None:
    write(tmp_path / "secret", content)

    message = refused(tmp_path, toml(table))

    assert_names(message, sender, f"{name}_file")
    assert "empty" in message


def test_a_login_and_a_static_token_together_are_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, toml(onprem(token_env="WA_TOKEN")))

    assert_names(message, ONPREM_NUMBER, "token_env")
    assert "username" in message


def test_a_username_without_a_password_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, toml(onprem(password_env=None)))

    assert_names(message, ONPREM_NUMBER, "password_env")
    assert "password_file" in message


def test_a_password_without_a_username_is_not_credentials(tmp_path: Path) -> None:
    message = refused(tmp_path, toml(onprem(username=None)))

    assert_names(message, ONPREM_NUMBER, "username")


@pytest.mark.parametrize("username", ["gate:way", "", 7], ids=["colon", "empty", "int"])
def test_a_bad_username_is_refused(tmp_path: Path, username: object) -> None:
    message = refused(tmp_path, toml(onprem(username=username)))

    assert_names(message, ONPREM_NUMBER, "username")


@pytest.mark.parametrize(
    "key", ["password_env", "password_file", "ca_file", "webhook_secret_env", "url"]
)
@pytest.mark.parametrize("value", ["", 1, True], ids=["empty", "int", "bool"])
def test_a_string_key_with_a_value_that_is_not_a_string_is_refused(
    tmp_path: Path, key: str, value: object
) -> None:
    message = refused(tmp_path, toml(onprem(**{key: value})))

    assert_names(message, ONPREM_NUMBER, key)


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, math.nan, math.inf, True, False, "20", "fast"],
    ids=["negative", "negative-float", "nan", "inf", "true", "false", "numeric-string", "word"],
)
@pytest.mark.parametrize("table", [onprem(), infobip()], ids=["onprem", "infobip"])
def test_a_bad_rate_limit_is_refused(tmp_path: Path, table: Table, value: object) -> None:
    message = refused(tmp_path, toml({**table, "rate_limit": value}))

    assert_names(message, str(table["number"]), "rate_limit")


@pytest.mark.parametrize(
    "url",
    [
        "http://whatsapp-webapp.internal:9090",
        "http://10.0.0.7:9090",
        "http://192.168.1.1",
    ],
)
@pytest.mark.parametrize("table", [onprem(), infobip()], ids=["onprem", "infobip"])
def test_plain_http_to_a_non_loopback_host_is_refused(
    tmp_path: Path, table: Table, url: str
) -> None:
    message = refused(tmp_path, toml({**table, "url": url}))

    assert_names(message, str(table["number"]), "url")
    assert "https" in message


@pytest.mark.parametrize(
    "url",
    [
        f"https://admin:{INLINE_SECRET}@whatsapp-webapp.internal",
        "https://admin@whatsapp-webapp.internal",
        f"https://whatsapp-webapp.internal/?access_token={INLINE_SECRET}",
        f"https://whatsapp-webapp.internal/#{INLINE_SECRET}",
    ],
    ids=["user-and-password", "user", "query", "fragment"],
)
@pytest.mark.parametrize("table", [onprem(), infobip()], ids=["onprem", "infobip"])
def test_a_url_with_credentials_is_refused_without_echoing_it(
    tmp_path: Path, table: Table, url: str
) -> None:
    message = refused(tmp_path, toml({**table, "url": url}))  # refused() checks no echo

    assert_names(message, str(table["number"]), "url")


@pytest.mark.parametrize(
    "url", ["ftp://whatsapp-webapp.internal", "https://", "whatsapp-webapp.internal", "https://h:x"]
)
def test_a_url_that_is_not_an_http_url_is_refused(tmp_path: Path, url: str) -> None:
    message = refused(tmp_path, toml(onprem(url=url)))

    assert_names(message, ONPREM_NUMBER, "url")


@pytest.mark.parametrize(
    "text",
    [
        'number = "1555',
        f"[[senders]]\npassword = {INLINE_SECRET}\n",
        "[[senders]\nnumber = 1\n",
        "\x00\x01\x02",
    ],
    ids=["unterminated", "bare-value", "bad-header", "binary"],
)
def test_a_file_that_is_not_toml_is_refused(tmp_path: Path, text: str) -> None:
    message = refused(tmp_path, text)  # refused() checks the secret is not echoed

    assert "not TOML" in message


@pytest.mark.parametrize(
    "text",
    [
        "",
        'default_sender = "15550001111"\n',
        "senders = []\n",
        'senders = "onprem"\n',
        "senders = [1, 2]\n",
        "senders = [[]]\n",
        f'[senders]\nnumber = "{ONPREM_NUMBER}"\n',
    ],
    ids=["empty-file", "no-senders", "empty-array", "string", "numbers", "arrays", "one-table"],
)
def test_senders_must_be_one_or_more_tables(tmp_path: Path, text: str) -> None:
    message = refused(tmp_path, text)

    assert "key 'senders'" in message


def test_the_first_problem_of_a_later_sender_names_that_sender(tmp_path: Path) -> None:
    text = toml(onprem(), infobip(api_key_env="NOT_SET"), default_sender=ONPREM_NUMBER)

    message = refused(tmp_path, text)

    assert_names(message, INFOBIP_NUMBER, "api_key_env")
    assert "NOT_SET" in message


@pytest.mark.parametrize(
    ("table", "key"),
    [
        (onprem(username=None, password_env=None, token_env="WA_TOKEN"), "token_env"),
        (infobip(), "api_key_env"),
    ],
    ids=["token", "api_key"],
)
def test_a_secret_that_cannot_be_a_header_is_refused(
    tmp_path: Path, table: Table, key: str
) -> None:
    environ = {**ENVIRON, "WA_TOKEN": "tok-SECRET\r\nX-Injected: 1", "IB_API_KEY": "k\r\nX: 1"}

    message = refused(tmp_path, toml(table), environ)

    assert f"key {key!r}" in message


# --- no secret in a repr ----------------------------------------------------------------------


def full_senders(tmp_path: Path) -> Senders:
    write(tmp_path / "password", FILE_SECRET + "\n")
    text = toml(
        onprem(password_env=None, password_file="password", webhook_secret_env="WA_WEBHOOK_SECRET"),
        onprem(number=SECOND_ONPREM_NUMBER, username=None, password_env=None, token_env="WA_TOKEN"),
        infobip(),
        default_sender=ONPREM_NUMBER,
    )
    return parsed(tmp_path, text)


def test_no_repr_shows_a_secret(tmp_path: Path) -> None:
    senders = full_senders(tmp_path)
    assert set(senders.secrets) == {FILE_SECRET, WEBHOOK_SECRET, TOKEN, API_KEY}
    config = GatewayConfig(senders=senders)
    every = SenderConfig(
        number=ONPREM_NUMBER,
        backend=ONPREM,
        url=ONPREM_URL,
        username="gateway",
        password=PASSWORD,
        token=TOKEN,
        api_key=API_KEY,
        webhook_secret=WEBHOOK_SECRET,
    )

    for shown in (
        repr(senders),
        str(senders),
        repr(config),
        str(config),
        repr(every),
        *(repr(sender) for sender in senders.senders),
        repr(config.resolved_senders()),
    ):
        for secret in SECRETS:
            assert secret not in shown
    assert ONPREM_NUMBER in repr(config)  # the senders are shown, only their secrets are not


def test_flag_modes_one_sender_shows_no_secret() -> None:
    config = GatewayConfig(
        upstream_url=ONPREM_URL,
        upstream_username="gateway",
        upstream_password=PASSWORD,
        webhook_secret=WEBHOOK_SECRET,
    )

    (sender,) = config.resolved_senders().senders

    assert sender.password == PASSWORD
    assert sender.label == "default"
    for secret in SECRETS:
        assert secret not in repr(config.resolved_senders())


# --- pacing per sender ----------------------------------------------------------------------


def one(
    sender: SenderConfig, *, rate: float = 20.0, burst: int = 60
) -> tuple[SenderConfig, GatewayConfig]:
    """``sender`` alone, with ``--upstream-rate-limit rate --upstream-burst burst``."""
    senders = Senders((sender,), sender.number)
    return sender, GatewayConfig(senders=senders, upstream_rate_limit=rate, upstream_burst=burst)


ONPREM_SENDER = SenderConfig(ONPREM_NUMBER, ONPREM, ONPREM_URL, token=TOKEN)
INFOBIP_SENDER = SenderConfig(INFOBIP_NUMBER, INFOBIP, INFOBIP_URL, api_key=API_KEY)


def test_an_onprem_sender_is_paced_by_the_flags() -> None:
    assert pace_of(*one(ONPREM_SENDER)) == (20.0, 60)
    assert pace_of(*one(ONPREM_SENDER, rate=33.0, burst=7)) == (33.0, 7)
    assert pace_of(*one(ONPREM_SENDER, rate=0.0)) == (0.0, 60)


@pytest.mark.parametrize(
    ("rate", "burst", "expected"),
    [
        (20.0, 60, (10.0, 10)),
        (4.0, 3, (4.0, 3)),
        (12.0, 5, (10.0, 5)),
        (8.0, 40, (8.0, 10)),
        pytest.param(
            0.0,
            60,
            (10.0, 10),
            id="flags-unpaced",
        ),
    ],
)
def test_an_infobip_sender_is_paced_at_most_at_10_per_second_in_bursts_of_10(
    rate: float, burst: int, expected: tuple[float, int]
) -> None:
    assert pace_of(*one(INFOBIP_SENDER, rate=rate, burst=burst)) == expected


@pytest.mark.parametrize("base", [ONPREM_SENDER, INFOBIP_SENDER], ids=["onprem", "infobip"])
@pytest.mark.parametrize("rate_limit", [0.0, 3.0, 50.0])
def test_a_senders_own_rate_limit_wins(base: SenderConfig, rate_limit: float) -> None:
    sender = SenderConfig(base.number, base.backend, base.url, rate_limit=rate_limit)

    rate, _ = pace_of(*one(sender, rate=20.0, burst=60))

    assert rate == rate_limit


def test_an_onprem_senders_own_rate_limit_keeps_the_flags_burst() -> None:
    sender = SenderConfig(ONPREM_NUMBER, ONPREM, ONPREM_URL, token=TOKEN, rate_limit=5.0)

    assert pace_of(*one(sender, burst=9)) == (5.0, 9)


# --- --senders on the command line ------------------------------------------------------------

ENV_SENDERS = "IDENTITY_GATEWAY_SENDERS"


def serve_args(*argv: str) -> list[str]:
    return ["serve", *argv]


def config_of(argv: list[str], environ: Mapping[str, str]) -> GatewayConfig:
    return config_from_args(build_parser().parse_args(serve_args(*argv)), environ)


def good_file(tmp_path: Path) -> Path:
    text = toml(onprem(), infobip(), default_sender=ONPREM_NUMBER)
    return write(tmp_path / "senders.toml", text)


def test_the_senders_flag_loads_the_file(tmp_path: Path) -> None:
    path = good_file(tmp_path)

    config = config_of(["--senders", str(path)], ENVIRON)

    assert config.senders is not None
    assert config.resolved_senders() is config.senders
    assert config.senders.default == ONPREM_NUMBER
    assert set(config.senders.by_number) == {ONPREM_NUMBER, INFOBIP_NUMBER}
    assert config.upstream_url == ""


def test_the_senders_variable_works_like_the_flag(tmp_path: Path) -> None:
    path = good_file(tmp_path)

    from_env = config_of([], {**ENVIRON, ENV_SENDERS: str(path)})
    from_flag = config_of(["--senders", str(path)], ENVIRON)

    assert from_env.senders == from_flag.senders
    assert from_env.senders is not None


def test_the_senders_flag_wins_over_its_variable(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    environ = {**ENVIRON, ENV_SENDERS: str(tmp_path / "no-such-file.toml")}

    config = config_of(["--senders", str(path)], environ)

    assert config.senders is not None


@pytest.fixture
def conflicts(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """Each flag-mode setting that --senders refuses: (argv, environment, what is named)."""
    token_file = write(tmp_path / "flag-token", TOKEN + "\n")
    password_file = write(tmp_path / "flag-password", PASSWORD + "\n")
    hook_file = write(tmp_path / "flag-hook", WEBHOOK_SECRET + "\n")
    return {
        "--upstream-url": (["--upstream-url", ONPREM_URL], {}, "--upstream-url"),
        "IDENTITY_GATEWAY_UPSTREAM_URL": (
            [], {"IDENTITY_GATEWAY_UPSTREAM_URL": ONPREM_URL}, "--upstream-url"
        ),
        "--upstream-username": (["--upstream-username", "admin"], {}, "--upstream-username"),
        "--upstream-token-file": (
            ["--upstream-token-file", str(token_file)], {}, "--upstream-token-file"
        ),
        "--upstream-password-file": (
            ["--upstream-password-file", str(password_file)], {}, "--upstream-password-file"
        ),
        "--upstream-ca-file": (
            ["--upstream-ca-file", certifi.where()], {}, "--upstream-ca-file"
        ),
        "--upstream-insecure": (["--upstream-insecure"], {}, "--upstream-insecure"),
        "IDENTITY_GATEWAY_UPSTREAM_INSECURE": (
            [], {"IDENTITY_GATEWAY_UPSTREAM_INSECURE": "true"}, "--upstream-insecure"
        ),
        "IDENTITY_GATEWAY_UPSTREAM_PASSWORD": (
            [], {"IDENTITY_GATEWAY_UPSTREAM_PASSWORD": PASSWORD},
            "IDENTITY_GATEWAY_UPSTREAM_PASSWORD",
        ),
        "IDENTITY_GATEWAY_UPSTREAM_TOKEN": (
            [], {"IDENTITY_GATEWAY_UPSTREAM_TOKEN": TOKEN}, "IDENTITY_GATEWAY_UPSTREAM_TOKEN"
        ),
        "IDENTITY_GATEWAY_WEBHOOK_SECRET": (
            [], {"IDENTITY_GATEWAY_WEBHOOK_SECRET": WEBHOOK_SECRET},
            "IDENTITY_GATEWAY_WEBHOOK_SECRET",
        ),
        "--webhook-secret-file": (
            ["--webhook-secret-file", str(hook_file)], {}, "--webhook-secret-file"
        ),
    }  # fmt: skip


CONFLICTS = [
    "--upstream-url",
    "IDENTITY_GATEWAY_UPSTREAM_URL",
    "--upstream-username",
    "--upstream-token-file",
    "--upstream-password-file",
    "--upstream-ca-file",
    "--upstream-insecure",
    "IDENTITY_GATEWAY_UPSTREAM_INSECURE",
    "IDENTITY_GATEWAY_UPSTREAM_PASSWORD",
    "IDENTITY_GATEWAY_UPSTREAM_TOKEN",
    "IDENTITY_GATEWAY_WEBHOOK_SECRET",
    "--webhook-secret-file",
]


def test_every_conflict_is_listed(
    conflicts: dict[str, tuple[list[str], dict[str, str], str]],
) -> None:
    assert set(conflicts) == set(CONFLICTS)


@pytest.mark.parametrize("conflict", CONFLICTS)
def test_a_flag_mode_connection_setting_with_senders_is_refused(
    tmp_path: Path,
    conflicts: dict[str, tuple[list[str], dict[str, str], str]],
    conflict: str,
) -> None:
    argv, extra_env, named = conflicts[conflict]
    path = good_file(tmp_path)

    with pytest.raises(ConfigError) as caught:
        config_of(["--senders", str(path), *argv], {**ENVIRON, **extra_env})

    assert "--senders" in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.parametrize("conflict", CONFLICTS)
def test_a_flag_mode_connection_setting_with_senders_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    conflicts: dict[str, tuple[list[str], dict[str, str], str]],
    conflict: str,
) -> None:
    argv, extra_env, named = conflicts[conflict]
    path = good_file(tmp_path)

    status = main(serve_args("--senders", str(path), *argv), {**ENVIRON, **extra_env})

    assert status == EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--senders" in err
    assert named in err
    for secret in SECRETS:
        assert secret not in err


def test_a_flag_mode_setting_through_the_senders_variable_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = good_file(tmp_path)
    environ = {**ENVIRON, ENV_SENDERS: str(path), "IDENTITY_GATEWAY_UPSTREAM_TOKEN": TOKEN}

    status = main(serve_args(), environ)

    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "IDENTITY_GATEWAY_UPSTREAM_TOKEN" in err
    assert TOKEN not in err


def test_no_insecure_is_not_a_conflict(tmp_path: Path) -> None:
    config = config_of(["--senders", str(good_file(tmp_path)), "--no-upstream-insecure"], ENVIRON)

    assert config.senders is not None


def bad_files(tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    """Bad senders files (with secrets in the environment and in files around them): the text,
    and the sender and key the one line must name."""
    write(tmp_path / "password", FILE_SECRET + "\n")
    write(tmp_path / "empty", "\n")
    return {
        "inline-password": (toml(onprem(password=INLINE_SECRET)), ONPREM_NUMBER, "password"),
        "inline-api-key": (toml(infobip(api_key=INLINE_SECRET)), INFOBIP_NUMBER, "api_key"),
        "env-and-file": (
            toml(onprem(password_file="password")),
            ONPREM_NUMBER,
            "password_file",
        ),
        "unknown-key": (toml(onprem(colour="blue")), ONPREM_NUMBER, "colour"),
        "duplicate": (
            toml(infobip(), infobip(), default_sender=INFOBIP_NUMBER),
            INFOBIP_NUMBER,
            "number",
        ),
        "missing-url": (toml(onprem(url=None)), ONPREM_NUMBER, "url"),
        "url-credentials": (
            toml(infobip(url=f"https://u:{INLINE_SECRET}@x.api.infobip.com")),
            INFOBIP_NUMBER,
            "url",
        ),
        "empty-secret-file": (
            toml(onprem(password_env=None, password_file="empty")),
            ONPREM_NUMBER,
            "password_file",
        ),
        "variable-not-set": (toml(infobip(api_key_env="UNSET_KEY")), INFOBIP_NUMBER, "api_key_env"),
        "missing-number": (toml(onprem(number=None)), "#1", "number"),
        "cloud": (toml(onprem(backend="cloud")), ONPREM_NUMBER, "backend"),
    }


BAD_FILES = [
    "inline-password",
    "inline-api-key",
    "env-and-file",
    "unknown-key",
    "duplicate",
    "missing-url",
    "url-credentials",
    "empty-secret-file",
    "variable-not-set",
    "missing-number",
    "cloud",
]


def test_every_bad_file_is_listed(tmp_path: Path) -> None:
    assert set(bad_files(tmp_path)) == set(BAD_FILES)


@pytest.mark.parametrize("through", ["flag", "variable"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_senders_file_exits_2_with_one_line_naming_file_sender_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, through: str
) -> None:
    text, sender, key = bad_files(tmp_path)[case]
    path = write(tmp_path / "senders.toml", text)
    argv = ["--senders", str(path)] if through == "flag" else []
    environ = {**ENVIRON, ENV_SENDERS: str(path)} if through == "variable" else ENVIRON

    status = main(serve_args(*argv), environ)

    assert status == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("identity-gateway: configuration error: ")
    assert str(path) in err
    assert_names(err, sender, key)
    for secret in SECRETS:
        assert secret not in err


def test_a_missing_senders_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-senders.toml"

    status = main(serve_args("--senders", str(missing)), ENVIRON)

    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(missing) in err


def test_a_senders_bad_ca_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "senders.toml", toml(onprem(ca_file="no-such-ca.pem")))

    status = main(serve_args("--senders", str(path)), ENVIRON)

    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert_names(err, ONPREM_NUMBER, "ca_file")
    for secret in SECRETS:
        assert secret not in err


def test_the_console_script_refuses_a_bad_senders_file_before_listening(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", toml(onprem(username=None, token=INLINE_SECRET)))
    command = [
        str(Path(sys.executable).parent / "identity-gateway"),
        "serve",
        "--senders",
        str(bad),
    ]

    done = subprocess.run(command, capture_output=True, text=True, timeout=20, env={})

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1  # no log line: nothing started
    assert done.stderr.startswith("identity-gateway: configuration error: ")
    assert str(bad) in done.stderr
    assert_names(done.stderr, ONPREM_NUMBER, "token")
    assert INLINE_SECRET not in done.stderr


# --- tuning flags are defaults for every sender -------------------------------------------------

TUNING = [
    ("--upstream-timeout", "upstream_timeout", "2.5", 2.5),
    ("--upstream-rate-limit", "upstream_rate_limit", "7", 7.0),
    ("--upstream-burst", "upstream_burst", "4", 4),
    ("--upstream-max-in-flight", "upstream_max_in_flight", "3", 3),
    ("--upstream-max-waiting", "upstream_max_waiting", "9", 9),
    ("--upstream-retries", "upstream_retries", "0", 0),
]


def test_tuning_flags_go_with_senders(tmp_path: Path) -> None:
    argv = ["--senders", str(good_file(tmp_path))]
    for flag, _, value, _ in TUNING:
        argv += [flag, value]

    config = config_of(argv, ENVIRON)

    for _, attribute, _, expected in TUNING:
        assert getattr(config, attribute) == expected
    assert config.senders is not None
    onprem_sender = config.senders.by_number[ONPREM_NUMBER]
    infobip_sender = config.senders.by_number[INFOBIP_NUMBER]
    assert pace_of(onprem_sender, config) == (7.0, 4)
    assert pace_of(infobip_sender, config) == (7.0, 4)


@pytest.mark.parametrize(("flag", "attribute", "value", "expected"), TUNING)
def test_tuning_variables_go_with_senders(
    tmp_path: Path, flag: str, attribute: str, value: str, expected: float
) -> None:
    variable = "IDENTITY_GATEWAY_" + flag.removeprefix("--").upper().replace("-", "_")
    environ = {**ENVIRON, ENV_SENDERS: str(good_file(tmp_path)), variable: value}

    config = config_of([], environ)

    assert getattr(config, attribute) == expected
