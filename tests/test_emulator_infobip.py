"""The emulator's Infobip identity API and its webhook secret, driven over real sockets with httpx.

Infobip's paths share the emulator's contacts and control API with the on-premises ones; the
``emulator`` fixture (conftest) is a fresh RunningEmulator on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from whatsapp_emulator.emulator import (
    DEFAULT_INFOBIP_API_KEY,
    DEMO_CONTACTS,
    Fault,
    RunningEmulator,
    infobip_error_envelope,
    run_emulator,
)

from gateway.serving.appserver import AppServer
from tests.conftest import wait_until
from tests.emulator_control import EmulatorControl

SENDER = "447860099299"
OTHER_SENDER = "385919998888"
KNOWN = "16315551234"  # demo contact: hash UKD6Y/5SqDU=, not acknowledged, created 1600132094000
KNOWN_HASH = "UKD6Y/5SqDU="
NEW_HASH = "bmV3SGFzaA=="  # no demo contact's
UNKNOWN = "19995550123"
APP_KEY = {"Authorization": f"App {DEFAULT_INFOBIP_API_KEY}"}
ISO_MILLIS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UNAUTHORIZED = {
    "requestError": {
        "serviceException": {"messageId": "UNAUTHORIZED", "text": "Invalid login details"}
    }
}


def infobip_path(wa_id: str, sender: str = SENDER) -> str:
    return f"/whatsapp/1/{sender}/contacts/{wa_id}/identity"


def message_id(response: httpx.Response) -> str:
    """The messageId of an answer in Infobip's error envelope (asserting the envelope's shape)."""
    exception = response.json()["requestError"]["serviceException"]
    assert set(exception) == {"messageId", "text"}
    assert isinstance(exception["text"], str)
    assert exception["text"]
    found: str = exception["messageId"]
    return found


@pytest.fixture
async def infobip(emulator: RunningEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client sending the emulator's default App key."""
    async with httpx.AsyncClient(base_url=emulator.url, headers=APP_KEY) as client:
        yield client


