"""On-Premises webhooks are authenticated by their sender's secret (spec §7).

``POST /webhook`` (the default sender) and ``POST /webhook/{number}`` take the secret as
``Authorization: Bearer <secret>`` or as the password of HTTP Basic, never as the user name;
anything else is ``401`` and changes nothing. ``--webhook-listen`` refuses to start while an
On-Premises sender has no secret, unless ``--webhook-allow-unauthenticated`` (a warning at start).
``--webhook-tls-cert`` / ``--webhook-tls-key`` serve the listener over HTTPS.

First :func:`authenticated` alone, then a real gateway with two On-Premises senders on two
emulators (and an Infobip one, which takes no On-Premises webhooks), then the configuration and
the command line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc
from whatsapp_emulator.emulator import (
    DEFAULT_INFOBIP_API_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    RunningEmulator,
    identity_changed_webhook,
)

from gateway.app.cli import build_parser, config_from_args, main
from gateway.app.config import ConfigError, GatewayConfig
from gateway.app.senders import SenderConfig, Senders
from gateway.app.server import GatewayServer
from gateway.app.startup import prepare
from gateway.serving.webhooks import authenticated
from tests.conftest import Outcome, call, new_wa_id, wait_until
from tests.test_serve_process import free_port, serve_process
from tests.test_tls import _make_ca, _make_leaf, _write_certificate, _write_key

FIRST, SECOND, THIRD = "15550001111", "15550002222", "447796344125"
FIRST_SECRET, SECOND_SECRET = "first-hook-s3cret", "second-hook-s3cret"
OLD, NEW = "UKD6Y/5SqDU=", "bmV3SGFzaA=="
SECRET = "wh-Zq81-s3cret"
GATEWAY = str(Path(sys.executable).parent / "identity-gateway")
ENV_SECRET = "IDENTITY_GATEWAY_WEBHOOK_SECRET"
ENV_ALLOW = "IDENTITY_GATEWAY_WEBHOOK_ALLOW_UNAUTHENTICATED"
TOKEN_ENV = {
    "IDENTITY_GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9",
    "IDENTITY_GATEWAY_UPSTREAM_TOKEN": "tok-Kq93-SECRET",
}


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def basic_raw(decoded: bytes) -> str:
    return "Basic " + base64.b64encode(decoded).decode("ascii")


# --- authenticated(): the header check alone ------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        bearer(SECRET),
        f"bearer {SECRET}",
        f"BEARER {SECRET}",
        f"BeArEr {SECRET}",
        basic("hook", SECRET),
        basic("", SECRET),
        basic("any-user-at-all", SECRET),
        basic("hook", SECRET).replace("Basic", "basic"),
        basic("hook", SECRET).replace("Basic", "BASIC"),
    ],
    ids=[
        "bearer",
        "bearer-lower",
        "bearer-upper",
        "bearer-mixed",
        "basic-hook",
        "basic-no-user",
        "basic-any-user",
        "basic-lower",
        "basic-upper",
    ],
)
def test_the_secret_as_bearer_token_or_basic_password_is_accepted(authorization: str) -> None:
    assert authenticated(authorization, SECRET) is True


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        bearer(SECRET + "x"),
        bearer(SECRET[:-1]),
        bearer(SECRET.upper()),
        f"Bearer {SECRET} {SECRET}",
        f"Bearer{SECRET}",
        SECRET,
        f"Token {SECRET}",
        f"App {SECRET}",
        f"Digest {SECRET}",
        f"Basic {SECRET}",  # the secret itself, not base64 of user:password
        basic("hook", "wrong"),
        basic("hook", ""),
        basic(SECRET, "other"),  # the secret as the user name: never accepted
        basic(SECRET, ""),
        basic_raw(SECRET.encode()),  # no colon: no password at all
        basic("hook", SECRET)[:-2],  # base64 cut short
        "Basic !!!!",
        "Basic " + base64.b64encode(f"hook:{SECRET}".encode()).decode().rstrip("="),
        basic_raw(b"hook:\xff\xfe" + SECRET.encode()),  # not UTF-8 once decoded
        basic_raw(b"\xff:" + SECRET.encode()).replace("Basic", "Bearer"),
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "bearer-alone",
        "bearer-empty",
        "bearer-wrong",
        "bearer-longer",
        "bearer-shorter",
        "bearer-other-case",
        "bearer-twice",
        "bearer-no-space",
        "bare-secret",
        "token-scheme",
        "app-scheme",
        "digest-scheme",
        "basic-not-base64-of-a-pair",
        "basic-wrong-password",
        "basic-empty-password",
        "basic-secret-as-user",
        "basic-secret-as-user-empty-password",
        "basic-no-colon",
        "basic-truncated",
        "basic-not-base64",
        "basic-unpadded",
        "basic-not-utf8",
        "bearer-of-basic-credentials",
    ],
)
def test_anything_else_is_refused(authorization: str | None) -> None:
    assert authenticated(authorization, SECRET) is False


def test_a_secret_with_colons_is_the_whole_basic_password() -> None:
    secret = "a:b:c"

    assert authenticated(basic("hook", secret), secret) is True
    assert authenticated(basic("", secret), secret) is True
    assert authenticated(bearer(secret), secret) is True
    # "a:b:c" as the decoded pair is user "a" with password "b:c": not the secret.
    assert authenticated(basic_raw(secret.encode()), secret) is False
    assert authenticated(basic("a:b", "c"), secret) is False


def test_a_non_ascii_secret_is_compared_as_utf8() -> None:
    secret = "sécret-✓"

    assert authenticated(bearer(secret), secret) is True
    assert authenticated(basic("hook", secret), secret) is True
    assert authenticated(bearer("secret-✓"), secret) is False


@pytest.mark.parametrize(
    "authorization",
    ["Basic é", "Basic \udcff", "Bearer \udcff"],
    ids=["basic-non-ascii", "basic-undecodable-byte", "bearer-undecodable-byte"],
)
def test_header_bytes_that_are_not_ascii_are_refused_not_raised(authorization: str) -> None:
    assert authenticated(authorization, SECRET) is False


# --- a real gateway: two On-Premises senders and an Infobip one --------------------------------


def _onprem(number: str, url: str, secret: str | None) -> SenderConfig:
    return SenderConfig(
        number,
        "onprem",
        url,
        username=DEFAULT_USERNAME,
        password=DEFAULT_PASSWORD,
        webhook_secret=secret,
    )


class Hooked:
    """A gateway with --webhook-listen, its emulators (by sender), a gRPC stub and an HTTP
    client for the webhook listener."""

    def __init__(
        self,
        server: GatewayServer,
        channel: grpc.aio.Channel,
        emulators: dict[str, RunningEmulator],
        http: httpx.AsyncClient,
    ) -> None:
        self.server = server
        self.emulators = emulators
        self.stub = identity_pb2_grpc.IdentityServiceStub(channel)
        self.http = http
        port = server.webhook_port
        assert port is not None
        self.port = port
        scheme = "https" if server.runtime.webhook_tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{port}"

    async def get(self, wa_id: str, sender: str = "") -> Outcome:
        request = identity_pb2.GetIdentityRequest(wa_id=wa_id, sender=sender)
        return await call(self.stub.GetIdentity, request)

    async def push(
        self,
        wa_id: str,
        identity_hash: str = NEW,
        *,
        path: str = "/webhook",
        authorization: str | None = None,
        auth: tuple[str, str] | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        """POST the On-Premises webhook the emulator would send for this change."""
        headers = {} if authorization is None else {"Authorization": authorization}
        return await self.http.post(
            url or self.base + path,
            json=identity_changed_webhook(wa_id, identity_hash, 1700000000000),
            headers=headers,
            auth=httpx.BasicAuth(*auth) if auth else httpx.USE_CLIENT_DEFAULT,
        )

    def upstream_reads(self) -> int:
        return sum(emulator.state.count("GET") for emulator in self.emulators.values())


@contextlib.asynccontextmanager
async def hooked(
    first_secret: str | None = FIRST_SECRET,
    second_secret: str | None = SECOND_SECRET,
    **overrides: Any,
) -> AsyncIterator[Hooked]:
    async with RunningEmulator() as first, RunningEmulator() as second:
        senders = Senders(
            (
                _onprem(FIRST, first.url, first_secret),
                _onprem(SECOND, second.url, second_secret),
                SenderConfig(THIRD, "infobip", second.url, api_key=DEFAULT_INFOBIP_API_KEY),
            ),
            default=FIRST,
        )
        settings: dict[str, Any] = {
            "senders": senders,
            "listen": "127.0.0.1:0",
            "webhook_listen": "127.0.0.1:0",
        }
        verify: ssl.SSLContext | bool = overrides.pop("verify", True)
        settings.update(overrides)
        async with (
            GatewayServer(GatewayConfig(**settings)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            httpx.AsyncClient(verify=verify) as http,
        ):
            yield Hooked(server, channel, {FIRST: first, SECOND: second}, http)


async def cache_both(running: Hooked, wa_id: str) -> None:
    """Both senders' emulators know ``wa_id`` with OLD, acknowledged; both caches hold it."""
    for sender in (FIRST, SECOND):
        running.emulators[sender].state.set_identity(wa_id, OLD, acknowledged=True)
        read = await running.get(wa_id, sender)
        assert read.ok, read
        assert (read.response.identity.hash, read.response.identity.acknowledged) == (OLD, True)


