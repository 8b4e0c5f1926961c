"""``identity-gateway serve`` as a real process: drain on SIGTERM, JSON logs, and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc
from whatsapp_emulator.emulator import Fault, RunningEmulator

from tests.conftest import Gateway, GatewayFactory, call, new_wa_id, wait_until

pytestmark = pytest.mark.integration

SERVICE = "whatsapp.identity.v1.IdentityService"
PASSWORD = "emulator-pass-9f3"
HASH = "UKD6Y/5SqDU="
EXECUTABLE = str(Path(sys.executable).parent / "identity-gateway")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now (worker k serves metrics on P + k)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


class ServeProcess:
    """One ``identity-gateway serve`` subprocess with its stderr (the JSON log) in a file."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.address = f"127.0.0.1:{port}"
        self.log = log

    def log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    async def wait_serving(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                assert self.process.returncode is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError("the gateway never became SERVING:\n" + self.log.read_text())


@contextlib.asynccontextmanager
async def serve_process(
    emulator: RunningEmulator, tmp_path: Path, *extra: str
) -> AsyncIterator[ServeProcess]:
    emulator.state.update_settings()  # defaults
    emulator.state.change_password(PASSWORD)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_GATEWAY_")}
    env["IDENTITY_GATEWAY_UPSTREAM_PASSWORD"] = PASSWORD
    log = tmp_path / f"gateway-{port}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            EXECUTABLE,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream-url",
            emulator.url,
            "--upstream-username",
            "admin",
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            env=env,
        )
    running = ServeProcess(process, port, log)
    try:
        await running.wait_serving()
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_drains_in_flight_rpcs_then_exits_zero(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    wa_ids = [new_wa_id() for _ in range(30)]
    for wa_id in wa_ids:
        emulator.state.set_identity(wa_id, HASH)
    async with (
        serve_process(emulator, tmp_path, "--shutdown-grace", "20") as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        emulator.state.add_fault(Fault("/v1/contacts/*", method="GET", delay=1.0, times=None))
        in_flight = [
            asyncio.create_task(
                call(
                    stub.GetIdentity,
                    identity_pb2.GetIdentityRequest(wa_id=w, bypass_cache=True),
                    timeout=30,
                )
            )
            for w in wa_ids
        ]
        # all of them reached WhatsApp
        assert await wait_until(lambda: emulator.state.count("GET") == len(wa_ids))

        gateway.process.send_signal(signal.SIGTERM)

        after = await watch.read()
        late = await call(stub.GetIdentity, identity_pb2.GetIdentityRequest(wa_id=wa_ids[0]))
        outcomes = await asyncio.gather(*in_flight)
        exit_code = await asyncio.wait_for(gateway.process.wait(), 30)

    assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * len(wa_ids)
    assert late.code == grpc.StatusCode.UNAVAILABLE  # started after the signal: refused
    assert exit_code == 0, gateway.log.read_text()


async def test_a_second_sigterm_stops_without_waiting_for_the_grace(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    emulator.state.add_fault(Fault("/v1/contacts/*", method="GET", stall_after_headers=120))
    async with (
        serve_process(
            emulator, tmp_path, "--shutdown-grace", "120", "--upstream-timeout", "120"
        ) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        stuck = asyncio.create_task(
            call(stub.GetIdentity, identity_pb2.GetIdentityRequest(wa_id=wa_id), timeout=120)
        )
        assert await wait_until(lambda: emulator.state.count("GET") == 1)
        gateway.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert gateway.process.returncode is None  # still draining the stuck call
        gateway.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(gateway.process.wait(), 10)  # hang guard
        outcome = await stuck
    assert exit_code == 0
    assert outcome.code != grpc.StatusCode.OK


async def test_logs_are_json_lines_with_request_ids_and_no_secrets(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    known, unknown = new_wa_id(), new_wa_id()
    emulator.state.set_identity(known, HASH)
    async with serve_process(emulator, tmp_path) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            traced = (("x-request-id", "trace-me-123"),)
            get = identity_pb2.GetIdentityRequest
            assert (await call(stub.GetIdentity, get(wa_id=known), metadata=traced)).ok
            hit_traced = (("x-request-id", "hit-me-456"),)  # a hit takes the short path
            assert (await call(stub.GetIdentity, get(wa_id=known), metadata=hit_traced)).ok
            await call(stub.GetIdentity, get(wa_id="+" + unknown))
            await call(stub.GetIdentity, get(wa_id="../users/login"))
            ack = identity_pb2.AcknowledgeIdentityRequest
            await call(stub.AcknowledgeIdentity, ack(wa_id=known, hash=HASH))
            emulator.state.revoke_tokens()  # forces a re-login, logged
            await call(stub.GetIdentity, get(wa_id=known, bypass_cache=True))
        gateway.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gateway.process.wait(), 30)
        lines = gateway.log_lines()

    records = [json.loads(line) for line in lines]  # every line is one JSON object
    tokens = {
        r.headers["authorization"].removeprefix("Bearer ")
        for r in emulator.state.requests()
        if r.headers.get("authorization", "").startswith("Bearer ")
    }
    assert len(tokens) == 2
    for line in lines:
        assert known not in line
        assert unknown not in line
        assert PASSWORD not in line
        assert all(token not in line for token in tokens)

    rpc_lines = [r for r in records if r["logger"] == "gateway.rpc"]
    assert len(rpc_lines) == 6
    assert all(r["request_id"] for r in rpc_lines)
    assert len({r["request_id"] for r in rpc_lines}) == 6
    first = rpc_lines[0]
    assert (first["method"], first["code"], first["cache"]) == ("GetIdentity", "OK", "miss")
    assert (first["request_id"], first["upstream_status"]) == ("trace-me-123", 200)
    assert first["wa_id"] == "*" * (len(known) - 4) + known[-4:]
    # the login made for the first RPC is logged under that RPC's request id
    [first_login] = [r for r in records if r["logger"] == "gateway.backends.onprem.login"][:1]
    assert first_login["request_id"] == "trace-me-123"
    assert [r["code"] for r in rpc_lines] == [
        "OK",
        "OK",
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "OK",
        "OK",
    ]
    assert [r["cache"] for r in rpc_lines[:3]] == ["miss", "hit", "miss"]
    assert rpc_lines[1]["request_id"] == "hit-me-456"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _grpc_labels(method: str, **extra: str) -> tuple[tuple[str, str], ...]:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method, **extra}
    return tuple(sorted(labels.items()))


async def test_metrics_count_a_known_sequence_of_calls_exactly(
    emulator: RunningEmulator, gateway_factory: GatewayFactory
) -> None:
    known = new_wa_id()
    emulator.state.set_identity(known, HASH)
    port = free_port()
    async with gateway_factory(metrics_listen=f"127.0.0.1:{port}") as gateway:
        await _known_sequence(gateway, known)
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200
    samples = _samples(answer.text)

    def value(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return samples.get((name, labels), 0.0)

    assert value("grpc_server_started_total", _grpc_labels("GetIdentity")) == 5
    assert value("grpc_server_started_total", _grpc_labels("AcknowledgeIdentity")) == 1
    handled = "grpc_server_handled_total"
    assert value(handled, _grpc_labels("GetIdentity", grpc_code="OK")) == 3
    assert value(handled, _grpc_labels("GetIdentity", grpc_code="NOT_FOUND")) == 1
    assert value(handled, _grpc_labels("GetIdentity", grpc_code="INVALID_ARGUMENT")) == 1
    assert value(handled, _grpc_labels("AcknowledgeIdentity", grpc_code="OK")) == 1
    assert value("grpc_server_handling_seconds_count", _grpc_labels("GetIdentity")) == 5
    assert value("identity_gateway_cache_hits_total") == 1
    assert value("identity_gateway_cache_misses_total") == 2
    assert value("identity_gateway_cache_bypasses_total") == 1
    assert value("identity_gateway_cache_entries") == 1
    upstream = "identity_gateway_upstream_requests_total"
    sender = ("sender", "default")  # flag mode's one sender
    assert value(upstream, (("operation", "GET"), sender, ("status", "200"))) == 2
    assert value(upstream, (("operation", "GET"), sender, ("status", "404"))) == 1
    assert value(upstream, (("operation", "PUT"), sender, ("status", "200"))) == 1
    assert value(upstream, (("operation", "login"), sender, ("status", "200"))) == 1
    assert value("identity_gateway_upstream_logins_total", (("outcome", "success"), sender)) == 1
    seconds = "identity_gateway_upstream_request_seconds_count"
    assert value(seconds, (("operation", "GET"), sender)) == 3
    assert value("identity_gateway_upstream_circuit_state", (sender,)) == 0


async def _known_sequence(gateway: Gateway, known: str) -> None:
    assert (await gateway.get(known)).ok  # miss: login + GET 200
    assert (await gateway.get(known)).ok  # hit
    assert (await gateway.get(new_wa_id())).code == grpc.StatusCode.NOT_FOUND  # miss: GET 404
    assert (await gateway.get("12")).code == grpc.StatusCode.INVALID_ARGUMENT  # no cache lookup
    assert (await gateway.get(known, bypass_cache=True)).ok  # bypass: GET 200
    assert (await gateway.ack(known, HASH)).ok  # PUT 200


async def test_reflection_can_be_switched_off(gateway_factory: GatewayFactory) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with gateway_factory(reflection=False) as gateway:
        stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.ServerReflectionInfo(iter([request])):
                pass
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_workers_share_the_port_and_all_drain_on_sigterm(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    metrics_port = free_port_pair()
    async with serve_process(
        emulator, tmp_path, "--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics_port}"
    ) as gateway:
        # Separate channels make separate connections, which the kernel spreads over workers.
        for _ in range(40):
            async with grpc.aio.insecure_channel(
                gateway.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = identity_pb2_grpc.IdentityServiceStub(channel)
                outcome = await call(stub.GetIdentity, identity_pb2.GetIdentityRequest(wa_id=wa_id))
                assert outcome.ok, outcome
        started = []
        async with httpx.AsyncClient() as http:
            for port in (metrics_port, metrics_port + 1):  # worker k serves metrics on PORT + k
                samples = _samples((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
                started.append(
                    samples.get(("grpc_server_started_total", _grpc_labels("GetIdentity")), 0.0)
                )
        gateway.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(gateway.process.wait(), 30)
    assert sum(started) == 40
    assert all(count > 0 for count in started), started  # both workers served
    assert exit_code == 0
    # each worker has its own cache: at most one upstream read per worker
    assert 1 <= emulator.state.count("GET") <= 2
