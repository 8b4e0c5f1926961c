"""The webhook listener under a flood (spec §7): slow and idle connections are closed in bounded
time, the listener holds a bounded share of the descriptors, and gRPC keeps answering.

Every test runs real sockets on loopback, with timeouts of a second or two so that it takes
seconds; the clients send one byte a second and never finish.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import math
import resource
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc

from gateway.backends.onprem.webhook import IdentityChangeReport
from gateway.serving import webhooks
from gateway.serving.appserver import AppServer, ListenerLimits, RepeatLimit
from gateway.serving.webhooks import WebhookServer
from tests.conftest import GatewayFactory, call

SECRET = "flood-test-secret"
KNOWN = "16315551234"  # the emulator's demo contact
# A request that never ends: one byte a second of it outlasts every test.
ENDLESS_HEADERS = b"POST /webhook HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 120
# What a timer may overrun by on a loaded test machine.
MARGIN = 1.5


class Recorder:
    """An on_changes callback keeping what it was handed."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[IdentityChangeReport]]] = []

    async def __call__(self, sender: str, reports: list[IdentityChangeReport]) -> None:
        self.batches.append((sender, reports))


def webhook_body() -> bytes:
    """A webhook reporting one identity change."""
    message = {
        "from": "16315553601",
        "id": "ABGGFlA5FpafAgo6EhgsssWx0HDW",
        "timestamp": "1602535356",
        "type": "system",
        "system": {
            "type": "user_identity_changed",
            "identity": "Rc/eg9Rl0JA=",
            "user": "16315553601",
        },
    }
    return json.dumps({"messages": [message]}).encode()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(1024):
            pass
    except ConnectionError:  # closed with a reset
        pass