@pytest.fixture
async def anonymous(emulator: RunningEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client sending no credentials."""
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        yield client


@pytest.fixture
async def control(emulator: RunningEmulator) -> AsyncIterator[EmulatorControl]:
    async with EmulatorControl(emulator.url) as control:
        yield control


# Reading an identity.


async def test_get_identity_answers_infobip_shape_with_created_at_in_iso_utc_millis(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.set_identity(KNOWN, NEW_HASH, created_timestamp=1645171946422)

    response = await infobip.get(infobip_path(KNOWN))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "acknowledged": False,
        "hash": NEW_HASH,
        "createdAt": "2022-02-18T08:12:26.422Z",
    }


async def test_get_identity_serves_the_demo_contacts_in_one_shape_whatever_their_variant(
    infobip: httpx.AsyncClient,
) -> None:
    for wa_id, contact in DEMO_CONTACTS.items():
        response = await infobip.get(infobip_path(wa_id))

        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"acknowledged", "hash", "createdAt"}
        assert body["acknowledged"] is contact.acknowledged  # a JSON bool, never a string
        assert body["hash"] == contact.hash
        assert ISO_MILLIS_UTC.fullmatch(body["createdAt"])
    known = (await infobip.get(infobip_path(KNOWN))).json()
    assert known["createdAt"] == "2020-09-15T01:08:14.000Z"  # 1600132094000 ms


@pytest.mark.parametrize(
    ("created_timestamp", "created_at"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (1700000000999, "2023-11-14T22:13:20.999Z"),
        (253402300799999, "9999-12-31T23:59:59.999Z"),
    ],
)
async def test_created_at_is_the_stored_timestamp_to_the_millisecond(
    infobip: httpx.AsyncClient, control: EmulatorControl, created_timestamp: int, created_at: str
) -> None:
    await control.set_identity(KNOWN, NEW_HASH, created_timestamp=created_timestamp)

    response = await infobip.get(infobip_path(KNOWN))

    assert response.json()["createdAt"] == created_at


async def test_a_timestamp_no_iso_date_can_name_is_refused_by_the_control_api(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.put(
        f"/_emulator/contacts/{KNOWN}", json={"hash": NEW_HASH, "created_timestamp": 10**15}
    )

    assert response.status_code == 400
    assert "created_timestamp" in response.json()["error"]


async def test_any_digits_only_sender_reads_the_same_contacts(infobip: httpx.AsyncClient) -> None:
    first = await infobip.get(infobip_path(KNOWN, SENDER))
    second = await infobip.get(infobip_path(KNOWN, OTHER_SENDER))

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


async def test_get_identity_of_an_unknown_contact_is_404_not_found(
    infobip: httpx.AsyncClient,
) -> None:
    response = await infobip.get(infobip_path(UNKNOWN))

    assert response.status_code == 404
    assert message_id(response) == "NOT_FOUND"


@pytest.mark.parametrize(
    ("sender", "wa_id"),
    [
        ("infobip", KNOWN),
        ("+" + SENDER, KNOWN),
        ("٤٤٧٨", KNOWN),  # Arabic-Indic digits: str.isdigit, but not international form
        (SENDER, "1631555123x"),
        (SENDER, "+" + KNOWN),
        (SENDER, "%20" + KNOWN),
    ],
)
async def test_a_sender_or_user_number_that_is_not_digits_is_400_bad_request(
    infobip: httpx.AsyncClient, sender: str, wa_id: str
) -> None:
    for method in ("GET", "PUT"):
        response = await infobip.request(
            method, infobip_path(wa_id, sender), json={"hash": KNOWN_HASH}
        )

        assert response.status_code == 400, method
        assert message_id(response) == "BAD_REQUEST"


# Acknowledging an identity.


async def test_acknowledge_with_the_current_hash_is_204_without_a_body_and_acknowledges(
    emulator: RunningEmulator, infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    response = await infobip.put(infobip_path(KNOWN), json={"hash": KNOWN_HASH})

    assert response.status_code == 204
    assert response.content == b""
    assert (await control.get_identity(KNOWN) or {})["acknowledged"] is True
    assert (await infobip.get(infobip_path(KNOWN, OTHER_SENDER))).json()["acknowledged"] is True
    # One store: the on-premises API sees the acknowledgement too.
    stored = emulator.state.identity(KNOWN)
    assert stored is not None
    assert stored.identity_body()["contacts"]["acknowledged"] is True


async def test_acknowledge_with_a_stale_hash_is_409_and_acknowledges_nothing(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    response = await infobip.put(infobip_path(KNOWN), json={"hash": NEW_HASH})

    assert response.status_code == 409
    assert message_id(response) == "CONFLICT"
    stored = await control.get_identity(KNOWN) or {}
    assert (stored["hash"], stored["acknowledged"]) == (KNOWN_HASH, False)
    assert (await infobip.get(infobip_path(KNOWN))).json()["acknowledged"] is False


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'"hash"', b"{}", b'{"hash": ""}', b'{"hash": 7}', b'{"hsah": "x"}'],
)
async def test_acknowledge_with_a_malformed_body_is_400_and_acknowledges_nothing(
    infobip: httpx.AsyncClient, control: EmulatorControl, body: bytes
) -> None:
    response = await infobip.put(infobip_path(KNOWN), content=body)

    assert response.status_code == 400
    assert message_id(response) == "BAD_REQUEST"
    assert (await control.get_identity(KNOWN) or {})["acknowledged"] is False


async def test_acknowledge_of_an_unknown_contact_is_404_not_found(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    response = await infobip.put(infobip_path(UNKNOWN), json={"hash": KNOWN_HASH})

    assert response.status_code == 404
    assert message_id(response) == "NOT_FOUND"
    assert await control.get_identity(UNKNOWN) is None


# The App key.


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "App",
        "App wrong-key",
        f"App {DEFAULT_INFOBIP_API_KEY}x",
        f"Bearer {DEFAULT_INFOBIP_API_KEY}",
        f"Basic {DEFAULT_INFOBIP_API_KEY}",
        DEFAULT_INFOBIP_API_KEY,
    ],
)
async def test_missing_or_wrong_app_key_is_401_in_infobip_envelope(
    anonymous: httpx.AsyncClient, control: EmulatorControl, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    read = await anonymous.get(infobip_path(KNOWN), headers=headers)
    acknowledged = await anonymous.put(
        infobip_path(KNOWN), headers=headers, json={"hash": KNOWN_HASH}
    )

    for response in (read, acknowledged):
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    assert (await control.get_identity(KNOWN) or {})["acknowledged"] is False


async def test_app_key_is_checked_before_the_path(anonymous: httpx.AsyncClient) -> None:
    for path in (infobip_path(UNKNOWN), infobip_path(KNOWN, "not-digits")):
        response = await anonymous.get(path)

        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED


async def test_the_app_scheme_is_matched_in_any_case(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get(
        infobip_path(KNOWN), headers={"Authorization": f"app {DEFAULT_INFOBIP_API_KEY}"}
    )

    assert response.status_code == 200


async def test_an_on_premises_bearer_token_does_not_open_infobip(
    anonymous: httpx.AsyncClient,
) -> None:
    login = await anonymous.post("/v1/users/login", auth=("admin", "secret"))
    token = login.json()["users"][0]["token"]

    response = await anonymous.get(
        infobip_path(KNOWN), headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


async def test_the_app_key_does_not_open_the_on_premises_api(infobip: httpx.AsyncClient) -> None:
    response = await infobip.get(f"/v1/contacts/{KNOWN}/identity")

    assert response.status_code == 401
    assert response.content == b""  # the on-premises bare 401, not Infobip's envelope


async def test_a_chosen_api_key_is_required_and_survives_a_reset() -> None:
    async with (
        RunningEmulator(infobip_api_key="k3y-for-tests") as emulator,
        httpx.AsyncClient(base_url=emulator.url) as client,
    ):
        default = await client.get(infobip_path(KNOWN), headers=APP_KEY)
        emulator.state.reset()
        chosen = await client.get(
            infobip_path(KNOWN), headers={"Authorization": "App k3y-for-tests"}
        )

    assert default.status_code == 401
    assert chosen.status_code == 200


@pytest.mark.parametrize("api_key", ["", "two words", "line\nbreak", "ключ"])
def test_an_api_key_that_cannot_go_in_a_header_is_refused(api_key: str) -> None:
    with pytest.raises(ValueError, match="infobip_api_key"):
        RunningEmulator(infobip_api_key=api_key)


# Faults and recorded requests.


async def test_status_fault_answers_an_infobip_envelope_once_before_auth(
    anonymous: httpx.AsyncClient, infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    envelope = infobip_error_envelope("TOO_MANY_REQUESTS")
    await control.add_fault(
        "/whatsapp/1/*/contacts/*/identity",
        method="PUT",
        status=429,
        json=envelope,
        headers={"Retry-After": "2"},
    )

    faulted = await anonymous.put(infobip_path(KNOWN), json={"hash": KNOWN_HASH})
    normal = await infobip.put(infobip_path(KNOWN), json={"hash": KNOWN_HASH})

    assert faulted.status_code == 429
    assert faulted.json() == {
        "requestError": {
            "serviceException": {"messageId": "TOO_MANY_REQUESTS", "text": "Too many requests"}
        }
    }
    assert faulted.headers["retry-after"] == "2"
    assert normal.status_code == 204


async def test_fault_matches_one_sender_and_leaves_the_others_alone(
    emulator: RunningEmulator, infobip: httpx.AsyncClient
) -> None:
    emulator.state.add_fault(
        Fault(
            f"/whatsapp/1/{SENDER}/*",
            times=None,
            status=500,
            json=infobip_error_envelope("GENERAL_ERROR"),
        )
    )

    for _ in range(2):
        response = await infobip.get(infobip_path(KNOWN, SENDER))
        assert response.status_code == 500
        assert message_id(response) == "GENERAL_ERROR"
    assert (await infobip.get(infobip_path(KNOWN, OTHER_SENDER))).status_code == 200


async def test_drop_fault_closes_the_connection_on_an_infobip_path(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/whatsapp/1/*", drop=True)

    with pytest.raises(httpx.RemoteProtocolError):
        await infobip.get(infobip_path(KNOWN))
    assert (await infobip.get(infobip_path(KNOWN))).status_code == 200


async def test_made_up_fault_bodies_on_infobip_paths_are_in_infobip_shape(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/whatsapp/1/*", body_size=300)
    await control.add_fault("/whatsapp/1/*", malformed=True)

    padded = await infobip.get(infobip_path(KNOWN))
    malformed = await infobip.get(infobip_path(KNOWN))

    assert len(padded.content) == 300
    body = padded.json()
    assert (body["hash"], body["acknowledged"]) == (KNOWN_HASH, False)
    assert ISO_MILLIS_UTC.fullmatch(body["createdAt"])
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    assert malformed.content.startswith(b'{"acknowledged"')


async def test_delay_fault_delays_the_normal_infobip_answer(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/whatsapp/1/*", delay=0.2)

    started = asyncio.get_running_loop().time()
    response = await infobip.get(infobip_path(KNOWN))

    assert asyncio.get_running_loop().time() - started >= 0.2
    assert response.status_code == 200


async def test_infobip_requests_are_recorded_with_the_sender_and_the_app_key(
    emulator: RunningEmulator,
    infobip: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    control: EmulatorControl,
) -> None:
    await infobip.get(infobip_path(KNOWN, OTHER_SENDER))
    await infobip.put(infobip_path(KNOWN), json={"hash": KNOWN_HASH})
    await anonymous.get(infobip_path(UNKNOWN))  # refused, and recorded all the same

    [put] = await control.requests(method="PUT", path="/whatsapp/1/*")
    assert put["path"] == infobip_path(KNOWN, SENDER)
    assert json.loads(put["body"]) == {"hash": KNOWN_HASH}
    assert put["headers"]["authorization"] == f"App {DEFAULT_INFOBIP_API_KEY}"
    [get] = await control.requests(method="GET", path=f"/whatsapp/1/{OTHER_SENDER}/*")
    assert get["path"] == infobip_path(KNOWN, OTHER_SENDER)
    assert await control.count(path="/whatsapp/1/*/contacts/*/identity") == 3
    assert emulator.state.count("GET", infobip_path(UNKNOWN)) == 1
    assert await control.count(path="/v1/*") == 0


async def test_reset_restores_infobip_contacts_and_forgets_faults_and_requests(
    infobip: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await infobip.put(infobip_path(KNOWN), json={"hash": KNOWN_HASH})
    await control.add_fault("/whatsapp/1/*", status=503, times=None)

    await control.reset()

    response = await infobip.get(infobip_path(KNOWN))
    assert response.status_code == 200
    assert response.json() == DEMO_CONTACTS[KNOWN].infobip_identity_body()
    assert response.json()["acknowledged"] is False
    assert await control.count() == 1  # only the request after the reset


# The webhook secret.


class HeaderReceiver(AppServer):
    """A webhook endpoint on a free port that keeps every request's headers and JSON body."""

    name = "webhook receiver"

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)
        self.received: list[tuple[dict[str, str], Any]] = []

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhook", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        return web.Response(status=200)

    @property
    def url(self) -> str:
        return self.base_url + "/webhook"


