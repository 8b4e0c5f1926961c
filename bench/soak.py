"""``make soak``: minutes of mixed load on a real gateway while WhatsApp and Redis misbehave.

It starts a private ``redis-server``, the emulator and ``identity-gateway serve`` (Redis cache
backend, webhook listener with a secret, metrics, an explicit upstream rate and burst) as
processes on loopback, then, until ``--duration`` runs out:

- callers send a mix of cache hits, misses, ``bypass_cache`` reads, acknowledges (right and
  stale hashes), unknown contacts and invalid requests, each with a 2 s deadline;
- a fault injector starts a new fault every 20 s (every quarter of the run when shorter), in a
  fixed cycle: a webhook burst (50 authenticated On-Premises identity-change POSTs of 100
  changes each, plus 5 unauthenticated ones), Redis SIGSTOP for 5 s then SIGCONT, Redis
  SIGKILL then a restart on the same port 3 s later, and WhatsApp's bad phases, each for the
  first half of its phase: 503 bursts, dropped connections, stalled and oversized answers, HTML
  error pages, invalid JSON, 429 with Retry-After, revoked tokens (401 storms), refused logins
  and slow answers. Each fault ends by mid-phase so the next one meets a recovered gateway
  (a circuit breaker kept open by back-to-back faults would hide the following ones); each
  phase notes the breaker's state at its start and what WhatsApp answered during it;
- every 2 s it samples the gateway's resident memory (``VmRSS``), its open descriptors
  (``/proc/<pid>/fd``) and a few of its metrics.

Then it checks, and exits non-zero if any check fails:

- the gateway stayed up;
- every outcome is documented: OK; a status whose single ``ErrorInfo`` carries a member of
  ``gateway.serving.status.Reason`` with the code the status table gives that reason; or,
  without ``ErrorInfo``, ``DEADLINE_EXCEEDED`` (the caller's own deadline) or ``CANCELLED``
  while the soak itself is stopping. ``GATEWAY_INTERNAL`` (documented, but a gateway bug) and
  ``UNKNOWN`` fail too;
- memory and descriptors are flat: the last third's highest sample is within the tolerance
  (:data:`RSS_TOLERANCE`, :data:`FD_TOLERANCE`) of the first third's; judged on runs of
  :data:`MIN_JUDGED_SECONDS` or more (shorter ones are mostly warm-up), reported always;
- the upstream is never sent more than ``rate x 1 s + burst`` paced requests in any 1 s
  window: the most a token bucket of that rate and depth lets through (a full bucket at the
  window's start plus a second of refill). Measured from the emulator's arrival times (``GET
  /_emulator/requests``), which a busy emulator stamps late: a window is allowed ``rate x
  lag`` more, the lag being the emulator's own (probed every 20 ms) and at least 50 ms (5
  requests at 100/s), the jitter this measurement cannot resolve. Logins are not paced by the
  gateway: they are counted beside;
- each webhook burst: every unauthenticated POST is 401, no authenticated one is refused as
  malformed or unauthenticated, and at least one is accepted.

It prints one summary table (and the outcomes, samples and phases behind it), and writes the
figures as JSON to ``--out`` (``bench/results/soak-<time>.json``); with ``--json`` the JSON
goes to stdout too and the table to stderr.

    python bench/soak.py --duration 300          # what make soak runs
    python bench/soak.py --duration 20           # a smoke run: one of each Redis/webhook fault
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc
from whatsapp_emulator.emulator import identity_changed_webhook

from bench import GATEWAY, free_port, stop  # the processes are started and stopped alike
from gateway.serving.status import BUG, DOMAIN, FIELD_REASONS, RULES, Reason

ROOT = Path(__file__).resolve().parent.parent
CONTACTS = 2_000
BASE = 18_000_000_000
CALL_TIMEOUT = 2.0

# The upstream pace, set explicitly: low enough that the mixed load's upstream share (bypass
# reads, acknowledges, unknown contacts, expired entries) outruns it, so the bucket is exercised.
RATE_LIMIT = 100
BURST = 50
MAX_IN_FLIGHT = 8

PHASE_SECONDS = 20.0
SAMPLE_SECONDS = 2.0
REDIS_PAUSE_SECONDS = 5.0  # SIGSTOP .. SIGCONT (at most 40% of a shorter phase)
REDIS_DOWN_SECONDS = 3.0  # SIGKILL .. restart (at most 30% of a shorter phase)
UPSTREAM_FAULT_SHARE = 0.5  # WhatsApp misbehaves for the first half of its phase
LAG_PROBE_SECONDS = 0.02  # how often the emulator's responsiveness is probed
# The least stamp jitter assumed: the emulator stamps in a Python event loop, and the probe that
# watches it is a thread of this (busy) process, so stalls shorter than this can go unseen.
STAMP_JITTER = 0.05

WEBHOOK_SECRET = "soak-webhook-secret"
WEBHOOK_POSTS = 50
WEBHOOK_CHANGES = 100  # per POST: about 30 KiB, well under the 256 KiB cap
WEBHOOK_UNAUTHENTICATED = 5
WEBHOOK_CONNECTIONS = 10  # the soak's client opens at most this many at once
# Statuses a valid, authenticated push must never get: they would mean the gateway refused it
# as malformed, unauthenticated or unroutable. 429/5xx and dropped connections are reported
# (WhatsApp redelivers those) but do not fail the run.
WEBHOOK_REFUSALS = frozenset({"400", "401", "403", "404", "405", "413"})

# Flatness. Memory: +10% (at least 5 MiB) over the first third's peak. Allocator high-water
# marks move in steps (glibc arenas, pymalloc pools, gRPC's buffers, up to 8 in-flight upstream
# answers of up to 1 MiB each), so a later, heavier moment can lift RSS a few MiB without any
# leak; a leak grows with calls and faults and over 200 s passes that margin. Descriptors: +12,
# the transient connections a sample may catch (the webhook burst's 10, a metrics scrape, a
# Redis reconnect) on top of the steady set (callers' channels, upstream pool, Redis pool).
RSS_TOLERANCE = (0.10, 5.0)
FD_TOLERANCE = 12
MIN_JUDGED_SECONDS = 60.0


# ---------------------------------------------------------------------------- the processes


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RedisServer:
    """A private ``redis-server`` on a fixed loopback port, which the soak pauses and kills."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> float:
        """Start it and wait until it answers PING; returns how long that took (seconds)."""
        began = time.monotonic()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while self.command("PING") != b"+PONG":
            if self.process.poll() is not None or time.monotonic() - began > 10:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return time.monotonic() - began

    def command(self, *words: str, timeout: float = 0.5) -> bytes | None:
        """One inline command's first reply line, or None if Redis did not answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
                conn.sendall(" ".join(words).encode() + b"\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = conn.recv(256)
                    if not chunk:
                        return None
                    reply += chunk
                return reply.strip()
        except OSError:
            return None

    def keys(self) -> int | None:
        reply = self.command("DBSIZE")
        return int(reply[1:]) if reply is not None and reply.startswith(b":") else None

    def send(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
        self.paused = signum == signal.SIGSTOP

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.paused = False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.paused:
            self.send(signal.SIGCONT)
        stop(self.process)


@dataclasses.dataclass
class Stack:
    upstream: str
    target: str
    metrics: str
    webhook: str
    gateway: subprocess.Popen[bytes]
    redis: RedisServer
    gateway_log: IO[bytes]


@contextlib.contextmanager
def servers() -> Iterator[Stack]:
    if shutil.which("redis-server") is None:
        raise SystemExit("make soak needs redis-server (apt-get install redis-server)")
    emu_port, gw_port, metrics_port, hook_port = (free_port() for _ in range(4))
    upstream = f"http://127.0.0.1:{emu_port}"
    redis = RedisServer(free_port())
    emulator = gateway = None
    with tempfile.TemporaryFile() as gateway_log:
        try:
            redis.start()
            emulator = subprocess.Popen(
                [GATEWAY, "emulator", "--listen", f"127.0.0.1:{emu_port}", "--synthetic-contacts"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert emulator.stdout is not None
            emulator.stdout.readline()  # the banner: it listens
            env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_GATEWAY_")}
            env["IDENTITY_GATEWAY_UPSTREAM_PASSWORD"] = "secret"
            env["IDENTITY_GATEWAY_WEBHOOK_SECRET"] = WEBHOOK_SECRET
            gateway = subprocess.Popen(
                [GATEWAY, "serve", "--listen", f"127.0.0.1:{gw_port}", "--upstream-url", upstream,
                 "--upstream-username", "admin", "--upstream-timeout", "1",
                 "--log-level", "warning",
                 "--upstream-rate-limit", str(RATE_LIMIT), "--upstream-burst", str(BURST),
                 "--upstream-max-in-flight", str(MAX_IN_FLIGHT),
                 "--cache-backend", f"redis://127.0.0.1:{redis.port}/0",
                 "--webhook-listen", f"127.0.0.1:{hook_port}",
                 "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                stdout=subprocess.DEVNULL, stderr=gateway_log, env=env,
            )  # fmt: skip
            yield Stack(
                upstream=upstream,
                target=f"127.0.0.1:{gw_port}",
                metrics=f"http://127.0.0.1:{metrics_port}/metrics",
                webhook=f"http://127.0.0.1:{hook_port}/webhook",
                gateway=gateway,
                redis=redis,
                gateway_log=gateway_log,
            )
        finally:
            for process in (gateway, emulator):
                if process is not None:
                    stop(process)
            redis.stop()
            if emulator is not None and emulator.stdout is not None:
                emulator.stdout.close()


def control(upstream: str, method: str, path: str, body: Any = None, timeout: float = 5) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{upstream}/_emulator/{path}", data=data, method=method)
    raw = urllib.request.urlopen(request, timeout=timeout).read()
    return json.loads(raw) if raw else None


def scrape(metrics_url: str) -> dict[str, float]:
    """Every sample of the gateway's own metrics, summed by name (labels dropped), plus
    ``upstream <operation> <status>`` for each of the upstream requests' labels."""
    text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    figures: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line.startswith("identity_gateway_"):
            name, _, value = line.rpartition(" ")
            figures[name.split("{")[0]] += float(value)
            if name.startswith("identity_gateway_upstream_requests_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
                figures[f"upstream {labels.get('operation')} {labels.get('status')}"] += float(
                    value
                )
    return dict(figures)


CIRCUIT = {0: "closed", 1: "half-open", 2: "open"}


def upstream_answers(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """What the gateway got from WhatsApp between two scrapes, by operation and HTTP status."""
    return {
        key.removeprefix("upstream "): int(after[key] - before.get(key, 0.0))
        for key in sorted(after)
        if key.startswith("upstream ") and after[key] > before.get(key, 0.0)
    }


# ---------------------------------------------------------------------------- the faults


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    kind: str  # "upstream", "redis-stop", "redis-kill" or "webhook"
    calls: tuple[tuple[str, str, Any], ...] = ()


def _fault(**fault: Any) -> tuple[tuple[str, str, Any], ...]:
    return (("POST", "faults", {"path": "/v1/contacts/*", "times": None, **fault}),)


# The cycle, in order: a 20 s run (four 5 s phases) meets the webhook burst and both Redis
# faults; a 300 s run (fifteen 20 s phases) meets every fault, the webhook burst and the Redis
# pause twice, and the heavy ones (burst, 10 MiB answers, Redis) in its first third.
CYCLE: tuple[Phase, ...] = (
    Phase("webhook burst", "webhook"),
    Phase("Redis SIGSTOP", "redis-stop"),
    Phase("10 MiB answers", "upstream", _fault(method="GET", body_size=10 * 1024 * 1024)),
    Phase("Redis SIGKILL + restart", "redis-kill"),
    Phase("503 burst", "upstream", _fault(status=503, json={"errors": [{"code": 1016}]})),
    Phase("dropped connections", "upstream", _fault(drop=True)),
    Phase("stalled answers", "upstream", _fault(stall_after_headers=3)),
    Phase("HTML 502 pages", "upstream", _fault(status=502, body="<html>bad gateway</html>",
                                               headers={"Content-Type": "text/html"})),
    Phase("invalid JSON", "upstream", _fault(malformed=True)),
    Phase("429 with Retry-After", "upstream", _fault(status=429, headers={"Retry-After": "2"})),
    Phase("token revoked (401 storm)", "upstream", (("POST", "tokens/revoke", None),)),
    Phase("logins refused", "upstream", (("POST", "tokens/revoke", None),
                                         ("PUT", "settings", {"login_mode": "reject"}))),
    Phase("slow answers", "upstream", _fault(delay=0.8)),
)  # fmt: skip


@dataclasses.dataclass
class Clock:
    """Where the soak is: since when (monotonic and wall), in which phase, stopping or not."""

    t0: float = dataclasses.field(default_factory=time.monotonic)
    wall0: float = dataclasses.field(default_factory=time.time)
    phase: str = "start"
    stopping: bool = False

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)


def webhook_payloads(rng: random.Random) -> list[bytes]:
    """``WEBHOOK_POSTS`` valid On-Premises identity-change webhooks of ``WEBHOOK_CHANGES`` each."""
    now_ms = int(time.time() * 1000)
    payloads = []
    for _ in range(WEBHOOK_POSTS):
        messages = []
        for wa_id in rng.sample(range(BASE, BASE + CONTACTS), WEBHOOK_CHANGES):
            identity_hash = base64.b64encode(rng.randbytes(8)).decode()
            messages.extend(identity_changed_webhook(str(wa_id), identity_hash, now_ms)["messages"])
        payloads.append(json.dumps({"messages": messages}).encode())
    return payloads


async def webhook_burst(url: str, rng: random.Random) -> dict[str, Any]:
    """POST the burst at once (over at most ``WEBHOOK_CONNECTIONS`` connections); the statuses."""
    payloads = webhook_payloads(rng)
    wrong = [{}, {}, {}, {"Authorization": "Bearer wrong-secret"},
             {"Authorization": "Basic aG9vazp3cm9uZw=="}][:WEBHOOK_UNAUTHENTICATED]  # fmt: skip
    accepted = 0
    connector = aiohttp.TCPConnector(limit=WEBHOOK_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=20)
    began = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes, headers: dict[str, str]) -> str:
            nonlocal accepted
            headers = {"Content-Type": "application/json", **headers}
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    if response.status == 200:
                        accepted += int(json.loads(answer).get("accepted", 0))
                    return str(response.status)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                return type(error).__name__

        bearer = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
        results = await asyncio.gather(
            *(post(body, bearer) for body in payloads),
            *(post(payloads[0], headers) for headers in wrong),
        )
    authenticated = collections.Counter(results[: len(payloads)])
    unauthenticated = collections.Counter(results[len(payloads) :])
    problems = []
    if set(unauthenticated) != {"401"}:
        problems.append(f"unauthenticated POSTs got {dict(unauthenticated)} (all must be 401)")
    refused = {s: n for s, n in authenticated.items() if s in WEBHOOK_REFUSALS}
    if refused:
        problems.append(f"valid authenticated POSTs refused: {refused}")
    if authenticated["200"] == 0:
        problems.append("no authenticated POST was accepted")
    return {
        "posts": len(payloads),
        "changes_per_post": WEBHOOK_CHANGES,
        "authenticated": dict(authenticated),
        "unauthenticated": dict(unauthenticated),
        "changes_accepted": accepted,
        "seconds": round(time.monotonic() - began, 2),
        "problems": problems,
    }


