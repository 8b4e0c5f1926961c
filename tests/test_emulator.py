"""The WhatsApp Business API emulator, driven over real sockets with httpx.

The ``emulator`` fixture (conftest) is a fresh RunningEmulator on a free loopback port.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from whatsapp_emulator.emulator import (
    DEMO_CONTACTS,
    Fault,
    RunningEmulator,
    error_envelope,
    identity_changed_webhook,
    run_emulator,
)

from gateway.backends.onprem.webhook import IdentityChangeReport, parse_webhook
from gateway.serving.webhooks import WebhookServer
from tests.conftest import wait_until
from tests.emulator_control import EmulatorControl

LOGIN = "/v1/users/login"
KNOWN = "16315551234"  # demo contact: hash UKD6Y/5SqDU=, not acknowledged
KNOWN_HASH = "UKD6Y/5SqDU="
NEW_HASH = "Su9l2C1YsAk="
OTHER_HASH = "7hZ2bvlVvXo="  # no demo contact's
UNKNOWN = "19995550123"
META = {"api_status": "stable", "version": "v2.45.1"}
# Shared by every client: without it each httpx client loads the CA bundle (~0.1 s apiece).
CLIENT_TLS = ssl.create_default_context()


def identity_path(wa_id: str) -> str:
    return f"/v1/contacts/{wa_id}/identity"


async def login(client: httpx.AsyncClient, password: str = "secret") -> str:
    response = await client.post(LOGIN, auth=("admin", password))
    assert response.status_code == 200, response.text
    token: str = response.json()["users"][0]["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, verify=CLIENT_TLS) as client:
        yield client


@pytest.fixture
async def api(emulator: RunningEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client already logged in."""
    async with httpx.AsyncClient(base_url=emulator.url, verify=CLIENT_TLS) as client:
        client.headers.update(bearer(await login(client)))
        yield client


@pytest.fixture
async def control(emulator: RunningEmulator) -> AsyncIterator[EmulatorControl]:
    async with EmulatorControl(emulator.url, verify=CLIENT_TLS) as control:
        yield control


# Login.


