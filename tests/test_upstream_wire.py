"""The configured upstream backend (aiohttp's pool under httpx) against raw sockets.

What each broken answer becomes, and how connections are pooled: the emulator cannot send a
malformed status line or hold a request without answering, so these servers are written by
hand on a loopback port.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.app.config import GatewayConfig
from gateway.app.startup import build_backend, prepare
from gateway.backends.base import Unobserved
from gateway.backends.onprem.client import OnPremBackend
from gateway.deadline import NO_DEADLINE
from gateway.failures import BackendFailure, Failure

WA_ID = "16315551234"
IDENTITY = (
    b'{"contacts": {"hash": "UKD6Y/5SqDU=", "created_timestamp": 1600132094000, '
    b'"acknowledged": false}}'
)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(IDENTITY),
    IDENTITY,
)

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on loopback answering every request with ``reply``; counts connections."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await read_request(reader):
                await self.reply(reader, writer)
                if writer.is_closing():
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request's head (the client sends no body here); False at end of stream."""
    try:
        await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    return True


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Reply], Awaitable[RawServer]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Reply) -> RawServer:
        raw = RawServer(reply)
        server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(server)
        raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return raw

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def backend_for(server: RawServer, **overrides: object) -> OnPremBackend:
    settings: dict[str, object] = {
        "upstream_url": server.url,
        "upstream_token": "static-token",
        "upstream_rate_limit": 0,
        "upstream_retries": 0,
        "upstream_timeout": 2.0,
    }
    settings.update(overrides)
    config = GatewayConfig(**settings)  # type: ignore[arg-type]
    [sender] = config.resolved_senders().senders
    backend = build_backend(sender, config, prepare(config), Unobserved())
    assert isinstance(backend, OnPremBackend)
    return backend


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)
    await writer.drain()


async def test_answers_are_read_over_one_kept_alive_connection(
    raw_server: Callable[[Reply], Awaitable[RawServer]],
) -> None:
    server = await raw_server(answer_ok)
    async with backend_for(server) as backend:
        for _ in range(5):
            identity = await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
            assert identity.hash == "UKD6Y/5SqDU="
    assert server.connections == 1


async def test_a_gzip_answer_is_decoded(
    raw_server: Callable[[Reply], Awaitable[RawServer]],
) -> None:
    compressed = gzip.compress(IDENTITY)

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % len(compressed) + compressed)
        await writer.drain()

    server = await raw_server(gzipped)
    async with backend_for(server) as backend:
        identity = await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert identity.hash == "UKD6Y/5SqDU="


async def test_no_more_connections_than_requests_admitted_at_once(
    raw_server: Callable[[Reply], Awaitable[RawServer]],
) -> None:
    async def slow_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        await answer_ok(reader, writer)

    server = await raw_server(slow_ok)
    async with backend_for(server, upstream_max_in_flight=3) as backend:
        await asyncio.gather(
            *(backend.get_identity(WA_ID, deadline=NO_DEADLINE) for _ in range(12))
        )
    assert server.connections == 3


# (raw bytes sent after the request, whether the server then hangs up, what the caller is told)
BROKEN_ANSWERS = {
    "malformed-status-line": (b"HTTP/1.1 twohundred OK\r\n\r\n", False, "broken answer"),
    "oversized-header": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        False,
        "broken answer",
    ),
    # httpx_aiohttp reports aiohttp's ServerDisconnectedError as httpx.ConnectTimeout; it is a
    # failed connection, which is retried, not a timeout, which is not.
    "hang-up-without-an-answer": (b"", True, "connection closed"),
    "body-cut-short": (OK[: len(OK) - 10], True, "connection reset while reading"),
}


@pytest.mark.parametrize(
    ("sent", "hang_up", "message"), BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys()
)
async def test_a_broken_answer_is_a_transport_error_not_a_timeout(
    raw_server: Callable[[Reply], Awaitable[RawServer]], sent: bytes, hang_up: bool, message: str
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()
        if hang_up:
            writer.close()

    server = await raw_server(broken)
    async with backend_for(server) as backend:
        with pytest.raises(BackendFailure, match=message) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.UNREACHABLE


async def test_an_answer_that_never_comes_is_an_upstream_timeout(
    raw_server: Callable[[Reply], Awaitable[RawServer]],
) -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await raw_server(never)
    async with backend_for(server, upstream_timeout=0.2) as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.TIMEOUT