async def _wait(stop_event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_event.wait(), max(0.0, seconds))


async def run_phase(
    phase: Phase, stack: Stack, seconds: float, stop_event: asyncio.Event, rng: random.Random
) -> dict[str, Any]:
    """Start ``phase``, hold it for the first part of ``seconds`` and end it; what was seen.

    Every fault ends by mid-phase, so the gateway has the rest to recover: WhatsApp's faults
    would otherwise keep the circuit breaker open (its open period doubles up to 60 s while
    probes fail) through the next few phases, which would never reach the gateway.
    """
    seen: dict[str, Any] = {}
    redis = stack.redis
    if phase.kind == "upstream":
        try:
            for method, path, body in phase.calls:
                await asyncio.to_thread(control, stack.upstream, method, path, body)
            await _wait(stop_event, UPSTREAM_FAULT_SHARE * seconds)
        finally:
            await asyncio.to_thread(control, stack.upstream, "DELETE", "faults")
            await asyncio.to_thread(control, stack.upstream, "PUT", "settings",
                                    {"login_mode": "ok"})  # fmt: skip
        seen["fault_s"] = round(UPSTREAM_FAULT_SHARE * seconds, 1)
    elif phase.kind == "webhook":
        seen.update(await webhook_burst(stack.webhook, rng))
    elif phase.kind == "redis-stop":
        pause = min(REDIS_PAUSE_SECONDS, 0.4 * seconds)
        seen["keys_before"] = await asyncio.to_thread(redis.keys)
        redis.send(signal.SIGSTOP)
        try:
            await _wait(stop_event, pause)
        finally:
            redis.send(signal.SIGCONT)
        seen["paused_s"] = round(pause, 1)
        seen["keys_after"] = await asyncio.to_thread(redis.keys)
    elif phase.kind == "redis-kill":
        seen["keys_before"] = await asyncio.to_thread(redis.keys)
        redis.kill()
        await _wait(stop_event, min(REDIS_DOWN_SECONDS, 0.3 * seconds))
        killed_at = time.monotonic()
        seen["restart_s"] = round(await asyncio.to_thread(redis.start), 2)
        # Is the gateway writing to the new, empty Redis? The first key it stores says so.
        seen["first_key_after_restart_s"] = None
        while not stop_event.is_set() and time.monotonic() - killed_at < 0.5 * seconds:
            if (await asyncio.to_thread(redis.keys) or 0) > 0:
                seen["first_key_after_restart_s"] = round(time.monotonic() - killed_at, 2)
                break
            await asyncio.sleep(0.1)
        seen["keys_after"] = await asyncio.to_thread(redis.keys)
    return seen