def identity(outcome: Outcome) -> tuple[str, str, bool, bool]:
    """(sender, hash, acknowledged, cache_hit) of a read."""
    assert outcome.ok, outcome
    found = outcome.response.identity
    return found.sender, found.hash, found.acknowledged, outcome.response.cache_hit


@pytest.mark.integration
async def test_a_push_without_authorization_is_401_and_changes_nothing() -> None:
    wa_id, sentinel = new_wa_id(), new_wa_id()
    async with hooked() as running:
        await cache_both(running, wa_id)
        reads = running.upstream_reads()
        stream = running.stub.WatchIdentityChanges(
            identity_pb2.WatchIdentityChangesRequest(wa_ids=[wa_id, sentinel])
        )
        assert await wait_until(lambda: running.server.changes.watchers > 0)

        refused = await running.push(wa_id)
        refused_named = await running.push(wa_id, path=f"/webhook/{FIRST}")
        # An authenticated change after them: the first event a watcher hears.
        accepted = await running.push(sentinel, authorization=bearer(FIRST_SECRET))
        event = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()
        after = await running.get(wa_id, FIRST)

    for response in (refused, refused_named):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert "error" in response.json()
        assert FIRST_SECRET not in response.text
    assert accepted.status_code == 200
    assert event.change.identity.wa_id == sentinel  # nothing was announced for wa_id
    assert identity(after) == (FIRST, OLD, True, True)  # the cache still holds the old hash
    assert running.upstream_reads() == reads