@pytest.fixture
async def receiver() -> AsyncIterator[HeaderReceiver]:
    async with HeaderReceiver() as receiver:
        yield receiver


async def test_webhooks_carry_the_secret_as_a_bearer_token_when_one_is_set(
    control: EmulatorControl, receiver: HeaderReceiver
) -> None:
    await control.update_settings(webhook_url=receiver.url, webhook_secret="wh-s3cret")

    await control.set_identity(KNOWN, NEW_HASH)

    assert await wait_until(lambda: len(receiver.received) == 1)
    [(headers, payload)] = receiver.received
    assert headers["Authorization"] == "Bearer wh-s3cret"
    assert payload["messages"][0]["system"]["identity"] == NEW_HASH


async def test_webhooks_carry_no_authorization_without_a_secret(
    emulator: RunningEmulator, control: EmulatorControl, receiver: HeaderReceiver
) -> None:
    await control.update_settings(webhook_url=receiver.url)
    await control.set_identity(KNOWN, NEW_HASH)
    assert await wait_until(lambda: len(receiver.received) == 1)
    await control.update_settings(webhook_secret="wh-s3cret")
    await control.set_identity("16315550000", NEW_HASH)
    assert await wait_until(lambda: len(receiver.received) == 2)
    await control.update_settings(webhook_secret=None)

    await control.set_identity("16315553601", NEW_HASH)

    assert await wait_until(lambda: len(receiver.received) == 3)
    authorizations = [headers.get("Authorization") for headers, _ in receiver.received]
    assert authorizations == [None, "Bearer wh-s3cret", None]
    assert all(d.ok for d in emulator.state.webhook_deliveries)