async def inject_faults(
    stack: Stack, clock: Clock, phase_seconds: float, stop_event: asyncio.Event
) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    rng = random.Random(11)
    index = 0
    while not stop_event.is_set():
        phase = CYCLE[index % len(CYCLE)]
        index += 1
        began = time.monotonic()
        clock.phase = phase.name
        entry: dict[str, Any] = {"phase": phase.name, "start_s": clock.elapsed(),
                                 "wall_start": time.time()}  # fmt: skip
        phases.append(entry)
        before: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            before = await asyncio.to_thread(scrape, stack.metrics)
            state = int(before.get("identity_gateway_upstream_circuit_state", 0))
            entry["circuit_at_start"] = CIRCUIT.get(state, str(state))
        try:
            entry.update(await run_phase(phase, stack, phase_seconds, stop_event, rng))
        except Exception as error:  # reported as a failed check, never silently
            entry["error"] = f"{type(error).__name__}: {error}"
        await _wait(stop_event, began + phase_seconds - time.monotonic())
        entry["end_s"] = clock.elapsed()
        with contextlib.suppress(OSError, ValueError):
            after = await asyncio.to_thread(scrape, stack.metrics)
            entry["upstream_answers"] = upstream_answers(before, after) if before else None
    with contextlib.suppress(Exception):
        await asyncio.to_thread(control, stack.upstream, "DELETE", "faults")
        await asyncio.to_thread(control, stack.upstream, "PUT", "settings", {"login_mode": "ok"})
    return phases