@pytest.mark.integration
@pytest.mark.parametrize(
    "authorization",
    [
        bearer("wrong"),
        bearer(SECOND_SECRET),  # the other sender's secret
        basic("hook", "wrong"),
        basic("hook", SECOND_SECRET),
        basic(FIRST_SECRET, "anything"),  # the secret as the user name
        f"Token {FIRST_SECRET}",
    ],
    ids=[
        "bearer-wrong",
        "bearer-other-senders",
        "basic-wrong",
        "basic-other-senders",
        "basic-secret-as-user",
        "other-scheme",
    ],
)
async def test_a_push_with_a_wrong_secret_is_401_and_changes_nothing(authorization: str) -> None:
    wa_id = new_wa_id()
    async with hooked() as running:
        await cache_both(running, wa_id)

        plain = await running.push(wa_id, authorization=authorization)
        named = await running.push(wa_id, path=f"/webhook/{FIRST}", authorization=authorization)
        after = await running.get(wa_id, FIRST)

    assert (plain.status_code, named.status_code) == (401, 401)
    assert identity(after) == (FIRST, OLD, True, True)


@pytest.mark.integration
async def test_a_bearer_push_is_200_and_the_new_hash_is_cached_unacknowledged() -> None:
    wa_id = new_wa_id()
    async with hooked() as running:
        await cache_both(running, wa_id)
        reads = running.upstream_reads()

        response = await running.push(wa_id, authorization=bearer(FIRST_SECRET))
        after = await running.get(wa_id)  # the default sender: FIRST

    assert (response.status_code, response.json()) == (200, {"accepted": 1})
    assert identity(after) == (FIRST, NEW, False, True)
    assert running.upstream_reads() == reads  # learned from the webhook, not from WhatsApp


@pytest.mark.integration
async def test_a_webhook_url_with_the_secret_as_basic_password_is_200() -> None:
    wa_id, other = new_wa_id(), new_wa_id()
    async with hooked() as running:
        await cache_both(running, wa_id)
        await cache_both(running, other)

        # https://hook:<secret>@host/webhook, as a WhatsApp client is configured
        in_url = await running.push(
            wa_id, url=f"http://hook:{FIRST_SECRET}@127.0.0.1:{running.port}/webhook"
        )
        as_auth = await running.push(other, path=f"/webhook/{SECOND}", auth=("hook", SECOND_SECRET))
        first = await running.get(wa_id, FIRST)
        second = await running.get(other, SECOND)

    assert in_url.request.headers["Authorization"] == basic("hook", FIRST_SECRET)
    assert (in_url.status_code, as_auth.status_code) == (200, 200)
    assert identity(first) == (FIRST, NEW, False, True)
    assert identity(second) == (SECOND, NEW, False, True)


