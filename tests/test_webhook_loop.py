"""The whole local loop: an identity changes in the emulator → its webhook → the gateway's
cache → a watcher's stream. The emulator authenticates its webhooks with the secret the gateway
was given (``Authorization: Bearer <secret>``), as a WhatsApp client would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from whatsapp.identity.v1 import identity_pb2
from whatsapp_emulator.emulator import RunningEmulator

from gateway.app.server import GatewayServer
from tests.conftest import GatewayFactory, new_wa_id, wait_until

pytestmark = pytest.mark.integration

OLD, NEW = "UKD6Y/5SqDU=", "bmV3SGFzaA=="
SECRET = "loop-webhook-s3cret"


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """conftest's emulator, sending its webhooks with the gateway's secret."""
    async with RunningEmulator(webhook_secret=SECRET) as running:
        yield running


async def test_a_change_in_whatsapp_reaches_the_cache_and_a_watcher_through_the_webhook(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD, acknowledged=True)
    async with gateway_factory(webhook_listen="127.0.0.1:0", webhook_secret=SECRET) as gateway:
        port = gateway.server.webhook_port
        assert port is not None
        emulator.state.update_settings(webhook_url=f"http://127.0.0.1:{port}/webhook")
        assert emulator.state.settings.webhook_secret == SECRET
        assert (await gateway.get(wa_id)).response.identity.hash == OLD  # cached
        stream = gateway.stub.WatchIdentityChanges(
            identity_pb2.WatchIdentityChangesRequest(wa_ids=[wa_id])
        )
        assert await wait_until(lambda: gateway.server.changes.watchers > 0)

        emulator.state.set_identity(wa_id, NEW)  # WhatsApp detects a new identity

        response = await asyncio.wait_for(stream.read(), 5)
        read = await gateway.get(wa_id)
        stream.cancel()

    change = response.change
    assert (change.identity.wa_id, change.identity.hash) == (wa_id, NEW)
    assert change.source == identity_pb2.IDENTITY_CHANGE_SOURCE_WEBHOOK
    assert (read.response.identity.hash, read.response.identity.acknowledged) == (NEW, False)
    assert read.response.cache_hit is True
    assert emulator.state.count("GET") == 1  # only the first read went to WhatsApp
    [delivery] = emulator.state.webhook_deliveries
    assert (delivery.status, delivery.ok) == (200, True)


async def test_a_webhook_with_the_wrong_secret_is_refused_and_changes_nothing(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, OLD, acknowledged=True)
    async with gateway_factory(webhook_listen="127.0.0.1:0", webhook_secret="another") as gateway:
        port = gateway.server.webhook_port
        assert port is not None
        emulator.state.update_settings(webhook_url=f"http://127.0.0.1:{port}/webhook")
        assert (await gateway.get(wa_id)).response.identity.hash == OLD  # cached

        emulator.state.set_identity(wa_id, NEW)
        assert await wait_until(lambda: len(emulator.state.webhook_deliveries) == 1)
        read = await gateway.get(wa_id)

    [delivery] = emulator.state.webhook_deliveries
    assert (delivery.status, delivery.ok) == (401, False)  # WhatsApp would deliver it again
    assert (read.response.identity.hash, read.response.identity.acknowledged) == (OLD, True)
    assert read.response.cache_hit is True


def test_the_webhook_endpoint_needs_a_valid_address() -> None:
    from gateway.app.config import ConfigError, GatewayConfig

    with pytest.raises(ConfigError, match="--webhook-listen must be HOST:PORT"):
        GatewayConfig(
            upstream_url="http://127.0.0.1:9",
            upstream_token="t",
            webhook_listen="nowhere",
            webhook_secret=SECRET,
        )


async def test_without_webhook_listen_there_is_no_endpoint(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gateway:
        server: GatewayServer = gateway.server
        assert server.webhook_port is None