# ---------------------------------------------------------------------------- the outcomes


def table_codes() -> dict[str, set[str]]:
    """Each documented reason and the gRPC codes the status table gives it."""
    codes: dict[str, set[str]] = collections.defaultdict(set)
    for rule in (*RULES.values(), BUG):
        codes[str(rule.reason)].add(rule.code.name)
    for reason in (*FIELD_REASONS.values(), Reason.MALFORMED_REQUEST):
        codes[str(reason)].add(grpc.StatusCode.INVALID_ARGUMENT.name)
    return codes


class Tally:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.documented = {str(reason) for reason in Reason}
        self.codes = table_codes()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.by_phase: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.undocumented: collections.Counter[str] = collections.Counter()
        self.bugs: collections.Counter[str] = collections.Counter()
        self.limited_by: collections.Counter[str] = collections.Counter()

    def record(
        self, code: grpc.StatusCode, infos: list[error_details_pb2.ErrorInfo] | None = None
    ) -> None:
        infos = infos or []
        reason = infos[0].reason if infos else None
        outcome = f"{code.name}/{reason}" if reason else code.name
        self.outcomes[outcome] += 1
        self.by_phase[self.clock.phase][outcome] += 1
        if reason == Reason.UPSTREAM_RATE_LIMITED:
            meta = infos[0].metadata
            status = meta.get("upstreamStatus")
            by = meta.get("limitedBy") or (f"an HTTP {status}" if status else "(not said)")
            self.limited_by[by] += 1
        if code == grpc.StatusCode.OK:
            return
        if code == grpc.StatusCode.UNKNOWN or reason == Reason.GATEWAY_INTERNAL:
            self.bugs[outcome] += 1
        elif not infos:
            # Only the client library's own endings come without an ErrorInfo.
            own = code == grpc.StatusCode.DEADLINE_EXCEEDED or (
                code == grpc.StatusCode.CANCELLED and self.clock.stopping
            )
            if not own:
                self.undocumented[f"{outcome} (no ErrorInfo)"] += 1
        elif len(infos) > 1:
            self.undocumented[f"{outcome} ({len(infos)} ErrorInfo details)"] += 1
        elif infos[0].domain != DOMAIN:
            self.undocumented[f"{outcome} (domain {infos[0].domain!r})"] += 1
        elif reason not in self.documented:
            self.undocumented[f"{outcome} (reason not in Reason)"] += 1
        elif code.name not in self.codes[reason]:
            self.undocumented[f"{outcome} (the table gives {sorted(self.codes[reason])})"] += 1