@pytest.mark.integration
async def test_a_named_senders_path_changes_only_that_senders_identity() -> None:
    wa_id = new_wa_id()
    async with hooked() as running:
        await cache_both(running, wa_id)
        reads = running.upstream_reads()
        stream = running.stub.WatchIdentityChanges(
            identity_pb2.WatchIdentityChangesRequest(wa_ids=[wa_id])
        )
        assert await wait_until(lambda: running.server.changes.watchers > 0)

        response = await running.push(
            wa_id, path=f"/webhook/{SECOND}", authorization=bearer(SECOND_SECRET)
        )
        event = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()
        second = await running.get(wa_id, SECOND)
        first = await running.get(wa_id, FIRST)
        default = await running.get(wa_id)

    assert response.status_code == 200
    assert (event.change.identity.sender, event.change.identity.hash) == (SECOND, NEW)
    assert event.change.source == identity_pb2.IDENTITY_CHANGE_SOURCE_WEBHOOK
    assert identity(second) == (SECOND, NEW, False, True)
    assert identity(first) == (FIRST, OLD, True, True)
    assert identity(default) == (FIRST, OLD, True, True)
    assert running.upstream_reads() == reads


@pytest.mark.integration
async def test_one_senders_secret_does_not_open_another_senders_path() -> None:
    wa_id = new_wa_id()
    async with hooked() as running:
        await cache_both(running, wa_id)

        responses = [
            await running.push(
                wa_id, path=f"/webhook/{SECOND}", authorization=bearer(FIRST_SECRET)
            ),
            await running.push(wa_id, path=f"/webhook/{SECOND}", auth=("hook", FIRST_SECRET)),
            await running.push(
                wa_id, path=f"/webhook/{FIRST}", authorization=bearer(SECOND_SECRET)
            ),
            await running.push(wa_id, authorization=bearer(SECOND_SECRET)),  # /webhook: FIRST's
        ]
        first = await running.get(wa_id, FIRST)
        second = await running.get(wa_id, SECOND)

    assert [r.status_code for r in responses] == [401, 401, 401, 401]
    assert identity(first) == (FIRST, OLD, True, True)
    assert identity(second) == (SECOND, OLD, True, True)


@pytest.mark.integration
async def test_a_sender_that_takes_no_on_premises_webhooks_or_an_unknown_one_is_404() -> None:
    async with hooked() as running:
        infobip = await running.push(
            new_wa_id(), path=f"/webhook/{THIRD}", authorization=bearer(FIRST_SECRET)
        )
        unknown = await running.push(
            new_wa_id(), path="/webhook/15550009999", authorization=bearer(FIRST_SECRET)
        )

    assert (infobip.status_code, unknown.status_code) == (404, 404)


@pytest.mark.integration
async def test_an_authorization_header_of_raw_non_ascii_bytes_is_401() -> None:
    wa_id = new_wa_id()
    async with hooked() as running:
        statuses = []
        for raw in (b"Basic \xc3\xa9", b"Basic \xff", b"Bearer \xff"):
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            payload = json.dumps(identity_changed_webhook(wa_id, NEW, 1700000000000)).encode()
            writer.write(
                b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nAuthorization: " + raw + b"\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )
            await writer.drain()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            statuses.append(answer.split(b" ", 2)[1])

    assert statuses == [b"401", b"401", b"401"]


# --- start-up: no secret, no listener (unless told) --------------------------------------------


def test_a_sender_without_a_secret_stops_start_up_naming_it() -> None:
    senders = Senders(
        (
            _onprem(FIRST, "http://127.0.0.1:9", FIRST_SECRET),
            _onprem(SECOND, "http://127.0.0.1:9", None),
        ),
        default=FIRST,
    )

    with pytest.raises(ConfigError) as raised:
        GatewayConfig(senders=senders, webhook_listen="127.0.0.1:0")

    message = str(raised.value)
    assert f"sender {SECOND}" in message
    assert FIRST not in message
    assert "webhook_secret_env" in message
    assert "--webhook-allow-unauthenticated" in message