async def test_settings_show_the_secret_as_set_or_null_never_its_value(
    anonymous: httpx.AsyncClient, control: EmulatorControl
) -> None:
    assert (await control.settings())["webhook_secret"] is None

    updated = await anonymous.put("/_emulator/settings", json={"webhook_secret": "wh-s3cret"})
    shown = await anonymous.get("/_emulator/settings")

    for response in (updated, shown):
        assert response.status_code == 200
        assert response.json()["webhook_secret"] == "set"
        assert "wh-s3cret" not in response.text
    assert (await control.update_settings(webhook_secret=None))["webhook_secret"] is None


@pytest.mark.parametrize("secret", ["", "two words", "line\r\nX-Injected: 1", 42, ["s"]])
async def test_control_api_refuses_a_secret_that_cannot_go_in_a_header(
    anonymous: httpx.AsyncClient, secret: object
) -> None:
    response = await anonymous.put("/_emulator/settings", json={"webhook_secret": secret})

    assert response.status_code == 400
    assert "webhook_secret" in response.json()["error"]


async def test_the_secret_is_not_in_the_settings_repr(emulator: RunningEmulator) -> None:
    settings = emulator.state.update_settings(webhook_secret="wh-s3cret")

    assert "wh-s3cret" not in repr(settings)


async def test_a_secret_given_at_start_survives_a_reset(receiver: HeaderReceiver) -> None:
    async with RunningEmulator(webhook_url=receiver.url, webhook_secret="from-start") as emulator:
        emulator.state.reset()
        emulator.state.set_identity(KNOWN, NEW_HASH)
        assert await wait_until(lambda: len(receiver.received) == 1)

    assert receiver.received[0][0]["Authorization"] == "Bearer from-start"
    assert emulator.state.settings.webhook_secret == "from-start"