async def trickle(port: int, data: bytes, *, every: float = 1.0, give_up: float = 10.0) -> float:
    """Connect to ``port`` and send ``data`` one byte every ``every`` seconds; how long the
    connection stayed open (from connect) until the server closed it (``give_up`` at most)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = loop.time()
    closed = asyncio.ensure_future(_until_closed(reader))
    try:
        for byte in data:
            if closed.done() or loop.time() - opened >= give_up:
                break
            writer.write(bytes([byte]))
            await asyncio.wait({closed}, timeout=every)
        await asyncio.wait({closed}, timeout=max(0.0, opened + give_up - loop.time()))
        return loop.time() - opened
    finally:
        closed.cancel()
        writer.close()


async def sample_open(server: AppServer, stop: asyncio.Event) -> list[int]:
    """``server.open_connections`` every 10 ms until ``stop``."""
    samples: list[int] = []
    while not stop.is_set():
        samples.append(server.open_connections)
        await asyncio.sleep(0.01)
    return samples


# gRPC keeps answering while the webhook listener is flooded.


async def test_slow_connections_are_closed_while_new_grpc_channels_keep_answering(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = ListenerLimits(header_timeout=1.0, body_timeout=1.0)  # 256 connections at most
    # GatewayServer has no setting for them (yet): it makes its WebhookServer with the default.
    monkeypatch.setattr(webhooks, "WEBHOOK_LIMITS", limits)
    async with gateway_factory(webhook_listen="127.0.0.1:0", webhook_secret=SECRET) as gateway:
        address = f"127.0.0.1:{gateway.server.port}"
        webhook_port = gateway.server.webhook_port
        assert webhook_port is not None
        flood = [asyncio.ensure_future(trickle(webhook_port, ENDLESS_HEADERS)) for _ in range(400)]
        latencies: list[float] = []
        codes: set[grpc.StatusCode] = set()
        loop = asyncio.get_running_loop()
        while not all(task.done() for task in flood):
            started = loop.time()
            async with grpc.aio.insecure_channel(address) as channel:  # a new connection each time
                stub = identity_pb2_grpc.IdentityServiceStub(channel)
                request = identity_pb2.GetIdentityRequest(wa_id=KNOWN, bypass_cache=True)
                outcome = await call(stub.GetIdentity, request, timeout=2.0)
            latencies.append(loop.time() - started)
            codes.add(outcome.code)
            await asyncio.sleep(0.1)
        open_for = [task.result() for task in flood]
    # 256 are served at once; the rest wait unaccepted for a slot, then get the same deadline.
    rounds = math.ceil(400 / 256)
    assert max(open_for) < rounds * limits.header_timeout + MARGIN, sorted(open_for)[-5:]
    assert codes == {grpc.StatusCode.OK}
    assert len(latencies) >= 5
    assert max(latencies) < 2.0, sorted(latencies)[-5:]


# The bound on open connections, and the descriptors kept for the rest of the process.


async def test_connections_past_the_bound_wait_and_a_webhook_gets_in_once_slots_free() -> None:
    recorder = Recorder()
    limits = ListenerLimits(max_connections=8, header_timeout=1.0, body_timeout=1.0)
    async with WebhookServer("127.0.0.1", 0, recorder, limits=limits) as server:
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample_open(server, stop))
        flood = [asyncio.ensure_future(trickle(server.port, ENDLESS_HEADERS)) for _ in range(24)]
        await asyncio.sleep(0.2)  # the flood is in: 8 accepted, 16 waiting in the kernel's queue
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.post(server.url, content=webhook_body())
        open_for = await asyncio.gather(*flood)
        stop.set()
        samples = await sampler
    assert response.status_code == 200
    assert response.json() == {"accepted": 1}
    assert [sender for sender, _reports in recorder.batches] == [""]
    assert max(samples) == 8  # reached, never passed
    assert max(open_for) < math.ceil(24 / 8) * limits.header_timeout + MARGIN


async def test_the_bound_leaves_three_quarters_of_the_descriptors_to_the_rest() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    huge = ListenerLimits(max_connections=10**9)
    async with WebhookServer("127.0.0.1", 0, Recorder(), limits=huge) as server:
        assert server.max_connections == soft // 4
    async with WebhookServer("127.0.0.1", 0, Recorder()) as default:
        assert default.max_connections == min(256, soft // 4)


# The header, idle and body timeouts.


async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout() -> None:
    limits = ListenerLimits(header_timeout=1.0, body_timeout=5.0)
    async with WebhookServer("127.0.0.1", 0, Recorder(), limits=limits) as server:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        answered = loop.time()
        await asyncio.wait_for(_until_closed(reader), 5.0)
        idle_for = loop.time() - answered
        writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert limits.header_timeout - 0.1 < idle_for < limits.header_timeout + MARGIN


async def test_a_body_trickling_in_is_cut_off_after_the_body_timeout_and_never_handed_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    limits = ListenerLimits(header_timeout=5.0, body_timeout=1.0)
    headers = (
        b"POST /webhook HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    senders = {"": webhooks.WebhookSender("", SECRET)}
    async with WebhookServer("127.0.0.1", 0, recorder, senders=senders, limits=limits) as server:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(headers)
        started = loop.time()
        closed = asyncio.ensure_future(_until_closed(reader))
        for byte in b"{" * 1000:
            writer.write(bytes([byte]))
            await asyncio.wait({closed}, timeout=1.0)
            if closed.done() or loop.time() - started > 6.0:
                break
        cut_off_after = loop.time() - started
        closed.cancel()
        writer.close()
        await asyncio.sleep(0.1)  # the handler sees the connection gone
    assert cut_off_after < limits.body_timeout + MARGIN
    assert recorder.batches == []
    # A client cut off is not an error of the gateway's.
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def _self_signed(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "webhook.pem", directory / "webhook.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_a_tls_handshake_never_begun_counts_toward_the_bound_and_is_closed_in_time(
    tmp_path: Path,
) -> None:
    limits = ListenerLimits(max_connections=4, header_timeout=1.0)
    context = _self_signed(tmp_path)
    recorder = Recorder()
    async with WebhookServer(
        "127.0.0.1", 0, recorder, ssl_context=context, limits=limits
    ) as server:
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample_open(server, stop))
        # Ten connections that never send a ClientHello.
        silent = [asyncio.ensure_future(trickle(server.port, b"")) for _ in range(10)]
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(verify=False, timeout=10.0) as client:
            response = await client.post(server.url, content=webhook_body())
        open_for = await asyncio.gather(*silent)
        stop.set()
        samples = await sampler
    assert response.status_code == 200
    assert max(samples) == 4
    assert max(open_for) < math.ceil(10 / 4) * limits.header_timeout + MARGIN


# Errors at a bounded rate.


def _accept_error() -> logging.LogRecord:
    return logging.LogRecord(
        "asyncio",
        logging.ERROR,
        __file__,
        1,
        "socket.accept() out of system resource\nsocket: <asyncio.TransportSocket fd=7>",
        None,
        None,
    )


def test_repeat_limit_lets_one_accept_error_a_second_through_and_counts_the_rest() -> None:
    now = [0.0]
    limit = RepeatLimit(("socket.accept() out of system resource",), clock=lambda: now[0])
    passed: list[str] = []
    for tick in range(300):  # 100 a second for three seconds
        now[0] = tick / 100
        record = _accept_error()
        if limit.filter(record):
            passed.append(record.getMessage())
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception", None, None)
    assert limit.filter(other)  # lines of other kinds are not its business
    assert len(passed) == 3
    assert "more like it" not in passed[0]
    assert passed[1].endswith("(and 99 more like it since the last such line)")
    assert passed[2].endswith("(and 99 more like it since the last such line)")


async def test_the_listener_bounds_asyncios_accept_error_while_it_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    asyncio_log = logging.getLogger("asyncio")
    async with WebhookServer("127.0.0.1", 0, Recorder()):
        for _ in range(50):
            asyncio_log.handle(_accept_error())
    running = [r for r in caplog.records if r.getMessage().startswith("socket.accept()")]
    caplog.clear()
    asyncio_log.handle(_accept_error())  # stopped: the filter is gone
    assert len(running) == 1
    assert len(caplog.records) == 1


async def test_a_flood_of_malformed_requests_is_logged_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with WebhookServer("127.0.0.1", 0, Recorder()) as server:
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nnot a header\r\n\r\n")
            answer = await reader.read()
            writer.close()
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    errors = [r for r in caplog.records if r.getMessage().startswith("Error handling request")]
    assert len(errors) == 1


# Out of descriptors: a listener that cannot accept waits, and says so once a second.

_OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import asyncio, logging, os, resource, sys
    from gateway.serving.webhooks import WebhookServer

    async def main() -> None:
        async def on_changes(sender, reports): ...
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
        async with WebhookServer("127.0.0.1", 0, on_changes) as server:
            hoard = []
            try:
                while True:
                    hoard.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            print(server.port, flush=True)
            await asyncio.sleep(3.0)  # the parent's connections wait for a descriptor
            for fd in hoard:
                os.close(fd)
            await asyncio.sleep(0.5)
            print(server.open_connections, flush=True)

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))  # this child's own limit
    asyncio.run(main())
    """
)


async def test_out_of_descriptors_the_listener_retries_and_logs_once_a_second() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OUT_OF_DESCRIPTORS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        port = int(await asyncio.wait_for(child.stdout.readline(), 10.0))
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        out, err = await asyncio.wait_for(child.communicate(), 15.0)
        for _reader, writer in clients:
            writer.close()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    lines = err.decode().splitlines()
    accept_lines = [line for line in lines if "cannot accept a connection" in line]
    assert child.returncode == 0, err.decode()
    assert 1 <= len(accept_lines) <= 5, lines[:10]
    assert int(out.decode().split()[-1]) == 5  # accepted once descriptors were free again