def test_in_flag_mode_the_refusal_says_how_to_give_the_secret() -> None:
    with pytest.raises(ConfigError) as raised:
        GatewayConfig(
            upstream_url="http://127.0.0.1:9", upstream_token="t", webhook_listen="127.0.0.1:0"
        )

    message = str(raised.value)
    assert message.startswith("--webhook-listen")
    assert ENV_SECRET in message
    assert "--webhook-secret-file" in message
    assert "--webhook-allow-unauthenticated" in message


def test_only_on_premises_senders_need_a_secret_and_only_with_a_listener() -> None:
    with_infobip = Senders(
        (
            _onprem(FIRST, "http://127.0.0.1:9", FIRST_SECRET),
            SenderConfig(THIRD, "infobip", "http://127.0.0.1:9", api_key="k"),
        ),
        default=FIRST,
    )
    GatewayConfig(senders=with_infobip, webhook_listen="127.0.0.1:0")
    no_secret = Senders((_onprem(FIRST, "http://127.0.0.1:9", None),), default=FIRST)
    GatewayConfig(senders=no_secret)  # no --webhook-listen: no webhook to authenticate
    GatewayConfig(upstream_url="http://127.0.0.1:9", upstream_token="t")


@pytest.mark.integration
async def test_allow_unauthenticated_starts_and_takes_a_push_without_a_secret() -> None:
    wa_id, other = new_wa_id(), new_wa_id()
    async with hooked(
        first_secret=None, second_secret=SECOND_SECRET, webhook_allow_unauthenticated=True
    ) as running:
        await cache_both(running, wa_id)
        await cache_both(running, other)

        open_one = await running.push(wa_id)  # FIRST has no secret
        # SECOND has one: allowing unauthenticated pushes does not switch it off.
        refused = await running.push(other, path=f"/webhook/{SECOND}")
        first = await running.get(wa_id, FIRST)
        second = await running.get(other, SECOND)

    assert (open_one.status_code, refused.status_code) == (200, 401)
    assert identity(first) == (FIRST, NEW, False, True)
    assert identity(second) == (SECOND, OLD, True, True)


@pytest.mark.integration
async def test_allow_unauthenticated_in_flag_mode_takes_a_push_without_a_secret(
    emulator: RunningEmulator,
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD, acknowledged=True)
    config = GatewayConfig(
        upstream_url=emulator.url,
        upstream_username=DEFAULT_USERNAME,
        upstream_password=DEFAULT_PASSWORD,
        listen="127.0.0.1:0",
        webhook_listen="127.0.0.1:0",
        webhook_allow_unauthenticated=True,
    )
    async with (
        GatewayServer(config) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        httpx.AsyncClient() as http,
    ):
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        get = identity_pb2.GetIdentityRequest(wa_id=wa_id)
        assert (await call(stub.GetIdentity, get)).response.identity.hash == OLD
        response = await http.post(
            f"http://127.0.0.1:{server.webhook_port}/webhook",
            json=identity_changed_webhook(wa_id, NEW, 1700000000000),
        )
        after = await call(stub.GetIdentity, get)

    assert response.status_code == 200
    assert identity(after) == ("", NEW, False, True)


@pytest.mark.integration
async def test_in_flag_mode_the_secret_is_webhook_secret(
    emulator: RunningEmulator,
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD, acknowledged=True)
    config = GatewayConfig(
        upstream_url=emulator.url,
        upstream_username=DEFAULT_USERNAME,
        upstream_password=DEFAULT_PASSWORD,
        listen="127.0.0.1:0",
        webhook_listen="127.0.0.1:0",
        webhook_secret=SECRET,
    )
    async with GatewayServer(config) as server, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{server.webhook_port}/webhook"
        body = identity_changed_webhook(wa_id, NEW, 1700000000000)
        refused = await http.post(url, json=body)
        named = await http.post(
            url + "/15550001111", json=body, headers={"Authorization": bearer(SECRET)}
        )
        accepted = await http.post(url, json=body, headers={"Authorization": bearer(SECRET)})

    assert (refused.status_code, named.status_code, accepted.status_code) == (401, 404, 200)


# --- the command line ---------------------------------------------------------------------------


