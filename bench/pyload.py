"""Python load for what h2load cannot do: varying request bodies, bursts, and the httpx baseline.

Run as a separate process by ``bench/bench.py``; prints one JSON object with its results.

    python bench/pyload.py grpc --target 127.0.0.1:50051 --duration 5 --concurrency 64 \
        --zipf 100000 --zipf-s 1.1
    python bench/pyload.py burst --target 127.0.0.1:50051 --wa-id 19990000001 --count 1000
    python bench/pyload.py httpx --upstream http://127.0.0.1:9090 --duration 5 --concurrency 64
    python bench/pyload.py httpx --client default --upstream http://127.0.0.1:9090
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import random
import time
from collections.abc import Callable

import grpc
import httpx
from whatsapp.identity.v1 import identity_pb2, identity_pb2_grpc

from gateway.backends.http import aiohttp_transport

ZIPF_BASE = 10_000_000_000  # wa_ids are ZIPF_BASE + rank: 11 digits


def zipf_sampler(n: int, s: float, rng: random.Random) -> Callable[[], str]:
    """A function drawing wa_ids with P(rank k) proportional to 1 / k**s, k in 1..n."""
    weights = [1.0 / (k**s) for k in range(1, n + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]

    def draw() -> str:
        return str(ZIPF_BASE + bisect.bisect_left(cumulative, rng.random() * total) + 1)

    return draw


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def summary(latencies: list[float], ok: int, errors: int, elapsed: float) -> dict[str, float]:
    latencies.sort()
    return {
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def grpc_load(args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(7)
    draw = zipf_sampler(args.zipf, args.zipf_s, rng) if args.zipf else (lambda: args.wa_id)
    latencies: list[float] = []
    ok = errors = 0
    deadline = time.perf_counter() + args.duration
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    stubs = [identity_pb2_grpc.IdentityServiceStub(c) for c in channels]

    async def worker(stub: identity_pb2_grpc.IdentityServiceStub) -> None:
        nonlocal ok, errors
        while time.perf_counter() < deadline:
            request = identity_pb2.GetIdentityRequest(wa_id=draw(), bypass_cache=args.bypass)
            started = time.perf_counter()
            try:
                await stub.GetIdentity(request, timeout=10)
                ok += 1
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return summary(latencies, ok, errors, elapsed)


async def burst(args: argparse.Namespace) -> dict[str, float]:
    """``count`` concurrent reads of one wa_id, all sent before any can be answered."""
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        await channel.channel_ready()
        request = identity_pb2.GetIdentityRequest(wa_id=args.wa_id)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stub.GetIdentity(request, timeout=30) for _ in range(args.count)),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - started
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    return {"requests": args.count, "ok": ok, "errors": args.count - ok, "seconds": elapsed}


def bare_client(kind: str, upstream: str, connections: int) -> httpx.AsyncClient:
    """A bare ``httpx.AsyncClient``: over the gateway's transport, or httpx's own default one."""
    if kind == "gateway":
        transport = aiohttp_transport(max_connections=connections, verify=False)
        return httpx.AsyncClient(base_url=upstream, transport=transport)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=upstream, limits=limits)


async def bearer_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """Log in to the emulator (admin/secret) and return the Authorization header to send."""
    login = await client.post("/v1/users/login", auth=("admin", "secret"))
    return {"Authorization": f"Bearer {login.json()['users'][0]['token']}"}


async def httpx_load(args: argparse.Namespace) -> dict[str, float]:
    """The bare httpx.AsyncClient loop against the emulator (the miss path's upstream part)."""
    latencies: list[float] = []
    ok = errors = 0
    async with bare_client(args.client, args.upstream, args.concurrency) as client:
        headers = await bearer_headers(client)
        path = f"/v1/contacts/{args.wa_id}/identity"
        deadline = time.perf_counter() + args.duration

        async def worker() -> None:
            nonlocal ok, errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                response.json()
                if response.status_code == 200:
                    ok += 1
                else:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return summary(latencies, ok, errors, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("grpc", "burst", "httpx"))
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--upstream", default="http://127.0.0.1:9090")
    parser.add_argument("--wa-id", default="16315551234")
    parser.add_argument("--bypass", action="store_true")
    parser.add_argument(
        "--client",
        choices=("gateway", "default"),
        default="gateway",
        help="httpx mode: the gateway's transport (aiohttp) or httpx's default one (httpcore)",
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--zipf", type=int, default=0, help="draw wa_ids from N ranks")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    runner = {"grpc": grpc_load, "burst": burst, "httpx": httpx_load}[args.mode]
    print(json.dumps(asyncio.run(runner(args))))


if __name__ == "__main__":
    main()
