"""The identity-change webhook: parsing every payload shape, and the endpoint on a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.backends.onprem.webhook import IdentityChangeReport, WebhookError, parse_webhook
from gateway.serving.webhooks import MAX_WEBHOOK_BODY_BYTES, WebhookSender, WebhookServer

USER = "16315553601"
OTHER = "16315551234"
HASH = "Rc/eg9Rl0JA="
NEW_HASH = "Su9l2C1YsAk="


def system_message(**system: Any) -> dict[str, Any]:
    """The documented user_identity_changed system message, with ``system`` fields replaced."""
    fields: dict[str, Any] = {"type": "user_identity_changed", "identity": HASH, "user": USER}
    fields.update(system)
    return {
        "from": USER,
        "id": "ABGGFlA5FpafAgo6EhgsssWx0HDW",
        "timestamp": "1602535356",
        "type": "system",
        "system": {k: v for k, v in fields.items() if v is not None},
    }


def inbound_message(**identity: Any) -> dict[str, Any]:
    """A text message carrying the identity object of show_security_notifications."""
    fields: dict[str, Any] = {
        "acknowledged": False,
        "created_timestamp": 1602535356123,
        "hash": HASH,
    }
    fields.update(identity)
    return {
        "from": USER,
        "id": "ABGGFlA5FpafAgo6EhgsssWx0HDX",
        "timestamp": "1602535360",
        "type": "text",
        "text": {"body": "hello"},
        "identity": {k: v for k, v in fields.items() if v is not None},
    }


def body(*messages: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"messages": list(messages), **extra}).encode()


# Parsing: what is picked out.


def test_system_message_reports_the_user_the_new_hash_and_the_time_in_ms() -> None:
    reports = parse_webhook(body(system_message()))

    assert reports == [IdentityChangeReport(USER, HASH, 1602535356000)]


def test_system_message_with_only_customer_names_the_customer() -> None:
    message = system_message(user=None, customer=OTHER, body="Customer changed their identity")

    [report] = parse_webhook(body(message))

    assert report.wa_id == OTHER


def test_system_message_without_user_or_customer_names_the_sender() -> None:
    message = {**system_message(user=None), "from": OTHER}

    [report] = parse_webhook(body(message))

    assert report.wa_id == OTHER


def test_system_message_user_takes_precedence_over_customer_and_sender() -> None:
    message = {**system_message(user=USER, customer=OTHER), "from": OTHER}

    [report] = parse_webhook(body(message))

    assert report.wa_id == USER


def test_wa_id_with_a_plus_is_normalised_to_its_digits() -> None:
    [report] = parse_webhook(body(system_message(user=f"+{USER}")))

    assert report.wa_id == USER


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [("1602535356", 1602535356000), (1602535356, 1602535356000), ("0", 0), (None, None)],
    ids=["string", "int", "zero", "absent"],
)
def test_system_message_timestamp_is_seconds_as_a_string_or_int(
    timestamp: Any, expected: int | None
) -> None:
    message = {**system_message(), "timestamp": timestamp}
    if timestamp is None:
        del message["timestamp"]

    [report] = parse_webhook(body(message))

    assert report.create_time_ms == expected


@pytest.mark.parametrize(
    ("identity", "expected_time"),
    [
        ({}, 1602535356123),
        ({"created_timestamp": "1602535356123"}, 1602535356123),
        ({"acknowledged": "false"}, 1602535356123),
        ({"created_timestamp": None}, None),
    ],
    ids=["documented", "timestamp-string", "acknowledged-string", "no-timestamp"],
)
def test_unacknowledged_identity_on_an_inbound_message_is_a_change(
    identity: dict[str, Any], expected_time: int | None
) -> None:
    reports = parse_webhook(body(inbound_message(**identity)))

    assert reports == [IdentityChangeReport(USER, HASH, expected_time)]


@pytest.mark.parametrize("acknowledged", [True, "true"])
def test_acknowledged_identity_on_an_inbound_message_is_ignored(acknowledged: Any) -> None:
    assert parse_webhook(body(inbound_message(acknowledged=acknowledged))) == []


def test_acknowledged_identity_is_ignored_even_with_a_bad_hash() -> None:
    # An acknowledged identity is not a change, so it is not picked out, so not validated.
    assert parse_webhook(body(inbound_message(acknowledged=True, hash="not base64!"))) == []


def test_mixed_payload_reports_only_the_identity_changes() -> None:
    text = {
        "from": OTHER,
        "id": "ABGG1",
        "timestamp": "1602535300",
        "type": "text",
        "text": {"body": "hi"},
    }
    other_system = {
        "from": OTHER,
        "id": "ABGG2",
        "timestamp": "1602535301",
        "type": "system",
        "system": {"type": "customer_changed_number", "new_wa_id": "16315550000"},
    }
    payload = body(
        text,
        other_system,
        system_message(),
        inbound_message(hash=NEW_HASH, acknowledged=True),
        {**inbound_message(hash=NEW_HASH), "from": OTHER},
        contacts=[{"profile": {"name": "Kerry Fisher"}, "wa_id": OTHER}],
        statuses=[{"id": "gBGG", "recipient_id": OTHER, "status": "failed", "timestamp": "1"}],
    )

    reports = parse_webhook(payload)

    assert reports == [
        IdentityChangeReport(USER, HASH, 1602535356000),
        IdentityChangeReport(OTHER, NEW_HASH, 1602535356123),
    ]


@pytest.mark.parametrize(
    "payload",
    [b"{}", b'{"statuses": [{"status": "read"}]}', b'{"messages": []}'],
)
def test_payload_without_identity_changes_reports_none(payload: bytes) -> None:
    assert parse_webhook(payload) == []


def test_text_message_with_a_strange_sender_is_ignored_not_refused() -> None:
    text = {"from": "../x", "type": "text", "text": {"body": "hi"}}

    assert parse_webhook(body(text)) == []


def test_duplicates_are_collapsed_keeping_the_earliest_time() -> None:
    reports = parse_webhook(
        body(
            system_message(),  # 1602535356000
            inbound_message(),  # 1602535356123
            system_message(user=f"+{USER}"),
            {**system_message(), "timestamp": "1602535300"},  # the earliest
            system_message(identity=NEW_HASH),  # another hash: another change
        )
    )

    assert reports == [
        IdentityChangeReport(USER, HASH, 1602535300000),
        IdentityChangeReport(USER, NEW_HASH, 1602535356000),
    ]


# Parsing: what is refused.

MALFORMED: dict[str, bytes] = {
    "not-json": b"{not json",
    "not-utf8": b'{"messages": ["\xff"]}',
    "empty": b"",
    "array": b"[]",
    "string": b'"messages"',
    "null": b"null",
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
    "messages-object": b'{"messages": {"0": {}}}',
    "messages-string": b'{"messages": "x"}',
    "messages-null": b'{"messages": null}',
    "message-not-object": body(system_message()).replace(b'{"messages": [', b'{"messages": [5, '),
    "system-not-object": body({"type": "system", "system": "user_identity_changed"}),
    "wa-id-path": body(system_message(user="../x")),
    "wa-id-short": body(system_message(user="12345")),
    "wa-id-long": body(system_message(user="1" * 16)),
    "wa-id-arabic-digits": body(system_message(user="١٦٣١٥٥٥٣٦٠١")),
    "wa-id-number": body(system_message(user=16315553601)),
    "customer-bad": body(system_message(user=None, customer="../x")),
    "from-missing": body({**system_message(user=None), "from": None}),
    "inbound-from-bad": body({**inbound_message(), "from": "../x"}),
    "hash-not-base64": body(system_message(identity="not base64!")),
    "hash-missing": body(system_message(identity=None)),
    "hash-empty": body(system_message(identity="")),
    "hash-too-long": body(system_message(identity="A" * 129)),
    "hash-number": body(system_message(identity=12345678)),
    "inbound-hash-bad": body(inbound_message(hash="not base64!")),
    "inbound-hash-missing": body(inbound_message(hash=None)),
    "timestamp-word": body({**system_message(), "timestamp": "yesterday"}),
    "timestamp-negative": body({**system_message(), "timestamp": -1}),
    "timestamp-negative-string": body({**system_message(), "timestamp": "-1"}),
    "timestamp-float": body({**system_message(), "timestamp": 1602535356.5}),
    "timestamp-bool": body({**system_message(), "timestamp": True}),
    "timestamp-year-10000": body({**system_message(), "timestamp": 253402300800}),
    "timestamp-huge-string": body({**system_message(), "timestamp": "9" * 40}),
    "created-timestamp-exponent": body(inbound_message(created_timestamp="1e12")),
    "created-timestamp-object": body(inbound_message(created_timestamp={})),
    "acknowledged-word": body(inbound_message(acknowledged="yes")),
    "acknowledged-missing": body(inbound_message(acknowledged=None)),
    "identity-not-object": body({**inbound_message(), "identity": "Rc/eg9Rl0JA="}),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_payload_is_refused_whole(payload: bytes) -> None:
    with pytest.raises(WebhookError):
        parse_webhook(payload)


def test_one_bad_change_refuses_the_good_ones_too() -> None:
    with pytest.raises(WebhookError, match=r"messages\[1\]\.system\.user"):
        parse_webhook(body(system_message(), system_message(user="../x")))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(system_message(user="../../users/login")), "messages[0].system.user"),
        (body(system_message(identity="<script>alert(1)</script>")), "messages[0].system.identity"),
        (body({**system_message(), "timestamp": "DROP TABLE"}), "messages[0].timestamp"),
        (body(inbound_message(acknowledged="perhaps")), "messages[0].identity.acknowledged"),
    ],
)
def test_error_names_the_field_and_never_echoes_the_value(payload: bytes, field: str) -> None:
    with pytest.raises(WebhookError) as raised:
        parse_webhook(payload)

    message = str(raised.value)
    assert message.startswith(field)
    for echoed in ("users/login", "script", "DROP", "perhaps"):
        assert echoed not in message


def test_webhook_error_is_a_value_error() -> None:
    assert issubclass(WebhookError, ValueError)


# The endpoint, on a real socket.


class Recorder:
    """An on_changes callback that records every batch and the sender it came for, and can be
    made to fail or hang."""

    def __init__(self) -> None:
        self.batches: list[list[IdentityChangeReport]] = []
        self.senders: list[str] = []
        self.called = asyncio.Event()
        self.fail = False
        self.hang = False

    async def __call__(self, sender: str, reports: list[IdentityChangeReport]) -> None:
        self.senders.append(sender)
        self.batches.append(reports)
        self.called.set()
        if self.fail:
            raise RuntimeError("the cache is on fire")
        if self.hang:
            await asyncio.Event().wait()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def server(recorder: Recorder) -> AsyncIterator[WebhookServer]:
    async with WebhookServer("127.0.0.1", 0, recorder) as running:
        yield running


@pytest.fixture
async def client(server: WebhookServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        yield client


async def test_valid_webhook_is_handed_over_and_answered_with_the_count(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    response = await client.post(
        "/webhook", content=body(system_message(), {**inbound_message(), "from": OTHER})
    )

    assert response.status_code == 200
    assert response.json() == {"accepted": 2}
    assert recorder.batches == [
        [
            IdentityChangeReport(USER, HASH, 1602535356000),
            IdentityChangeReport(OTHER, HASH, 1602535356123),
        ]
    ]
    assert recorder.senders == [""]  # without senders: the one unnamed sender, flag mode's


async def test_webhook_without_identity_changes_is_accepted_without_a_callback(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    response = await client.post("/webhook", json={"statuses": [{"status": "delivered"}]})

    assert (response.status_code, response.json()) == (200, {"accepted": 0})
    assert recorder.batches == []


@pytest.mark.parametrize(
    "name", ["not-json", "array", "messages-object", "wa-id-path", "hash-not-base64"]
)
async def test_malformed_webhook_is_400_and_never_handed_over(
    client: httpx.AsyncClient, recorder: Recorder, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.serving.webhooks"):
        response = await client.post("/webhook", content=MALFORMED[name])

    assert response.status_code == 400
    assert response.json()["error"]
    assert recorder.batches == []
    assert "refused a webhook" in caplog.text


async def test_body_over_the_limit_is_413_and_never_handed_over(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    padding = "x" * MAX_WEBHOOK_BODY_BYTES
    oversized = json.dumps({"messages": [system_message()], "padding": padding}).encode()

    response = await client.post("/webhook", content=oversized)

    assert response.status_code == 413
    assert response.json()["error"]
    assert recorder.batches == []


async def test_chunked_body_over_the_limit_is_413(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        yield body(system_message())[:-2]
        for _ in range(MAX_WEBHOOK_BODY_BYTES // 4096 + 1):
            yield b" " * 4096
        yield b"]}"

    response = await client.post("/webhook", content=chunks())

    assert response.status_code == 413
    assert recorder.batches == []


async def test_body_of_exactly_the_limit_is_accepted(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    compact = body(system_message())
    exact = compact[:-1] + b" " * (MAX_WEBHOOK_BODY_BYTES - len(compact)) + compact[-1:]
    assert len(exact) == MAX_WEBHOOK_BODY_BYTES

    response = await client.post("/webhook", content=exact)

    assert (response.status_code, response.json()) == (200, {"accepted": 1})


async def test_failing_callback_is_500_so_whatsapp_retries(
    client: httpx.AsyncClient, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.fail = True

    with caplog.at_level(logging.ERROR, logger="gateway.serving.webhooks"):
        response = await client.post("/webhook", content=body(system_message()))

    assert response.status_code == 500
    assert "on fire" not in response.text
    assert "the cache is on fire" in caplog.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_on_the_webhook_are_405(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/webhook")

    assert response.status_code == 405


async def test_healthz_answers_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200


async def test_server_url_names_the_webhook_path(server: WebhookServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/webhook"
    assert server.port > 0


# Routing: /webhook is the default sender's, /webhook/{number} a named sender's.

FIRST, SECOND = "15550001111", "15550002222"


@pytest.fixture
async def two_senders(recorder: Recorder) -> AsyncIterator[WebhookServer]:
    """A listener for two named senders (no secrets), FIRST the default."""
    senders = {number: WebhookSender(number) for number in (FIRST, SECOND)}
    async with WebhookServer("127.0.0.1", 0, recorder, senders=senders, default=FIRST) as running:
        yield running


async def test_a_named_senders_path_hands_its_number_to_the_callback(
    two_senders: WebhookServer, recorder: Recorder
) -> None:
    async with httpx.AsyncClient() as client:
        second = await client.post(two_senders.url_of(SECOND), content=body(system_message()))
        first = await client.post(
            two_senders.url_of(FIRST), content=body(system_message(identity=NEW_HASH))
        )

    assert (second.status_code, second.json()) == (200, {"accepted": 1})
    assert (first.status_code, first.json()) == (200, {"accepted": 1})
    assert recorder.senders == [SECOND, FIRST]
    assert recorder.batches == [
        [IdentityChangeReport(USER, HASH, 1602535356000)],
        [IdentityChangeReport(USER, NEW_HASH, 1602535356000)],
    ]


async def test_the_plain_path_is_the_default_senders(
    two_senders: WebhookServer, recorder: Recorder
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(two_senders.url, content=body(system_message()))

    assert response.status_code == 200
    assert recorder.senders == [FIRST]


@pytest.mark.parametrize(
    "number",
    ["15550003333", "1555000111", "155500011110", "default", "%2e%2e", "15550001111%2F"],
    ids=["unknown", "prefix", "longer", "word", "dot-dot", "encoded-slash"],
)
async def test_a_number_not_among_the_senders_is_404_and_never_handed_over(
    two_senders: WebhookServer, recorder: Recorder, number: str
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{two_senders.base_url}/webhook/{number}", content=body(system_message())
        )

    assert response.status_code == 404
    assert recorder.batches == []


async def test_the_unnamed_senders_path_takes_no_number(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    # Without senders there is one unnamed sender: only /webhook reaches it.
    for path in ("/webhook/15550001111", "/webhook/", "/webhook/x"):
        response = await client.post(path, content=body(system_message()))
        assert response.status_code == 404, path

    assert recorder.batches == []


async def test_without_a_default_sender_the_plain_path_is_404(recorder: Recorder) -> None:
    senders = {SECOND: WebhookSender(SECOND)}
    async with (
        WebhookServer("127.0.0.1", 0, recorder, senders=senders, default=None) as server,
        httpx.AsyncClient() as client,
    ):
        plain = await client.post(server.url, content=body(system_message()))
        named = await client.post(server.url_of(SECOND), content=body(system_message()))

    assert (plain.status_code, named.status_code) == (404, 200)
    assert recorder.senders == [SECOND]


async def test_a_default_that_takes_no_webhooks_is_404_on_the_plain_path(
    recorder: Recorder,
) -> None:
    # The default sender is not an On-Premises one (say Infobip): it is not among the senders.
    senders = {SECOND: WebhookSender(SECOND)}
    async with (
        WebhookServer("127.0.0.1", 0, recorder, senders=senders, default=FIRST) as server,
        httpx.AsyncClient() as client,
    ):
        plain = await client.post(server.url, content=body(system_message()))
        named = await client.post(server.url_of(FIRST), content=body(system_message()))

    assert (plain.status_code, named.status_code) == (404, 404)
    assert recorder.batches == []


async def test_a_senders_secret_is_checked_on_its_own_path_only(recorder: Recorder) -> None:
    senders = {FIRST: WebhookSender(FIRST, "first-s3cret"), SECOND: WebhookSender(SECOND)}
    async with (
        WebhookServer("127.0.0.1", 0, recorder, senders=senders, default=FIRST) as server,
        httpx.AsyncClient() as client,
    ):
        refused = await client.post(server.url, content=body(system_message()))
        open_one = await client.post(server.url_of(SECOND), content=body(system_message()))
        bearer = {"Authorization": "Bearer first-s3cret"}
        accepted = await client.post(
            server.url_of(FIRST), content=body(system_message()), headers=bearer
        )

    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    assert (open_one.status_code, accepted.status_code) == (200, 200)
    assert recorder.senders == [SECOND, FIRST]


async def test_url_of_names_a_senders_path(two_senders: WebhookServer) -> None:
    assert two_senders.url_of(SECOND) == f"http://127.0.0.1:{two_senders.port}/webhook/{SECOND}"


async def test_urls_are_unknown_once_stopped(recorder: Recorder) -> None:
    async with WebhookServer("127.0.0.1", 0, recorder) as server:
        assert server.url.endswith("/webhook")

    with pytest.raises(RuntimeError):
        _ = server.url
    with pytest.raises(RuntimeError):
        _ = server.url_of(FIRST)


@pytest.fixture
def quiet_handler_cancellation(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # aiohttp logs the handler it cancels at shutdown; that is the point of the test.
    with caplog.at_level(logging.CRITICAL, logger="aiohttp"):
        yield


@pytest.mark.usefixtures("quiet_handler_cancellation")
async def test_server_stops_promptly_while_a_callback_hangs(recorder: Recorder) -> None:
    recorder.hang = True
    async with httpx.AsyncClient() as client:
        async with WebhookServer("127.0.0.1", 0, recorder) as server:
            pending = asyncio.create_task(client.post(server.url, content=body(system_message())))
            await recorder.called.wait()
            started = time.monotonic()
        stopping_took = time.monotonic() - started
        with pytest.raises(httpx.HTTPError):
            await pending

    assert stopping_took < 1.5