def run_serve(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``identity-gateway serve`` with ``flags``, in an empty environment (or ``env``)."""
    command = [GATEWAY, "serve", "--listen", "127.0.0.1:0", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=20, env=env or {})


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok-Kq93-SECRET\n")
    return path


def test_serve_with_a_listener_and_no_secret_exits_2_with_one_line(token_file: Path) -> None:
    done = run_serve(
        "--upstream-url", "http://127.0.0.1:9",
        "--upstream-token-file", str(token_file),
        "--webhook-listen", "127.0.0.1:0",
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--webhook-listen" in done.stderr
    assert ENV_SECRET in done.stderr
    assert "--webhook-allow-unauthenticated" in done.stderr
    assert done.stdout == ""


def test_no_webhook_allow_unauthenticated_wins_over_its_environment_variable(
    token_file: Path,
) -> None:
    done = run_serve(
        "--upstream-url", "http://127.0.0.1:9",
        "--upstream-token-file", str(token_file),
        "--webhook-listen", "127.0.0.1:0",
        "--no-webhook-allow-unauthenticated",
        env={ENV_ALLOW: "true"},
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "has no webhook secret" in done.stderr


def test_an_empty_webhook_secret_file_exits_2_naming_the_file(
    tmp_path: Path, token_file: Path
) -> None:
    empty = tmp_path / "webhook-secret"
    empty.write_text("\n")

    done = run_serve(
        "--upstream-url", "http://127.0.0.1:9",
        "--upstream-token-file", str(token_file),
        "--webhook-listen", "127.0.0.1:0",
        "--webhook-secret-file", str(empty),
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert str(empty) in done.stderr


def parse_serve(*argv: str) -> Any:
    return build_parser().parse_args(["serve", *argv])


def load(argv: list[str], environ: dict[str, str]) -> GatewayConfig:
    return config_from_args(parse_serve(*argv), environ)


def test_the_webhook_secret_comes_from_its_variable_or_file(tmp_path: Path) -> None:
    from_file = tmp_path / "secret"
    from_file.write_text("from-the-file\n")
    other_file = tmp_path / "other"
    other_file.write_text("from-the-env-file\n")
    listen = ["--webhook-listen", "127.0.0.1:0"]

    by_variable = load(listen, {**TOKEN_ENV, ENV_SECRET: "from-the-variable"})
    by_flag = load([*listen, "--webhook-secret-file", str(from_file)], TOKEN_ENV)
    by_file_variable = load(listen, {**TOKEN_ENV, f"{ENV_SECRET}_FILE": str(other_file)})
    flag_wins = load(
        [*listen, "--webhook-secret-file", str(from_file)],
        {**TOKEN_ENV, ENV_SECRET: "from-the-variable", f"{ENV_SECRET}_FILE": str(other_file)},
    )

    assert by_variable.webhook_secret == "from-the-variable"
    assert by_flag.webhook_secret == "from-the-file"  # less the line ending
    assert by_file_variable.webhook_secret == "from-the-env-file"
    assert flag_wins.webhook_secret == "from-the-file"
    assert "from-the" not in repr(flag_wins)


def test_the_webhook_secret_variable_does_not_go_with_a_senders_file(tmp_path: Path) -> None:
    senders = tmp_path / "senders.toml"
    senders.write_text(
        f'[[senders]]\nnumber = "{FIRST}"\nbackend = "onprem"\nurl = "http://127.0.0.1:9"\n'
        'token_env = "WA_TOKEN"\nwebhook_secret_env = "WA_HOOK"\n'
    )
    environ = {"WA_TOKEN": "t", "WA_HOOK": FIRST_SECRET}

    config = load(["--senders", str(senders), "--webhook-listen", "127.0.0.1:0"], environ)
    with pytest.raises(ConfigError, match="--senders and IDENTITY_GATEWAY_WEBHOOK_SECRET"):
        load(["--senders", str(senders)], {**environ, ENV_SECRET: "flag-mode-secret"})

    assert config.resolved_senders().senders[0].webhook_secret == FIRST_SECRET


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, False),
        ([], {ENV_ALLOW: "true"}, True),
        ([], {ENV_ALLOW: "false"}, False),
        (["--webhook-allow-unauthenticated"], {}, True),
        (["--webhook-allow-unauthenticated"], {ENV_ALLOW: "false"}, True),
        (["--no-webhook-allow-unauthenticated"], {ENV_ALLOW: "true"}, False),
    ],
    ids=["default", "env-true", "env-false", "flag", "flag-wins", "no-flag-wins"],
)
def test_allow_unauthenticated_from_flag_or_environment(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    config = load(argv, {**TOKEN_ENV, ENV_SECRET: SECRET, **environ})

    assert config.webhook_allow_unauthenticated is expected


def test_allow_unauthenticated_in_the_environment_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=ENV_ALLOW):
        load([], {**TOKEN_ENV, ENV_ALLOW: "maybe"})


def test_allow_unauthenticated_from_the_environment_lets_a_listener_start_without_a_secret() -> (
    None
):
    listen = ["--webhook-listen", "127.0.0.1:0"]

    config = load(listen, {**TOKEN_ENV, ENV_ALLOW: "yes"})

    assert (config.webhook_allow_unauthenticated, config.webhook_secret) == (True, None)


@pytest.mark.integration
async def test_serve_logs_a_warning_when_unauthenticated_webhooks_are_allowed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    wa_id = new_wa_id()
    webhook_port = free_port()
    async with serve_process(
        emulator,
        tmp_path,
        "--webhook-listen",
        f"127.0.0.1:{webhook_port}",
        "--webhook-allow-unauthenticated",
    ) as gateway:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"http://127.0.0.1:{webhook_port}/webhook",
                json=identity_changed_webhook(wa_id, NEW, 1700000000000),
            )
        gateway.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(gateway.process.wait(), 30)
    records = [json.loads(line) for line in gateway.log_lines()]

    assert response.status_code == 200
    assert exit_code == 0
    warnings = [
        r
        for r in records
        if r["level"] == "warning" and "--webhook-allow-unauthenticated" in r["message"]
    ]
    assert len(warnings) == 1
    assert f"127.0.0.1:{webhook_port}" in warnings[0]["message"]
    serving = [i for i, r in enumerate(records) if r["message"] == "serving"]
    assert serving
    assert records.index(warnings[0]) < serving[0]  # said at start


@pytest.mark.integration
async def test_serve_with_a_webhook_secret_file_checks_it_and_warns_of_nothing(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    webhook_port = free_port()
    url = f"http://127.0.0.1:{webhook_port}/webhook"
    body = identity_changed_webhook(new_wa_id(), NEW, 1700000000000)
    async with serve_process(
        emulator,
        tmp_path,
        "--webhook-listen",
        f"127.0.0.1:{webhook_port}",
        "--webhook-secret-file",
        str(secret_file),
    ) as gateway:
        async with httpx.AsyncClient() as http:
            refused = await http.post(url, json=body)
            accepted = await http.post(url, json=body, headers={"Authorization": bearer(SECRET)})
        gateway.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(gateway.process.wait(), 30)
    log = gateway.log.read_text()

    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert exit_code == 0
    assert "--webhook-allow-unauthenticated" not in log
    assert SECRET not in log


# --- TLS on the webhook listener ----------------------------------------------------------------


class WebhookPki:
    def __init__(self, directory: Path) -> None:
        ca = _make_ca("webhook test CA")
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        server = _make_leaf("webhooks", ca, names, ExtendedKeyUsageOID.SERVER_AUTH)
        other = _make_leaf("other", ca, names, ExtendedKeyUsageOID.SERVER_AUTH)
        self.ca = _write_certificate(directory / "ca.pem", ca[1])
        self.cert = _write_certificate(directory / "webhook.pem", server[1])
        self.key = _write_key(directory / "webhook.key", server[0])
        self.other_key = _write_key(directory / "other.key", other[0])
        self.encrypted_key = _write_key(
            directory / "encrypted.key",
            server[0],
            serialization.BestAvailableEncryption(b"passphrase"),
        )


@pytest.fixture(scope="module")
def webhook_pki(tmp_path_factory: pytest.TempPathFactory) -> WebhookPki:
    return WebhookPki(tmp_path_factory.mktemp("webhook-pki"))


@pytest.fixture
def trust(webhook_pki: WebhookPki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(webhook_pki.ca))


@pytest.mark.integration
async def test_the_listener_with_a_certificate_takes_a_bearer_push_over_https(
    webhook_pki: WebhookPki, trust: ssl.SSLContext
) -> None:
    wa_id = new_wa_id()
    async with hooked(
        webhook_tls_cert=webhook_pki.cert, webhook_tls_key=webhook_pki.key, verify=trust
    ) as running:
        await cache_both(running, wa_id)

        assert running.base.startswith("https://")
        refused = await running.push(wa_id)
        accepted = await running.push(
            wa_id, path=f"/webhook/{SECOND}", authorization=bearer(SECOND_SECRET)
        )
        second = await running.get(wa_id, SECOND)
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.post(
                    f"http://127.0.0.1:{running.port}/webhook/{SECOND}",
                    json=identity_changed_webhook(wa_id, OLD, 1700000000000),
                    headers={"Authorization": bearer(SECOND_SECRET)},
                )

    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert accepted.http_version == "HTTP/1.1"
    assert identity(second) == (SECOND, NEW, False, True)


def flag_mode(**fields: Any) -> GatewayConfig:
    return GatewayConfig(
        upstream_url="http://127.0.0.1:9",
        upstream_token="t",
        webhook_listen="127.0.0.1:0",
        webhook_secret=SECRET,
        **fields,
    )


def test_a_key_that_does_not_match_the_certificate_stops_start_up(
    webhook_pki: WebhookPki,
) -> None:
    config = flag_mode(webhook_tls_cert=webhook_pki.cert, webhook_tls_key=webhook_pki.other_key)

    with pytest.raises(ConfigError) as raised:
        prepare(config)

    message = str(raised.value)
    assert f"--webhook-tls-cert {webhook_pki.cert}" in message
    assert f"--webhook-tls-key {webhook_pki.other_key}" in message
    assert "BEGIN" not in message


def test_an_encrypted_key_stops_start_up(webhook_pki: WebhookPki) -> None:
    config = flag_mode(webhook_tls_cert=webhook_pki.cert, webhook_tls_key=webhook_pki.encrypted_key)

    with pytest.raises(ConfigError, match=r"--webhook-tls-key .* is encrypted"):
        prepare(config)


def test_a_missing_certificate_file_stops_start_up(webhook_pki: WebhookPki, tmp_path: Path) -> None:
    config = flag_mode(webhook_tls_cert=tmp_path / "absent.pem", webhook_tls_key=webhook_pki.key)

    with pytest.raises(ConfigError, match="--webhook-tls-cert"):
        prepare(config)


@pytest.mark.parametrize("given", ["cert", "key"])
def test_the_certificate_and_key_go_together(webhook_pki: WebhookPki, given: str) -> None:
    fields = (
        {"webhook_tls_cert": webhook_pki.cert}
        if given == "cert"
        else {"webhook_tls_key": webhook_pki.key}
    )
    missing = "--webhook-tls-key" if given == "cert" else "--webhook-tls-cert"

    with pytest.raises(ConfigError, match=f"go together: {missing} is missing"):
        flag_mode(**fields)


def test_without_a_certificate_the_listener_is_plain_http() -> None:
    assert prepare(flag_mode()).webhook_tls is None


def test_the_tls_files_come_from_flags_or_environment(webhook_pki: WebhookPki) -> None:
    environ = {
        **TOKEN_ENV,
        ENV_SECRET: SECRET,
        "IDENTITY_GATEWAY_WEBHOOK_TLS_CERT": str(webhook_pki.cert),
        "IDENTITY_GATEWAY_WEBHOOK_TLS_KEY": str(webhook_pki.key),
    }
    flags = [
        "--webhook-tls-cert", str(webhook_pki.ca),
        "--webhook-tls-key", str(webhook_pki.other_key),
    ]  # fmt: skip

    from_env = load([], environ)
    from_flags = load(flags, environ)

    assert (from_env.webhook_tls_cert, from_env.webhook_tls_key) == (
        webhook_pki.cert,
        webhook_pki.key,
    )
    assert (from_flags.webhook_tls_cert, from_flags.webhook_tls_key) == (
        webhook_pki.ca,
        webhook_pki.other_key,
    )
    assert isinstance(prepare(from_env).webhook_tls, ssl.SSLContext)


def test_serve_with_a_mismatched_webhook_key_exits_2_with_one_line(
    webhook_pki: WebhookPki, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "serve",
        "--webhook-listen", "127.0.0.1:0",
        "--webhook-tls-cert", str(webhook_pki.cert),
        "--webhook-tls-key", str(webhook_pki.other_key),
    ]  # fmt: skip

    status = main(argv, {**TOKEN_ENV, ENV_SECRET: SECRET})

    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.count("\n") == 1
    assert "--webhook-tls-key" in stderr


@pytest.mark.integration
async def test_a_burst_of_refused_pushes_is_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spec §7: a burst of errors is logged at a bounded rate, not one line per push."""
    async with hooked() as running:
        with caplog.at_level(logging.WARNING, logger="gateway.serving.webhooks"):
            for _ in range(200):
                answer = await running.push(new_wa_id(), NEW)
                assert answer.status_code == 401
    refused = [r for r in caplog.records if "unauthenticated webhook" in r.getMessage()]
    assert 1 <= len(refused) <= 5
