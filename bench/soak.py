"""``make soak``: minutes of mixed load on a real gateway while WhatsApp misbehaves.

It starts the emulator and ``identity-gateway serve`` as processes on loopback, then, until
``--duration`` runs out:

- callers send a mix of cache hits, misses, ``bypass_cache`` reads, acknowledges (right and
  stale hashes), unknown contacts and invalid requests, each with a deadline;
- a fault injector cycles WhatsApp through bad phases: 503 bursts, dropped connections,
  stalled and oversized answers, HTML error pages, invalid JSON, 429 with Retry-After,
  revoked tokens (401 storms), refused logins, slow answers, and healthy stretches.

It prints the outcomes by gRPC status and reason, the gateway's resident memory at the start
and the end, and whether the gateway stayed up; the same as JSON with ``--json``. It exits
non-zero if the gateway died or any call ended in a status the error table does not allow
(``GATEWAY_INTERNAL``, ``UNKNOWN``, or an error without an ``ErrorInfo``).

    python bench/soak.py --duration 300          # what make soak runs
    python bench/soak.py --duration 5 --json     # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc

from bench import GATEWAY, free_port, stop  # the processes are started and stopped alike

CONTACTS = 2_000
BASE = 18_000_000_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def control(upstream: str, method: str, path: str, body: Any = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{upstream}/_emulator/{path}", data=data, method=method)
    urllib.request.urlopen(request, timeout=5).read()


# Each phase: a name and the control-API calls that start it (faults are cleared in between).
PHASES: list[tuple[str, list[tuple[str, str, Any]]]] = [
    ("healthy", []),
    ("503 burst", [("POST", "faults", {"path": "/v1/contacts/*", "status": 503,
                                       "json": {"errors": [{"code": 1016}]}, "times": None})]),
    ("dropped connections", [("POST", "faults", {"path": "/v1/contacts/*", "drop": True,
                                                 "times": None})]),
    ("stalled answers", [("POST", "faults", {"path": "/v1/contacts/*",
                                             "stall_after_headers": 3, "times": None})]),
    ("10 MiB answers", [("POST", "faults", {"path": "/v1/contacts/*", "method": "GET",
                                            "body_size": 10 * 1024 * 1024, "times": None})]),
    ("HTML 502 pages", [("POST", "faults", {"path": "/v1/contacts/*", "status": 502,
                                            "body": "<html>bad gateway</html>",
                                            "headers": {"Content-Type": "text/html"},
                                            "times": None})]),
    ("invalid JSON", [("POST", "faults", {"path": "/v1/contacts/*", "malformed": True,
                                          "times": None})]),
    ("429 with Retry-After", [("POST", "faults", {"path": "/v1/contacts/*", "status": 429,
                                                  "headers": {"Retry-After": "2"},
                                                  "times": None})]),
    ("token revoked (401 storm)", [("POST", "tokens/revoke", None)]),
    ("logins refused", [("POST", "tokens/revoke", None),
                        ("PUT", "settings", {"login_mode": "reject"})]),
    ("slow answers", [("POST", "faults", {"path": "/v1/contacts/*", "delay": 0.8,
                                          "times": None})]),
]  # fmt: skip


async def inject_faults(upstream: str, phase_seconds: float, stop: asyncio.Event) -> list[str]:
    seen: list[str] = []
    rng = random.Random(11)
    while not stop.is_set():
        name, calls = rng.choice(PHASES)
        seen.append(name)
        await asyncio.to_thread(control, upstream, "DELETE", "faults")
        await asyncio.to_thread(control, upstream, "PUT", "settings", {"login_mode": "ok"})
        for method, path, body in calls:
            await asyncio.to_thread(control, upstream, method, path, body)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), phase_seconds)
    await asyncio.to_thread(control, upstream, "DELETE", "faults")
    return seen


class Tally:
    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []

    def record(self, code: grpc.StatusCode, reason: str | None) -> None:
        self.outcomes[f"{code.name}/{reason}" if reason else code.name] += 1
        if code == grpc.StatusCode.OK:
            return
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and reason is None:
            return  # the caller's own deadline, decided by the client library
        if reason is None or reason == "GATEWAY_INTERNAL" or code == grpc.StatusCode.UNKNOWN:
            self.violations.append(f"{code.name}/{reason}")


async def call(rpc: Callable[..., Awaitable[Any]], request: Any, tally: Tally) -> None:
    pending = rpc(request, timeout=2.0)
    try:
        await pending
        tally.record(grpc.StatusCode.OK, None)
    except grpc.aio.AioRpcError as error:
        reason = None
        with contextlib.suppress(ValueError):
            status = await rpc_status.aio.from_call(pending)
            for detail in status.details if status else ():
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
        tally.record(error.code(), reason)


async def caller(target: str, stop: asyncio.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        while not stop.is_set():
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


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    emu_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{emu_port}"
    emulator = subprocess.Popen(
        [GATEWAY, "emulator", "--listen", f"127.0.0.1:{emu_port}", "--synthetic-contacts"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_GATEWAY_")}
    env["IDENTITY_GATEWAY_UPSTREAM_PASSWORD"] = "secret"
    gateway = None
    try:
        assert emulator.stdout is not None
        emulator.stdout.readline()  # the banner: it listens
        gateway = subprocess.Popen(
            [GATEWAY, "serve", "--listen", f"127.0.0.1:{gw_port}", "--upstream-url", upstream,
             "--upstream-username", "admin", "--upstream-timeout", "1", "--log-level", "warning",
             "--upstream-rate-limit", "200", "--upstream-burst", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        yield upstream, f"127.0.0.1:{gw_port}", gateway
    finally:
        for process in (gateway, emulator):
            if process is not None:
                stop(process)
        if emulator.stdout is not None:
            emulator.stdout.close()


async def soak(
    upstream: str, target: str, gateway: subprocess.Popen[bytes], duration: float, callers: int
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
    stop = asyncio.Event()
    tally = Tally()
    rss_start = rss_mb(gateway.pid)
    started = time.monotonic()
    injector = asyncio.create_task(inject_faults(upstream, min(20.0, duration / 4), stop))
    workers = [asyncio.create_task(caller(target, stop, tally, seed)) for seed in range(callers)]
    rss_peak = rss_start
    while time.monotonic() - started < duration and gateway.poll() is None:
        await asyncio.sleep(min(1.0, duration / 10))
        rss_peak = max(rss_peak, rss_mb(gateway.pid))
    stop.set()
    await asyncio.gather(*workers)
    phases = await injector
    alive = gateway.poll() is None
    rss_end = rss_mb(gateway.pid) if alive else 0.0
    return {
        "seconds": round(time.monotonic() - started, 1),
        "calls": sum(tally.outcomes.values()),
        "outcomes": dict(tally.outcomes.most_common()),
        "violations": collections.Counter(tally.violations),
        "phases": phases,
        "gateway_alive_at_end": alive,
        "rss_mb": {"start": round(rss_start, 1), "peak": round(rss_peak, 1),
                   "end": round(rss_end, 1)},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with servers() as (upstream, target, gateway):
        summary = asyncio.run(soak(upstream, target, gateway, args.duration, args.callers))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['calls']:,} calls in {summary['seconds']} s; gateway alive at the end: "
              f"{summary['gateway_alive_at_end']}")  # fmt: skip
        print(f"resident memory (MB): {summary['rss_mb']}")
        print("phases:", ", ".join(summary["phases"]))
        print("outcomes by status / reason:")
        for outcome, count in summary["outcomes"].items():
            print(f"  {count:>9,}  {outcome}")
        if summary["violations"]:
            print("VIOLATIONS:", dict(summary["violations"]))
    return 0 if summary["gateway_alive_at_end"] and not summary["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