# run_emulator.


async def announced_url(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """The first line run_emulator prints, and the URL in it."""
    printed = ""
    for _ in range(200):
        printed += capsys.readouterr().out
        if match := re.search(r"https?://127\.0\.0\.1:\d+", printed):
            return printed, match.group()
        await asyncio.sleep(0.01)
    raise AssertionError(f"run_emulator announced nothing: {printed!r}")


async def test_run_emulator_takes_an_api_key_and_a_webhook_secret_and_shows_neither(
    capsys: pytest.CaptureFixture[str], receiver: HeaderReceiver
) -> None:
    task = asyncio.create_task(
        run_emulator(
            "127.0.0.1",
            0,
            username="admin",
            password="secret",
            token_lifetime=60,
            webhook_url=receiver.url,
            webhook_secret="wh-s3cret",
            infobip_api_key="chosen-key",
        )
    )
    try:
        line, url = await announced_url(capsys)
        assert "/whatsapp/1/" in line
        assert "chosen-key" not in line
        assert "wh-s3cret" not in line
        async with httpx.AsyncClient(base_url=url) as client:
            chosen = await client.get(
                infobip_path(KNOWN), headers={"Authorization": "App chosen-key"}
            )
            default = await client.get(infobip_path(KNOWN), headers=APP_KEY)
        assert (chosen.status_code, default.status_code) == (200, 401)
        async with EmulatorControl(url) as control:
            await control.set_identity(KNOWN, NEW_HASH)
        assert await wait_until(lambda: len(receiver.received) == 1)
        assert receiver.received[0][0]["Authorization"] == "Bearer wh-s3cret"
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_emulator_announces_the_demo_api_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(
        run_emulator("127.0.0.1", 0, username="admin", password="secret", token_lifetime=60)
    )
    try:
        line, _ = await announced_url(capsys)
        assert f"App {DEFAULT_INFOBIP_API_KEY}" in line
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("option", "value"), [("webhook_secret", "two words"), ("infobip_api_key", "")]
)
async def test_run_emulator_refuses_a_bad_secret_or_key_before_listening(
    option: str, value: str
) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(ValueError, match=option):
        await run_emulator(
            "127.0.0.1",
            0,
            username="admin",
            password="secret",
            token_lifetime=60,
            **options,
        )