async def test_login_issues_a_token_expiring_in_seven_days_in_the_documented_format(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(LOGIN, auth=("admin", "secret"))

    assert response.status_code == 200
    body = response.json()
    assert body["meta"] == META
    [user] = body["users"]
    assert isinstance(user["token"], str)
    assert len(user["token"]) >= 20
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", user["expires_after"])
    expires = dt.datetime.strptime(user["expires_after"], "%Y-%m-%d %H:%M:%S%z")
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    assert abs((expires - expected).total_seconds()) < 5


async def test_login_expires_after_is_iso_8601_when_set(
    client: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.update_settings(expires_format="iso", token_lifetime=3600)

    response = await client.post(LOGIN, auth=("admin", "secret"))

    expires_after = response.json()["users"][0]["expires_after"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", expires_after)
    expires = dt.datetime.strptime(expires_after, "%Y-%m-%dT%H:%M:%S.%f%z")
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert abs((expires - expected).total_seconds()) < 5


@pytest.mark.parametrize(
    "auth", [("admin", "wrong"), ("someone", "secret")], ids=["password", "username"]
)
async def test_login_with_wrong_credentials_is_401_with_code_1005(
    client: httpx.AsyncClient, auth: tuple[str, str]
) -> None:
    response = await client.post(LOGIN, auth=auth)

    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == 1005
    assert response.json()["errors"][0]["title"] == "Access denied"


async def test_login_without_basic_auth_is_401_with_code_1005(client: httpx.AsyncClient) -> None:
    response = await client.post(LOGIN)

    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == 1005


async def test_login_mode_reject_is_401_with_an_empty_body(
    client: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.set_login_mode("reject")

    response = await client.post(LOGIN, auth=("admin", "secret"))

    assert (response.status_code, response.content) == (401, b"")


@pytest.mark.parametrize(
    ("mode", "code", "title"),
    [
        ("password_change", 1024, "Password change required"),
        ("locked", 1031, "Sender account has been locked"),
    ],
)
async def test_login_modes_fail_with_their_error_code(
    client: httpx.AsyncClient, control: EmulatorControl, mode: str, code: int, title: str
) -> None:
    await control.set_login_mode(mode)

    response = await client.post(LOGIN, auth=("admin", "secret"))

    assert response.status_code == 401
    assert response.json() == {"errors": [{"code": code, "title": title}], "meta": META}


async def test_required_password_change_refuses_logins_until_one_sends_a_new_password(
    client: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.update_settings(password_change_required=True)

    refused = await client.post(LOGIN, auth=("admin", "secret"))
    changed = await client.post(LOGIN, auth=("admin", "secret"), json={"new_password": "n3w"})
    old = await client.post(LOGIN, auth=("admin", "secret"))
    new = await client.post(LOGIN, auth=("admin", "n3w"))

    assert refused.status_code == 401
    assert refused.json()["errors"][0]["code"] == 1024
    assert changed.status_code == 200
    assert old.status_code == 401
    assert old.json()["errors"][0]["code"] == 1005
    assert new.status_code == 200
    assert (await control.settings())["password_change_required"] is False


# Bearer tokens.


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("not-a-token"), {"Authorization": "Basic YWRtaW46c2VjcmV0"}],
    ids=["none", "unknown", "basic"],
)
async def test_calls_without_a_valid_bearer_token_are_401_with_an_empty_body(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get(identity_path(KNOWN), headers=headers)

    assert (response.status_code, response.content) == (401, b"")


async def test_several_tokens_are_valid_at_once(client: httpx.AsyncClient) -> None:
    first, second = await login(client), await login(client)

    for token in (first, second):
        response = await client.get(identity_path(KNOWN), headers=bearer(token))
        assert response.status_code == 200


async def test_revoked_tokens_are_refused_and_a_new_login_works(
    client: httpx.AsyncClient, control: EmulatorControl
) -> None:
    token = await login(client)

    assert await control.revoke_tokens() == 1
    refused = await client.get(identity_path(KNOWN), headers=bearer(token))
    fresh = await client.get(identity_path(KNOWN), headers=bearer(await login(client)))

    assert (refused.status_code, refused.content) == (401, b"")
    assert fresh.status_code == 200


async def test_tokens_expire_after_their_lifetime(
    client: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.update_settings(token_lifetime=0.2)
    token = await login(client)

    before = await client.get(identity_path(KNOWN), headers=bearer(token))
    await asyncio.sleep(0.25)
    after = await client.get(identity_path(KNOWN), headers=bearer(token))

    assert before.status_code == 200
    assert (after.status_code, after.content) == (401, b"")


# GET identity.


async def test_get_identity_answers_the_documented_shape(api: httpx.AsyncClient) -> None:
    response = await api.get(identity_path(KNOWN))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "contacts": {"hash": KNOWN_HASH, "created_timestamp": 1600132094000, "acknowledged": False},
        "meta": META,
    }


CONTACT = {"hash": NEW_HASH, "created_timestamp": 1700000000000, "acknowledged": True}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"shape": "array"}, {"contacts": [CONTACT], "meta": META}),
        (
            {"acknowledged_as": "string"},
            {"contacts": {**CONTACT, "acknowledged": "true"}, "meta": META},
        ),
        (
            {"timestamp_as": "string"},
            {"contacts": {**CONTACT, "created_timestamp": "1700000000000"}, "meta": META},
        ),
        ({"meta": False}, {"contacts": CONTACT}),
    ],
    ids=["array", "acknowledged-string", "timestamp-string", "no-meta"],
)
async def test_get_identity_answers_each_tolerated_variant(
    api: httpx.AsyncClient,
    control: EmulatorControl,
    options: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    await control.set_identity(
        UNKNOWN, NEW_HASH, created_timestamp=1700000000000, acknowledged=True, **options
    )

    response = await api.get(identity_path(UNKNOWN))

    assert response.status_code == 200
    assert response.json() == expected


async def test_get_identity_of_an_unknown_contact_is_404_with_code_1006(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get(identity_path(UNKNOWN))

    assert response.status_code == 404
    assert response.json() == {
        "errors": [{"code": 1006, "title": "Resource not found", "details": "unknown contact"}],
        "meta": META,
    }


async def test_demo_contacts_are_served_from_the_start(api: httpx.AsyncClient) -> None:
    for wa_id in DEMO_CONTACTS:
        response = await api.get(identity_path(wa_id))
        assert response.status_code == 200, wa_id
        assert response.json() == DEMO_CONTACTS[wa_id].identity_body()


# PUT identity (acknowledge).


async def test_acknowledge_with_the_current_hash_marks_the_identity_acknowledged(
    api: httpx.AsyncClient,
) -> None:
    response = await api.put(identity_path(KNOWN), json={"hash": KNOWN_HASH})

    assert response.status_code == 200
    assert response.content == b"null"
    after = await api.get(identity_path(KNOWN))
    assert after.json()["contacts"]["acknowledged"] is True


@pytest.mark.parametrize(
    ("setting", "body"),
    [("null", b"null"), ("{}", b"{}"), ("empty", b""), ("meta", json.dumps({"meta": META}))],
)
async def test_acknowledge_success_body_is_as_set(
    api: httpx.AsyncClient, control: EmulatorControl, setting: str, body: bytes | str
) -> None:
    await control.update_settings(ack_success_body=setting)

    response = await api.put(identity_path(KNOWN), json={"hash": KNOWN_HASH})

    assert response.status_code == 200
    assert response.content == (body.encode() if isinstance(body, str) else body)


async def test_acknowledge_with_a_stale_hash_is_400_with_code_1009(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    response = await api.put(identity_path(KNOWN), json={"hash": NEW_HASH})

    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert (error["code"], error["title"]) == (1009, "Parameter value is not valid")
    assert (await control.get_identity(KNOWN) or {})["acknowledged"] is False


async def test_acknowledge_with_a_stale_hash_is_409_when_set(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.update_settings(ack_mismatch="409")

    response = await api.put(identity_path(KNOWN), json={"hash": NEW_HASH})

    assert response.status_code == 409
    assert response.json() == {"errors": [{"code": 409, "title": "Incorrect identity hash"}]}


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"hsah": "UKD6Y/5SqDU="}', b'{"hash": 5}', b'{"hash": ""}'],
)
async def test_acknowledge_without_a_hash_is_400_with_code_1008(
    api: httpx.AsyncClient, content: bytes
) -> None:
    response = await api.put(identity_path(KNOWN), content=content)

    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == 1008


async def test_acknowledge_of_an_unknown_contact_is_404_with_code_1006(
    api: httpx.AsyncClient,
) -> None:
    response = await api.put(identity_path(UNKNOWN), json={"hash": KNOWN_HASH})

    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == 1006


# Faults.


async def test_status_fault_answers_its_json_and_headers_once(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault(
        "/v1/contacts/*/identity",
        status=429,
        json=error_envelope(1015),
        headers={"Retry-After": "2"},
    )

    faulted = await api.get(identity_path(KNOWN))
    normal = await api.get(identity_path(KNOWN))

    assert faulted.status_code == 429
    assert faulted.headers["retry-after"] == "2"
    assert faulted.headers["content-type"] == "application/json"
    assert faulted.json()["errors"][0] == {"code": 1015, "title": "Too many requests"}
    assert normal.status_code == 200


async def test_status_fault_answers_a_raw_body_with_its_content_type(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    html = "<html><body>502 Bad Gateway</body></html>"
    await control.add_fault("/v1/*", status=502, body=html, headers={"Content-Type": "text/html"})

    response = await api.get(identity_path(KNOWN))

    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html"
    assert response.text == html


async def test_fault_is_used_up_after_times(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/contacts/*/identity", status=503, times=2)

    statuses = [(await api.get(identity_path(KNOWN))).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]


async def test_fault_with_times_null_lasts_until_cleared(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/contacts/*/identity", status=503, times=None)

    statuses = [(await api.get(identity_path(KNOWN))).status_code for _ in range(5)]
    await control.clear_faults()
    after = await api.get(identity_path(KNOWN))

    assert statuses == [503] * 5
    assert after.status_code == 200


async def test_first_added_fault_is_matched_first(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/contacts/*/identity", status=500)
    await control.add_fault("/v1/contacts/*", status=503)

    statuses = [(await api.get(identity_path(KNOWN))).status_code for _ in range(3)]

    assert statuses == [500, 503, 200]


async def test_fault_with_a_method_leaves_other_methods_alone(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/contacts/*/identity", method="PUT", status=503)

    get = await api.get(identity_path(KNOWN))
    put = await api.put(identity_path(KNOWN), json={"hash": KNOWN_HASH})

    assert (get.status_code, put.status_code) == (200, 503)


async def test_fault_takes_precedence_over_auth(
    client: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", status=503, json=error_envelope(1016))

    response = await client.get(identity_path(KNOWN))  # no token at all

    assert response.status_code == 503
    assert response.json()["errors"][0]["code"] == 1016


async def test_drop_fault_closes_the_connection_without_a_response(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", drop=True)

    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await api.get(identity_path(KNOWN))
    assert (await api.get(identity_path(KNOWN))).status_code == 200


async def test_drop_mid_body_fault_announces_the_whole_body_and_sends_half(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    body = {"contacts": {"hash": KNOWN_HASH}, "meta": META}
    await control.add_fault("/v1/*", drop_mid_body=True, status=200, json=body)
    length = len(json.dumps(body).encode())

    async with api.stream("GET", identity_path(KNOWN)) as response:
        assert response.headers["content-length"] == str(length)
        with pytest.raises(httpx.RemoteProtocolError, match=f"received {length // 2} bytes"):
            await response.aread()


async def test_stall_fault_sends_headers_and_one_byte_then_nothing_until_it_closes(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", stall_after_headers=0.3)
    started = time.monotonic()

    async with api.stream("GET", identity_path(KNOWN)) as response:
        headers_after = time.monotonic() - started
        with pytest.raises(httpx.RemoteProtocolError, match="received 1 bytes"):
            await response.aread()

    assert response.status_code == 200
    assert headers_after < 0.2
    assert time.monotonic() - started >= 0.3


async def test_stalled_response_ends_promptly_when_the_emulator_stops() -> None:
    async with httpx.AsyncClient(verify=CLIENT_TLS) as client:
        async with RunningEmulator() as emulator:
            emulator.state.add_fault(Fault("/v1/*", stall_after_headers=30))
            request = client.build_request("GET", emulator.url + identity_path(KNOWN))
            response = await client.send(request, stream=True)
            started = time.monotonic()
        stopping_took = time.monotonic() - started
        with pytest.raises(httpx.RemoteProtocolError, match="received 1 bytes"):
            await response.aread()
        await response.aclose()

    assert stopping_took < 1.0


async def test_malformed_fault_answers_200_with_invalid_json(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", malformed=True)

    response = await api.get(identity_path(KNOWN))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_body_size_fault_answers_valid_json_of_exactly_that_size(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", body_size=100_000)

    response = await api.get(identity_path(KNOWN))

    assert response.status_code == 200
    assert response.headers["content-length"] == "100000"
    assert len(response.content) == 100_000
    assert response.json()["contacts"]["hash"] == KNOWN_HASH


async def test_delay_fault_alone_delays_the_normal_answer(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", delay=0.2)
    started = time.monotonic()

    response = await api.get(identity_path(KNOWN))

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert response.json()["contacts"]["hash"] == KNOWN_HASH


async def test_delay_fault_with_a_status_delays_that_answer(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.add_fault("/v1/*", delay=0.2, status=504)
    started = time.monotonic()

    response = await api.get(identity_path(KNOWN))

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 504


# Control API.


async def test_control_api_sets_reads_changes_and_removes_an_identity(
    api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    stored = await control.set_identity(UNKNOWN, KNOWN_HASH, acknowledged=True, shape="array")
    assert stored["hash"] == KNOWN_HASH
    assert await control.get_identity(UNKNOWN) == stored

    await control.set_identity(UNKNOWN, NEW_HASH)  # an identity change
    changed = (await api.get(identity_path(UNKNOWN))).json()["contacts"]
    assert (changed["hash"], changed["acknowledged"]) == (NEW_HASH, False)
    assert abs(changed["created_timestamp"] - time.time() * 1000) < 5000

    await control.remove_identity(UNKNOWN)
    assert await control.get_identity(UNKNOWN) is None
    assert (await api.get(identity_path(UNKNOWN))).status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/_emulator/contacts/{UNKNOWN}", {}),
        (f"/_emulator/contacts/{UNKNOWN}", {"hash": NEW_HASH, "shape": "list"}),
        (f"/_emulator/contacts/{UNKNOWN}", {"hash": NEW_HASH, "hsah": NEW_HASH}),
        (f"/_emulator/contacts/{UNKNOWN}", {"hash": NEW_HASH, "acknowledged": "yes"}),
        ("/_emulator/faults", {"status": 503}),
        ("/_emulator/faults", {"path": "/v1/*", "drop": True, "malformed": True}),
        ("/_emulator/faults", {"path": "/v1/*", "body": "x"}),
        ("/_emulator/faults", {"path": "/v1/*", "times": 0, "status": 503}),
        ("/_emulator/faults", {"path": "/v1/*"}),
        ("/_emulator/settings", {"login_mode": "maybe"}),
        ("/_emulator/settings", {"token_lifetime": 0}),
        ("/_emulator/settings", {"colour": "blue"}),
        ("/_emulator/settings", {"webhook_url": "ftp://127.0.0.1/webhook"}),
        ("/_emulator/settings", {"webhook_url": "127.0.0.1:8081/webhook"}),
        ("/_emulator/settings", {"webhook_url": "http:///webhook"}),
        ("/_emulator/settings", {"webhook_url": "http://127.0.0.1:port/webhook"}),
        ("/_emulator/settings", {"webhook_url": "http://127.0.0.1/web hook"}),
        ("/_emulator/settings", {"webhook_url": 8081}),
    ],
)
async def test_control_api_refuses_invalid_input_with_400(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    method = "POST" if path.endswith("faults") else "PUT"

    response = await client.request(method, path, json=body)

    assert response.status_code == 400
    assert response.json()["error"]


async def test_control_api_refuses_a_body_that_is_not_a_json_object(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/_emulator/settings", content=b"[1]")

    assert response.status_code == 400


async def test_control_api_round_trips_settings(control: EmulatorControl) -> None:
    updated = await control.update_settings(ack_mismatch="409", expires_format="iso")

    assert updated == await control.settings()
    assert (updated["ack_mismatch"], updated["expires_format"]) == ("409", "iso")
    assert updated["login_mode"] == "ok"


async def test_requests_are_recorded_with_lower_cased_headers_and_filtered(
    emulator: RunningEmulator, api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.clear_requests()
    await api.get(identity_path(KNOWN), headers={"X-Trace": "abc"})
    await api.put(identity_path(KNOWN), json={"hash": KNOWN_HASH})

    [put] = await control.requests(method="PUT", path=identity_path(KNOWN))
    assert put["method"] == "PUT"
    assert put["path"] == identity_path(KNOWN)
    assert json.loads(put["body"]) == {"hash": KNOWN_HASH}
    assert put["headers"]["authorization"].startswith("Bearer ")
    assert abs(put["time"] - time.time()) < 5
    [get] = await control.requests(method="GET")
    assert get["headers"]["x-trace"] == "abc"
    assert await control.count(path="/v1/contacts/*") == 2
    assert emulator.state.count("PUT", identity_path(KNOWN)) == 1
    assert emulator.state.requests("PUT")[0].json() == {"hash": KNOWN_HASH}

    await control.clear_requests()
    assert await control.count() == 0


async def test_control_api_is_neither_recorded_nor_faulted(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    await control.add_fault("*", drop=True, times=None)

    await control.set_identity(UNKNOWN, NEW_HASH)
    await control.clear_faults()

    assert await control.count() == 0
    assert emulator.state.requests() == []


async def test_reset_restores_defaults_and_keeps_tokens_valid(
    emulator: RunningEmulator, api: httpx.AsyncClient, control: EmulatorControl
) -> None:
    await control.set_identity(KNOWN, NEW_HASH)
    await control.remove_identity("16315550000")
    await control.update_settings(ack_mismatch="409")
    await control.add_fault("/v1/*", status=503, times=None)

    await control.reset()

    response = await api.get(identity_path(KNOWN))
    assert response.status_code == 200  # the token issued before the reset still works
    assert response.json() == DEMO_CONTACTS[KNOWN].identity_body()
    assert await control.get_identity("16315550000") is not None
    assert (await control.settings())["ack_mismatch"] == "400"
    assert await control.count() == 1  # only the request after the reset


# Identity-change webhooks.


class Receiver:
    """The gateway's webhook endpoint on a free port, keeping every batch it is handed."""

    def __init__(self) -> None:
        self.reports: list[IdentityChangeReport] = []
        self.senders: set[str] = set()

    async def on_changes(self, sender: str, reports: list[IdentityChangeReport]) -> None:
        self.senders.add(sender)
        self.reports.extend(reports)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """A Receiver and the URL that reaches it."""
    receiver = Receiver()
    async with WebhookServer("127.0.0.1", 0, receiver.on_changes) as server:
        yield receiver, server.url


async def deliveries(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The emulator's webhook deliveries, once there are ``count`` of them."""
    seen: list[dict[str, Any]] = []

    async def enough() -> bool:
        seen[:] = (await client.get("/_emulator/webhooks")).json()["webhooks"]
        return len(seen) >= count

    assert await wait_until(enough), f"expected {count} deliveries, saw {seen}"
    return seen


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_identity_change_through_the_control_api_is_delivered_as_a_webhook(
    client: httpx.AsyncClient, control: EmulatorControl, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    assert (await control.update_settings(webhook_url=url))["webhook_url"] == url

    await control.set_identity(KNOWN, NEW_HASH, created_timestamp=1700000000123)

    [delivery] = await deliveries(client, 1)
    assert (delivery["url"], delivery["status"], delivery["error"]) == (url, 200, None)
    assert delivery["ok"] is True
    assert sink.reports == [IdentityChangeReport(KNOWN, NEW_HASH, 1700000000000)]
    assert sink.senders == {""}  # /webhook: the listener's one unnamed sender
    [message] = delivery["payload"]["messages"]
    assert message["id"].startswith("ABGG")
    assert {k: v for k, v in message.items() if k != "id"} == {
        "from": KNOWN,
        "timestamp": "1700000000",
        "type": "system",
        "system": {
            "type": "user_identity_changed",
            "identity": NEW_HASH,
            "user": KNOWN,
            "body": f"User {KNOWN} changed their identity",
        },
    }


async def test_setting_the_same_hash_again_sends_no_webhook(
    client: httpx.AsyncClient, control: EmulatorControl, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    await control.update_settings(webhook_url=url)

    await control.set_identity(KNOWN, KNOWN_HASH)  # the demo contact's hash: no change
    await control.set_identity(KNOWN, KNOWN_HASH, acknowledged=True, shape="array")
    await control.set_identity("16315550000", OTHER_HASH)  # a change: delivered after any other

    [delivery] = await deliveries(client, 1)
    assert delivery["payload"]["messages"][0]["system"]["user"] == "16315550000"
    assert [r.wa_id for r in sink.reports] == ["16315550000"]


async def test_new_contact_is_a_change_only_when_unacknowledged(
    client: httpx.AsyncClient, control: EmulatorControl, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    await control.update_settings(webhook_url=url)

    await control.set_identity("19995550001", NEW_HASH, acknowledged=True)
    await control.set_identity("19995550002", NEW_HASH)

    await deliveries(client, 1)
    assert [r.wa_id for r in sink.reports] == ["19995550002"]


async def test_changes_are_delivered_in_order(
    client: httpx.AsyncClient, control: EmulatorControl, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    await control.update_settings(webhook_url=url)
    hashes = ["AAAAAAAAAAA=", "BBBBBBBBBBB=", "CCCCCCCCCCC=", "DDDDDDDDDDD="]

    for identity_hash in hashes:
        await control.set_identity(KNOWN, identity_hash)

    await deliveries(client, len(hashes))
    assert [r.hash for r in sink.reports] == hashes


async def test_no_webhook_is_sent_without_a_webhook_url(
    emulator: RunningEmulator,
    client: httpx.AsyncClient,
    control: EmulatorControl,
    receiver: tuple[Receiver, str],
) -> None:
    sink, url = receiver
    await control.set_identity(KNOWN, NEW_HASH)  # no webhook_url yet
    await control.update_settings(webhook_url=url)
    await control.set_identity("16315550000", OTHER_HASH)
    await control.update_settings(webhook_url=None)
    await control.set_identity("16315553601", OTHER_HASH)

    await deliveries(client, 1)
    await asyncio.sleep(0.05)  # time enough for a wrongly queued one to be delivered
    assert [r.wa_id for r in sink.reports] == ["16315550000"]
    assert len(emulator.state.webhook_deliveries) == 1


async def test_unreachable_webhook_url_is_a_recorded_failure_and_the_change_still_happens(
    client: httpx.AsyncClient, control: EmulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{unused_port()}/webhook"
    await control.update_settings(webhook_url=url)

    with caplog.at_level(logging.WARNING, logger="whatsapp_emulator.emulator"):
        response = await client.put(f"/_emulator/contacts/{KNOWN}", json={"hash": NEW_HASH})
        [delivery] = await deliveries(client, 1)

    assert response.status_code == 200
    assert (await control.get_identity(KNOWN) or {})["hash"] == NEW_HASH
    assert (delivery["status"], delivery["ok"]) == (None, False)
    assert delivery["error"]
    assert delivery["payload"]["messages"][0]["system"]["identity"] == NEW_HASH
    assert "webhook delivery to" in caplog.text


async def test_webhook_refused_by_the_receiver_is_recorded_with_its_status(
    client: httpx.AsyncClient, control: EmulatorControl, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    await control.update_settings(webhook_url=url + "/elsewhere")

    await control.set_identity(KNOWN, NEW_HASH)

    [delivery] = await deliveries(client, 1)
    assert (delivery["status"], delivery["ok"], delivery["error"]) == (404, False, None)
    assert sink.reports == []


async def test_identity_changed_through_the_state_is_delivered_too(
    emulator: RunningEmulator, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    emulator.state.update_settings(webhook_url=url)

    emulator.state.set_identity(KNOWN, NEW_HASH, created_timestamp=1700000000000)

    assert await wait_until(lambda: len(emulator.state.webhook_deliveries) == 1)
    assert emulator.state.webhook_deliveries[0].ok
    assert sink.reports == [IdentityChangeReport(KNOWN, NEW_HASH, 1700000000000)]


async def test_webhook_deliveries_are_forgotten_on_clear_and_reset(
    client: httpx.AsyncClient, control: EmulatorControl, receiver: tuple[Receiver, str]
) -> None:
    _, url = receiver
    await control.update_settings(webhook_url=url)
    await control.set_identity(KNOWN, NEW_HASH)
    await deliveries(client, 1)

    cleared = await client.delete("/_emulator/webhooks")
    assert cleared.status_code == 204
    assert await deliveries(client, 0) == []

    await control.set_identity("16315550000", KNOWN_HASH)
    await deliveries(client, 1)
    await control.reset()
    assert await deliveries(client, 0) == []
    assert (await control.settings())["webhook_url"] is None


async def test_webhook_url_given_at_start_survives_a_reset(receiver: tuple[Receiver, str]) -> None:
    sink, url = receiver
    async with RunningEmulator(webhook_url=url) as emulator:
        emulator.state.reset()
        emulator.state.set_identity(KNOWN, NEW_HASH)
        assert await wait_until(lambda: len(sink.reports) == 1)

    assert emulator.state.settings.webhook_url == url


def test_the_webhook_the_emulator_sends_is_what_the_gateway_parses() -> None:
    payload = identity_changed_webhook(KNOWN, NEW_HASH, 1700000000999)

    reports = parse_webhook(json.dumps(payload).encode())

    assert reports == [IdentityChangeReport(KNOWN, NEW_HASH, 1700000000000)]


# Running it.


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -nodes -days 1 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([*command.split(), *subject, *files], check=True, capture_output=True)
    return cert, key


async def announced_url(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """The first line run_emulator prints, and the URL in it."""
    printed = ""
    for _ in range(200):
        printed += capsys.readouterr().out
        if match := re.search(r"https?://127\.0\.0\.1:\d+", printed):
            return printed, match.group()
        await asyncio.sleep(0.01)
    raise AssertionError(f"run_emulator announced nothing: {printed!r}")


async def test_run_emulator_announces_demo_credentials_and_contacts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(
        run_emulator("127.0.0.1", 0, username="admin", password="secret", token_lifetime=60)
    )
    try:
        line, url = await announced_url(capsys)
        assert url.startswith("http://")
        assert "admin / secret" in line
        assert all(wa_id in line for wa_id in DEMO_CONTACTS)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_emulator_serves_https_and_hides_a_chosen_password(
    capsys: pytest.CaptureFixture[str], tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    task = asyncio.create_task(
        run_emulator(
            "127.0.0.1",
            0,
            username="ops",
            password="hunter2",
            token_lifetime=60,
            certfile=str(cert),
            keyfile=str(key),
        )
    )
    try:
        line, url = await announced_url(capsys)
        assert url.startswith("https://")
        assert "hunter2" not in line
        verify = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=url, verify=verify) as client:
            response = await client.post(LOGIN, auth=("ops", "hunter2"))
        assert response.status_code == 200
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_emulator_sends_webhooks_to_its_webhook_url(
    capsys: pytest.CaptureFixture[str], receiver: tuple[Receiver, str]
) -> None:
    sink, webhook_url = receiver
    task = asyncio.create_task(
        run_emulator(
            "127.0.0.1",
            0,
            username="admin",
            password="secret",
            token_lifetime=60,
            webhook_url=webhook_url,
        )
    )
    try:
        line, url = await announced_url(capsys)
        assert webhook_url in line
        async with EmulatorControl(url) as control:
            await control.set_identity(KNOWN, NEW_HASH)
        assert await wait_until(lambda: len(sink.reports) == 1)
        assert sink.reports[0].hash == NEW_HASH
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_emulator_refuses_a_webhook_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="webhook_url"):
        await run_emulator(
            "127.0.0.1",
            0,
            username="admin",
            password="secret",
            token_lifetime=60,
            webhook_url="file:///etc/passwd",
        )


def test_the_emulator_command_serves_until_sigterm_then_exits_cleanly() -> None:
    command = [str(Path(sys.executable).parent / "identity-gateway"), "emulator", "--listen"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with subprocess.Popen(
        [*command, f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()  # printed once it listens
            assert f"http://127.0.0.1:{port}" in banner
            answer = httpx.post(f"http://127.0.0.1:{port}{LOGIN}", auth=("admin", "secret"))
            assert answer.status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


async def test_running_emulator_url_names_its_scheme_and_port() -> None:
    async with RunningEmulator(port=0) as emulator:
        assert emulator.url == f"http://127.0.0.1:{emulator.port}"
        assert emulator.port > 0
    with pytest.raises(RuntimeError):
        _ = emulator.url


async def test_synthetic_contacts_make_every_wa_id_known_and_stable() -> None:
    async with RunningEmulator() as emulator:
        assert emulator.state.identity("19990000001") is None
        emulator.state.update_settings(synthetic_contacts=True)
        first = emulator.state.identity("19990000001")
        again = emulator.state.identity("19990000001")
        other = emulator.state.identity("19990000002")
    assert first is not None
    assert other is not None
    assert first == again
    assert first.hash != other.hash
    assert emulator.state.identity("not-digits") is None