async def call(rpc: Callable[..., Awaitable[Any]], request: Any, tally: Tally) -> None:
    pending = rpc(request, timeout=CALL_TIMEOUT)
    try:
        await pending
        tally.record(grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as error:
        infos: list[error_details_pb2.ErrorInfo] = []
        with contextlib.suppress(ValueError):
            status = await rpc_status.aio.from_call(pending)
            for detail in status.details if status else ():
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    infos.append(info)
        tally.record(error.code(), infos)


async def caller(target: str, stop_event: asyncio.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        while not stop_event.is_set():
            wa_id = str(BASE + rng.randrange(CONTACTS))
            roll = rng.random()
            if roll < 0.55:
                request: Any = identity_pb2.GetIdentityRequest(wa_id=wa_id)
                await call(stub.GetIdentity, request, tally)
            elif roll < 0.65:
                request = identity_pb2.GetIdentityRequest(wa_id=wa_id, bypass_cache=True)
                await call(stub.GetIdentity, request, tally)
            elif roll < 0.8:
                identity_hash = rng.choice(["c29ha2UtaGFzaA==", "c3RhbGU="])
                request = identity_pb2.AcknowledgeIdentityRequest(wa_id=wa_id, hash=identity_hash)
                await call(stub.AcknowledgeIdentity, request, tally)
            elif roll < 0.9:
                request = identity_pb2.GetIdentityRequest(wa_id=str(BASE + CONTACTS + 5))
                await call(stub.GetIdentity, request, tally)  # an unknown contact
            else:
                hostile = rng.choice(["../users/login", "1234%2F5678", "١٢٣٤٥٦٧", "x" * 5000])
                await call(stub.GetIdentity, identity_pb2.GetIdentityRequest(wa_id=hostile), tally)


# ---------------------------------------------------------------------------- the samples


async def sample(stack: Stack, clock: Clock, stop_event: asyncio.Event) -> list[dict[str, Any]]:
    """Every ``SAMPLE_SECONDS``: RSS and descriptors first (before the scrape's own connection),
    then the gateway's upstream, circuit and Redis metrics."""
    pid = stack.gateway.pid
    samples: list[dict[str, Any]] = []
    while stack.gateway.poll() is None:
        try:
            row: dict[str, Any] = {"t": clock.elapsed(), "phase": clock.phase}
            row["rss_mb"], row["fds"] = round(rss_mb(pid), 1), open_fds(pid)
        except OSError:
            break  # the gateway is gone
        try:
            metrics = await asyncio.to_thread(scrape, stack.metrics)
            for key, name in (
                ("upstream_requests", "upstream_requests_total"),
                ("redis_degraded", "cache_backend_degraded"),
                ("redis_errors", "cache_backend_errors_total"),
                ("circuit", "upstream_circuit_state"),
            ):
                row[key] = int(metrics.get(f"identity_gateway_{name}", 0))
        except (OSError, ValueError) as error:
            row["metrics_error"] = type(error).__name__
        samples.append(row)
        if stop_event.is_set():
            break
        await _wait(stop_event, SAMPLE_SECONDS)
    return samples


def flatness(values: list[float], tolerance: float, judged: bool) -> dict[str, Any]:
    """The samples' first, min, max, last; the first and last thirds' peaks; the verdict."""
    if not values:
        return {"verdict": "no samples"}
    third = max(1, len(values) // 3)
    first_peak, last_peak = max(values[:third]), max(values[-third:])
    allowed = first_peak + tolerance
    if not judged or len(values) < 6:
        verdict = "not judged (run too short)"
    else:
        verdict = "flat" if last_peak <= allowed else "GROWING"
    return {
        "first": values[0], "min": min(values), "max": max(values), "last": values[-1],
        "first_third_max": first_peak, "last_third_max": last_peak,
        "allowed_last_third_max": round(allowed, 1), "verdict": verdict,
    }  # fmt: skip


# ---------------------------------------------------------------------------- the upstream


LOGIN_PATH = "/v1/users/login"


def emulator_lag(upstream: str, done: threading.Event, lags: list[tuple[float, float]]) -> None:
    """Every 20 ms, how long the emulator takes to answer a control call (not recorded as an
    upstream request): while it is slow, it stamps arrivals late by up to that much."""
    while not done.is_set():
        sent = time.time()
        with contextlib.suppress(OSError, ValueError):
            control(upstream, "GET", "settings")
        lags.append((sent, time.time() - sent))
        done.wait(LAG_PROBE_SECONDS)


def upstream_windows(
    records: list[dict[str, Any]],
    phases: list[dict[str, Any]],
    wall0: float,
    lags: list[tuple[float, float]],
) -> dict[str, Any]:
    """The most requests the emulator received in any 1 s window (sliding, by arrival time).

    The bucket paces every request but logins, so those are checked: in any window starting at
    an arrival, at most ``rate x 1 s + burst``. The emulator stamps an arrival when its event
    loop gets to it, so when that loop lags by L seconds (the longest a probe of
    :func:`emulator_lag` waited during the window or the second before it), requests sent up to
    L s before a window are stamped inside it: such a window is allowed ``rate x L`` more, L
    at least :data:`STAMP_JITTER`, and the figures say so. Logins, which the bucket does not
    pace, are reported beside them.
    """
    limit = RATE_LIMIT + BURST
    paced = sorted(float(r["time"]) for r in records if r["path"] != LOGIN_PATH)
    logins = sorted(float(r["time"]) for r in records if r["path"] == LOGIN_PATH)
    everything = sorted(paced + logins)
    # Each 100 ms slot: the longest wait of a probe that was waiting during it.
    slot_lag: dict[int, float] = collections.defaultdict(float)
    for sent, lag in lags:
        for slot in range(int(sent * 10), int((sent + lag) * 10) + 1):
            slot_lag[slot] = max(slot_lag[slot], lag)

    def lag_near(moment: float) -> float:  # the window's own second and the second before it
        slots = range(int((moment - 1.0) * 10), int((moment + 1.0) * 10) + 1)
        return max((slot_lag.get(slot, 0.0) for slot in slots), default=0.0)

    def phase_at(wall: float) -> str:
        name = "start"
        for entry in phases:
            if entry["wall_start"] <= wall:
                name = entry["phase"]
        return name

    def allowed(start: float) -> int:
        return limit + math.ceil(RATE_LIMIT * max(STAMP_JITTER, lag_near(start)) - 1e-9)

    def window(start: float, count: int) -> dict[str, Any]:
        return {"requests": count, "at_s": round(start - wall0, 1), "phase": phase_at(start),
                "emulator_lag_s": round(lag_near(start), 3), "allowed": allowed(start)}  # fmt: skip

    best = worst = (0, 0.0)
    worst_margin, over_limit, right = -limit, 0, 0
    for left, start in enumerate(paced):
        while right < len(paced) and paced[right] < start + 1.0:
            right += 1
        count = right - left
        if count > best[0]:
            best = (count, start)
        if count > limit:
            over_limit += 1
            margin = count - allowed(start)
            if margin > worst_margin:
                worst, worst_margin = (count, start), margin
    busiest = window(best[1], best[0])
    # Arrivals per 100 ms from 1 s before the busiest window to its end: a gap followed by a
    # crowd is a stall (the gateway's or the emulator's) releasing requests all at once.
    profile = [0] * 20
    for moment in paced:
        slot = math.floor((moment - best[1] + 1.0) * 10)
        if 0 <= slot < 20:
            profile[slot] += 1
    busiest["profile_100ms_from_1s_before"] = profile
    busiest["logins_in_it"] = sum(1 for m in logins if best[1] <= m < best[1] + 1.0)
    seconds = collections.Counter(int(moment - wall0) for moment in paced)
    above_rate = [s for s, n in seconds.items() if n > RATE_LIMIT]
    most_with_logins, left = 0, 0
    for right_index, moment in enumerate(everything):
        while moment - everything[left] >= 1.0:
            left += 1
        most_with_logins = max(most_with_logins, right_index - left + 1)
    lag_values = sorted(lag for _, lag in lags)
    return {
        "rate_limit": RATE_LIMIT,
        "burst": BURST,
        "allowed_per_1s_window": limit,
        "requests": len(everything),
        "paced_requests": len(paced),
        "logins": len(logins),
        "max_1s_window": best[0],
        "busiest_window": busiest,
        "windows_over_rate_plus_burst": over_limit,
        "worst_window_over_rate_plus_burst": window(worst[1], worst[0]) if over_limit else None,
        "max_1s_window_with_logins": most_with_logins,
        "max_whole_second": max(seconds.values(), default=0),
        "whole_seconds_above_rate": len(above_rate),
        "whole_seconds_above_rate_by_phase": dict(
            collections.Counter(phase_at(wall0 + s) for s in above_rate)
        ),
        "emulator_lag_s": {
            "probes": len(lag_values),
            "median": round(lag_values[len(lag_values) // 2], 3) if lag_values else None,
            "max": round(lag_values[-1], 3) if lag_values else None,
        },
        "within_limit": over_limit == 0 or worst_margin <= 0,
    }


def gateway_log_lines(log: IO[bytes]) -> dict[str, Any]:
    """The gateway's warnings and errors, counted by level and by message (top 10)."""
    log.seek(0)
    levels: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[str] = collections.Counter()
    for raw in log.read().decode(errors="replace").splitlines():
        try:
            line = json.loads(raw)
            level, message = str(line.get("level")), str(line.get("message"))[:120]
        except (ValueError, AttributeError):
            level, message = "unparsed", raw[:120]
        levels[level] += 1
        messages[f"{level}: {message}"] += 1
    return {"by_level": dict(levels), "top": dict(messages.most_common(10))}


# ---------------------------------------------------------------------------- the run


async def soak(stack: Stack, duration: float, callers: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(stack.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        # One read first, so the gateway has logged in before the load: requests paced while
        # the first login is under way leave together when it ends, a start-up crowd that the
        # 401-storm phase measures anyway (a re-login under load).
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.GetIdentity(identity_pb2.GetIdentityRequest(wa_id=str(BASE)), timeout=10)
    clock = Clock()
    stop_event = asyncio.Event()
    tally = Tally(clock)
    phase_seconds = min(PHASE_SECONDS, duration / 4)
    lags: list[tuple[float, float]] = []
    probing = threading.Event()
    prober = threading.Thread(
        target=emulator_lag, args=(stack.upstream, probing, lags), daemon=True
    )
    prober.start()
    try:
        sampler = asyncio.create_task(sample(stack, clock, stop_event))
        injector = asyncio.create_task(inject_faults(stack, clock, phase_seconds, stop_event))
        workers = [
            asyncio.create_task(caller(stack.target, stop_event, tally, seed))
            for seed in range(callers)
        ]
        while (left := clock.t0 + duration - time.monotonic()) > 0 and stack.gateway.poll() is None:
            await _wait(stop_event, min(0.25, left))
        clock.stopping = True
        stop_event.set()
        await asyncio.gather(*workers)
        phases = await injector
        samples = await sampler
    finally:
        stop_event.set()
        probing.set()
    await asyncio.to_thread(prober.join)
    seconds = clock.elapsed()
    alive = stack.gateway.poll() is None
    recorded = await asyncio.to_thread(control, stack.upstream, "GET", "requests", None, 120)
    records: list[dict[str, Any]] = recorded["requests"]
    final_metrics: dict[str, float] = {}
    if alive:
        with contextlib.suppress(OSError, ValueError):
            final_metrics = await asyncio.to_thread(scrape, stack.metrics)
    judged = duration >= MIN_JUDGED_SECONDS
    rss = [float(s["rss_mb"]) for s in samples]
    fds = [float(s["fds"]) for s in samples]
    rss_tolerance = max(RSS_TOLERANCE[1], RSS_TOLERANCE[0] * max(rss[: max(1, len(rss) // 3)],
                                                                  default=0.0))  # fmt: skip
    upstream = upstream_windows(records, phases, clock.wall0, lags)
    upstream["gateway_counted"] = int(
        final_metrics.get("identity_gateway_upstream_requests_total", -1)
    )
    for entry in phases:
        entry.pop("wall_start", None)
    return {
        "started": dt.datetime.fromtimestamp(clock.wall0, dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "duration_s": duration, "callers": callers, "phase_s": phase_seconds,
            "call_timeout_s": CALL_TIMEOUT, "upstream_rate_limit": RATE_LIMIT,
            "upstream_burst": BURST, "upstream_max_in_flight": MAX_IN_FLIGHT,
            "sample_every_s": SAMPLE_SECONDS, "webhook_posts": WEBHOOK_POSTS,
            "webhook_changes_per_post": WEBHOOK_CHANGES,
            "rss_tolerance": f"+{RSS_TOLERANCE[0]:.0%} (at least {RSS_TOLERANCE[1]} MiB)",
            "fd_tolerance": f"+{FD_TOLERANCE}",
        },
        "seconds": seconds,
        "gateway_alive_at_end": alive,
        "calls": sum(tally.outcomes.values()),
        "outcomes": dict(tally.outcomes.most_common()),
        "rate_limited_by": dict(tally.limited_by),
        "violations": dict(tally.undocumented + tally.bugs),
        "undocumented": dict(tally.undocumented),
        "gateway_bugs": dict(tally.bugs),
        "outcomes_by_phase": {p: dict(c.most_common()) for p, c in tally.by_phase.items()},
        "rss_mb": flatness(rss, rss_tolerance, judged),
        "open_fds": flatness(fds, FD_TOLERANCE, judged),
        "upstream": upstream,
        "phases": phases,
        "samples": samples,
        "gateway_log": gateway_log_lines(stack.gateway_log),
    }  # fmt: skip


def upstream_figure(up: dict[str, Any]) -> str:
    busiest, worst = up["busiest_window"], up["worst_window_over_rate_plus_burst"]
    figure = (f"max {busiest['requests']} at {busiest['at_s']} s ({busiest['phase']}, "
              f"emulator lag {busiest['emulator_lag_s']} s)")  # fmt: skip
    if worst is not None:
        figure += (f"; {up['windows_over_rate_plus_burst']} windows over "
                   f"{up['allowed_per_1s_window']}, worst {worst['requests']} at "
                   f"{worst['at_s']} s ({worst['phase']}) allowed {worst['allowed']} for a "
                   f"{worst['emulator_lag_s']} s lag")  # fmt: skip
    return figure + f"; with logins max {up['max_1s_window_with_logins']}"


def checks(summary: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """The summary table's rows: what, the figure, the limit, passed (None: reported only)."""
    rss, fds, up = summary["rss_mb"], summary["open_fds"], summary["upstream"]
    hooks = [p for p in summary["phases"] if p["phase"] == "webhook burst"]
    redis = [p for p in summary["phases"] if p["phase"].startswith("Redis")]
    errors = [f"{p['phase']}: {p['error']}" for p in summary["phases"] if "error" in p]
    documented = summary["calls"] - sum(summary["violations"].values())

    def series(figures: dict[str, Any]) -> str:
        if "first" not in figures:
            return str(figures["verdict"])
        return (f"first {figures['first']:g}, min {figures['min']:g}, max {figures['max']:g}, "
                f"last {figures['last']:g}; thirds' peaks {figures['first_third_max']:g} -> "
                f"{figures['last_third_max']:g}: {figures['verdict']}")  # fmt: skip

    def flat(figures: dict[str, Any]) -> bool | None:
        verdict = figures.get("verdict", "")
        return None if verdict.startswith(("not judged", "no samples")) else verdict == "flat"

    hook_problems = [problem for p in hooks for problem in p.get("problems", [])]
    return [
        ("gateway up to the end", str(summary["gateway_alive_at_end"]), "True",
         summary["gateway_alive_at_end"]),
        ("gRPC outcomes documented", f"{documented:,} of {summary['calls']:,} calls",
         "all", not summary["violations"] and summary["calls"] > 0),
        ("resident memory (MiB)", series(rss),
         f"last third <= {rss.get('allowed_last_third_max', '-')}", flat(rss)),
        ("open descriptors", series(fds),
         f"last third <= {fds.get('allowed_last_third_max', '-')}", flat(fds)),
        ("paced upstream requests / 1 s window", upstream_figure(up),
         f"<= {up['rate_limit']} + burst {up['burst']} = {up['allowed_per_1s_window']} "
         "(+ rate x max(emulator lag, 50 ms))",
         up["within_limit"]),
        ("webhook bursts",
         "; ".join(f"auth {p.get('authenticated')}, unauth {p.get('unauthenticated')}, "
                   f"{p.get('changes_accepted')} changes in {p.get('seconds')} s" for p in hooks)
         or "none ran", "unauth all 401, none refused", not hook_problems if hooks else None),
        ("Redis faults",
         "; ".join(f"{p['phase']}: keys {p.get('keys_before')} -> {p.get('keys_after')}"
                   + (f", first key {p['first_key_after_restart_s']} s after the kill"
                      if "first_key_after_restart_s" in p else "") for p in redis)
         or "none ran", "reported", None),
        ("fault injection", f"{len(summary['phases'])} phases, {len(errors)} errors",
         "no errors", not errors),
        ("breaker open at a phase's start",
         ", ".join(p["phase"] for p in summary["phases"]
                   if p.get("circuit_at_start", "closed") != "closed") or "never",
         "reported", None),
    ]  # fmt: skip


def print_report(summary: dict[str, Any], out: IO[str]) -> None:
    def say(*parts: Any) -> None:
        print(*parts, file=out)

    say(f"{summary['calls']:,} calls in {summary['seconds']} s, {summary['config']['callers']} "
        f"callers; upstream paced at {RATE_LIMIT}/s, burst {BURST}")  # fmt: skip
    say("outcomes by status / reason:")
    for outcome, count in summary["outcomes"].items():
        say(f"  {count:>9,}  {outcome}")
    if summary["rate_limited_by"]:
        say(f"  UPSTREAM_RATE_LIMITED by: {summary['rate_limited_by']}")
    if summary["violations"]:
        say("UNDOCUMENTED / BUGS:", summary["violations"])
    say("phases:")
    for p in summary["phases"]:
        extra = {k: v for k, v in p.items() if k not in ("phase", "start_s", "end_s")}
        say(f"  {p['start_s']:>6} s  {p['phase']}" + (f"  {extra}" if extra else ""))
    say("samples (t s: RSS MiB / fds / upstream total / Redis degraded):")
    samples = summary["samples"]
    step = max(1, len(samples) // 30)
    for row in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
        say(f"  {row['t']:>6}: {row['rss_mb']:>6} / {row['fds']:>3} / "
            f"{row.get('upstream_requests', '-')} / {row.get('redis_degraded', '-')}")  # fmt: skip
    up = summary["upstream"]
    say(f"upstream: {up['requests']:,} requests ({up['logins']} logins; the gateway counted "
        f"{up['gateway_counted']:,}); {up['whole_seconds_above_rate']} whole seconds above "
        f"{RATE_LIMIT} ({up['whole_seconds_above_rate_by_phase']}); emulator lag "
        f"{up['emulator_lag_s']}")  # fmt: skip
    say(f"  busiest window: {up['busiest_window']}")
    say(f"gateway log lines: {summary['gateway_log']['by_level']}")
    for message, count in summary["gateway_log"]["top"].items():
        say(f"  {count:>7,}  {message}")
    rows = checks(summary)
    width = max(len(row[0]) for row in rows)
    limits = max(len(row[2]) for row in rows)
    say("")
    say(f"{'check':<{width}}  result  {'limit':<{limits}}  figures")
    say(f"{'-' * width}  ------  {'-' * limits}  -------")
    for name, figure, limit, passed in rows:
        result = "info" if passed is None else "PASS" if passed else "FAIL"
        say(f"{name:<{width}}  {result:<6}  {limit:<{limits}}  {figure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where soak-<time>.json goes (default bench/results)")  # fmt: skip
    args = parser.parse_args()
    with servers() as stack:
        summary = asyncio.run(soak(stack, args.duration, args.callers))
    failed = [row[0] for row in checks(summary) if row[3] is False]
    summary["failed_checks"] = failed
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    written = args.out / f"soak-{stamp}.json"
    written.write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        print(json.dumps(summary))
    print_report(summary, sys.stderr if args.json else sys.stdout)
    print(f"figures written to {written}", file=sys.stderr if args.json else sys.stdout)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
