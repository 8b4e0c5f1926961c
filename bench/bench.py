"""``make bench``: the gateway's throughput, latency and memory against spec §5, in one run.

It starts the WhatsApp API emulator, the gateway and the baselines as separate processes on
loopback, drives load with ghz where installed, else h2load (Debian: ``apt-get install
nghttp2-client``), else a Python gRPC client (numbers then say so: a Python client is slower
than the server it loads). It prints one table and writes the same figures as JSON under
``bench/results/``.

On a machine with two or more cores the server under test runs on CPU 0 and the load
generator and the emulator on the others, so each side has a core of its own (``taskset``).

    python bench/bench.py                 # the full run (a few minutes)
    python bench/bench.py --smoke         # seconds: proves the harness works, no figures
    python bench/bench.py --duration 20   # longer, steadier measurements

h2load sees HTTP statuses only, never gRPC's: the error count of every gateway scenario comes
from the gateway's own ``grpc_server_handled_total``, and errors are never counted as
throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.contract import SERVICE_NAME

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
GATEWAY = str(Path(sys.executable).parent / "identity-gateway")
SERVICE = SERVICE_NAME
DEMO_WA_ID = "16315551234"
DEMO_HASH = "UKD6Y/5SqDU="
MULTI_CPU = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pinned(command: list[str], cpus: str) -> list[str]:
    """``command`` run on ``cpus`` ("0" for the server under test, "1-" for the rest)."""
    if not MULTI_CPU:
        return command
    last = (os.cpu_count() or 2) - 1
    cpu_list = cpus.replace("-", f"-{last}") if cpus.endswith("-") else cpus
    return ["taskset", "-c", cpu_list, *command]


@contextlib.contextmanager
def process(
    command: list[str], *, ready: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start ``command``, wait for ``ready`` in its output, and stop it (SIGTERM) afterwards."""
    with tempfile.TemporaryFile("w+") as log:
        yield from _supervised(command, log, ready, env)


def _supervised(
    command: list[str], log: Any, ready: str, env: dict[str, str] | None
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            log.seek(0)
            if ready in log.read():
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{command[0]} did not start:\n{log.read()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited (drained) within 15 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    port = free_port()
    command = [GATEWAY, "emulator", "--listen", f"127.0.0.1:{port}", "--synthetic-contacts"]
    with process(pinned(command, "1-"), ready="listening"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def gateway(upstream: str, *extra: str, cpus: str = "0") -> Iterator[tuple[str, str]]:
    """A gateway (on CPU 0 by default); yields its gRPC address and its metrics URL."""
    port, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_GATEWAY_")}
    env["IDENTITY_GATEWAY_UPSTREAM_PASSWORD"] = "secret"
    command = [
        GATEWAY, "serve", "--listen", f"127.0.0.1:{port}", "--upstream-url", upstream,
        "--upstream-username", "admin", "--metrics-listen", f"127.0.0.1:{metrics}", *extra,
    ]  # fmt: skip
    with process(pinned(command, cpus), ready='"serving"', env=env):
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics"


@contextlib.contextmanager
def bare_server(upstream: str | None = None) -> Iterator[str]:
    """The constant gRPC server, or with ``upstream`` the two parts of a miss composed."""
    port = free_port()
    command = [PYTHON, str(BENCH / "bare_server.py"), "--port", str(port)]
    if upstream is not None:
        command += ["--upstream", upstream]
    with process(pinned(command, "0"), ready="ready"):
        yield f"127.0.0.1:{port}"


# ---------------------------------------------------------------------------- load


@dataclasses.dataclass
class Result:
    """One scenario's figures."""

    scenario: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    requests: int = 0
    driver: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def grpc_frame(message: Any) -> bytes:
    payload: bytes = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def load_driver() -> str:
    if shutil.which("ghz"):
        return "ghz"
    if shutil.which("h2load"):
        return "h2load"
    return "python"


def drive(
    target: str, method: str, request: Any, *, duration: float, connections: int, streams: int
) -> Result:
    """Constant load of one request on ``target`` for ``duration`` seconds."""
    driver = load_driver()
    if driver == "ghz":
        return _ghz(target, method, request, duration, connections, streams)
    if driver == "h2load":
        return _h2load(target, method, request, duration, connections, streams)
    return _python_grpc(target, request, duration, connections * streams)


def _h2load(
    target: str, method: str, request: Any, duration: float, connections: int, streams: int
) -> Result:
    with tempfile.TemporaryDirectory() as scratch:
        body, log = Path(scratch) / "body", Path(scratch) / "log"
        body.write_bytes(grpc_frame(request))
        command = [
            "h2load", "-D", str(max(1, round(duration))), "--warm-up-time", "1",
            "-c", str(connections),
            "-m", str(streams), "-t", "1", "-d", str(body), "--log-file", str(log),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://{target}/{SERVICE}/{method}",
        ]  # fmt: skip
        out = subprocess.run(pinned(command, "1-"), capture_output=True, text=True, check=True)
        latencies = sorted(
            int(fields[2]) / 1000
            for fields in (line.split() for line in log.read_text().splitlines())
            if len(fields) >= 3 and fields[1] == "200"
        )
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out.stdout).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total.*?(\d+) succeeded, (\d+) failed, (\d+) errored",
                       out.stdout)  # fmt: skip
    assert counts is not None, out.stdout
    total, _, failed, errored = (int(g) for g in counts.groups())
    return Result(
        scenario="",
        rps=rps,
        p50_ms=_percentile(latencies, 0.5),
        p99_ms=_percentile(latencies, 0.99),
        errors=failed + errored,
        requests=total,
        driver="h2load",
    )


def _ghz(
    target: str, method: str, request: Any, duration: float, connections: int, streams: int
) -> Result:
    from google.protobuf import json_format

    data = json_format.MessageToJson(request, preserving_proto_field_name=True)
    command = [
        "ghz", "--insecure", "--call", f"{SERVICE}.{method}", "-d", data, "-z", f"{duration}s",
        "-c", str(connections * streams), "--connections", str(connections), "-O", "json", target,
    ]  # fmt: skip
    out = subprocess.run(pinned(command, "1-"), capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    by_percent = {
        d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []
    }
    statuses = report.get("statusCodeDistribution") or {}
    return Result(
        scenario="",
        rps=report["rps"],
        p50_ms=by_percent.get(50, 0.0),
        p99_ms=by_percent.get(99, 0.0),
        errors=sum(n for code, n in statuses.items() if code != "OK"),
        requests=report["count"],
        driver="ghz",
    )


def _python_grpc(target: str, request: Any, duration: float, concurrency: int) -> Result:
    args = ["grpc", "--target", target, "--wa-id", request.wa_id, "--duration", str(duration),
            "--concurrency", str(concurrency)]  # fmt: skip
    if getattr(request, "bypass_cache", False):
        args.append("--bypass")
    return _pyload(args, driver="python")


def _pyload(args: list[str], *, driver: str = "python") -> Result:
    command = pinned([PYTHON, str(BENCH / "pyload.py"), *args], "1-")
    figures = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return Result(
        scenario="",
        rps=figures.get("rps", 0.0),
        p50_ms=figures.get("p50_ms", 0.0),
        p99_ms=figures.get("p99_ms", 0.0),
        errors=int(figures.get("errors", 0)),
        requests=int(figures.get("requests", 0)),
        driver=driver,
        extra=figures,
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


# ---------------------------------------------------------------------------- gateway counters


def scrape(metrics_url: str) -> dict[str, float]:
    """The gateway's counters that decide errors and upstream traffic, summed by name/label."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("grpc_server_handled_total"):
            code = re.search(r'grpc_code="(\w+)"', name)
            key = "handled_ok" if code and code.group(1) == "OK" else "handled_error"
            figures[key] = figures.get(key, 0.0) + float(value)
            figures["handled"] = figures.get("handled", 0.0) + float(value)
        elif name.startswith("identity_gateway_upstream_requests_total"):
            figures["upstream"] = figures.get("upstream", 0.0) + float(value)
        elif name.startswith(
            ("identity_gateway_cache_hits_total", "identity_gateway_cache_misses_total")
        ):
            figures[name.split("{")[0]] = float(value)
    return figures


def with_gateway_errors(
    result: Result, before: dict[str, float], after: dict[str, float]
) -> Result:
    """Charge gRPC errors seen by the gateway: errors are never throughput."""
    handled = after.get("handled", 0.0) - before.get("handled", 0.0)
    errors = after.get("handled_error", 0.0) - before.get("handled_error", 0.0)
    if handled > 0:
        result.rps *= 1 - errors / handled
    result.errors += int(errors)
    return result


# ---------------------------------------------------------------------------- scenarios


@dataclasses.dataclass(frozen=True)
class Settings:
    duration: float
    rounds: int
    connections: int
    streams: int
    zipf_ids: int
    burst: int
    cache_entries: int


def get_request(wa_id: str = DEMO_WA_ID, bypass: bool = False) -> Any:
    from whatsapp.identity.v1 import identity_pb2

    return identity_pb2.GetIdentityRequest(wa_id=wa_id, bypass_cache=bypass)


def ack_request() -> Any:
    from whatsapp.identity.v1 import identity_pb2

    return identity_pb2.AcknowledgeIdentityRequest(wa_id=DEMO_WA_ID, hash=DEMO_HASH)


# The bench measures the gateway, not WhatsApp's documented 20 requests/s: shaping is off.
GATEWAY_FLAGS = ("--upstream-rate-limit", "0")


def measure_gateway(
    name: str, target: str, metrics: str, method: str, request: Any, settings: Settings
) -> Result:
    before = scrape(metrics)
    result = drive(target, method, request, duration=settings.duration,
                   connections=settings.connections, streams=settings.streams)  # fmt: skip
    after = scrape(metrics)
    result.scenario = name
    result.extra["upstream_requests"] = after.get("upstream", 0) - before.get("upstream", 0)
    return with_gateway_errors(result, before, after)


def drive_baseline(target: str, request: Any, settings: Settings) -> Result:
    """A baseline server's GetIdentity under the same load as the gateway's."""
    return drive(target, "GetIdentity", request, duration=settings.duration,
                 connections=settings.connections, streams=settings.streams)  # fmt: skip


def _warm(target: str) -> None:
    """One read, so login and the first upstream connection are not in the measurement."""
    subprocess.run([GATEWAY, "get", DEMO_WA_ID, "--target", target], capture_output=True,
                   check=True)  # fmt: skip


# The bare httpx.AsyncClient loops: over the transport the gateway uses, and over httpx's default.
HTTPX_CLIENTS = {
    "gateway": "baseline: bare httpx loop, gateway's transport",
    "default": "baseline: bare httpx loop, httpx's default",
}


def httpx_baseline(upstream: str, settings: Settings, client: str = "gateway") -> Result:
    """The upstream part alone, where the gateway runs (CPU 0), at its best concurrency."""
    best: Result | None = None
    for concurrency in (4, 16):
        command = pinned([PYTHON, str(BENCH / "pyload.py"), "httpx", "--upstream", upstream,
                          "--client", client, "--duration", str(settings.duration),
                          "--concurrency", str(concurrency)], "0")  # fmt: skip
        figures = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout
        )
        result = Result(HTTPX_CLIENTS[client], figures["rps"], figures["p50_ms"],
                        figures["p99_ms"], int(figures["errors"]), int(figures["requests"]),
                        "python", {"concurrency": concurrency})  # fmt: skip
        if best is None or result.rps > best.rps:
            best = result
    assert best is not None
    return best


def median_result(results: list[Result]) -> Result:
    """The round with the median throughput (figures of one real round, not a blend)."""
    ordered = sorted(results, key=lambda r: r.rps)
    chosen = ordered[len(ordered) // 2]
    chosen.extra["rounds_rps"] = [round(r.rps) for r in results]
    return chosen


def implied_by_parts(grpc_part: Result, httpx_part: Result) -> float:
    """Spec §5's bound of a cache miss: ``1 / (1/grpc_rps + 1/httpx_rps)``."""
    if not grpc_part.rps or not httpx_part.rps:
        return 0.0
    return 1 / (1 / grpc_part.rps + 1 / httpx_part.rps)


def run(
    settings: Settings, *, scaling: bool
) -> tuple[list[Result], dict[str, float], dict[str, list[float]]]:
    """Every scenario; the §5 ratios are medians of ratios taken within each round.

    ``cache_miss_vs_bound`` takes the httpx part over the transport the gateway uses, so that it
    measures what the gateway adds to its parts; ``cache_miss_vs_bound_httpx_default`` takes it
    over httpx's default transport, and ``composed_parts_vs_bound`` is what the two parts reach
    when composed with nothing in between (``bare_server.py --upstream``).
    """
    rounds: dict[str, list[Result]] = {}
    per_round: dict[str, list[float]] = {
        "cache_hit_vs_bare": [],
        "cache_miss_vs_bound": [],
        "cache_miss_vs_bound_httpx_default": [],
        "composed_parts_vs_bound": [],
    }
    results: list[Result] = []
    with (
        emulator() as upstream,
        bare_server() as bare_target,
        bare_server(upstream) as composed_target,
        gateway(upstream, *GATEWAY_FLAGS) as (target, metrics),
    ):
        _warm(target)
        for _ in range(settings.rounds):
            bare = drive_baseline(bare_target, get_request(), settings)
            bare.scenario = "baseline: bare grpc.aio"
            hit = measure_gateway("GetIdentity cache hit", target, metrics, "GetIdentity",
                                  get_request(), settings)  # fmt: skip
            base_httpx = httpx_baseline(upstream, settings, "gateway")
            default_httpx = httpx_baseline(upstream, settings, "default")
            composed = drive_baseline(composed_target, get_request(bypass=True), settings)
            composed.scenario = "baseline: grpc.aio + httpx composed"
            miss = measure_gateway("GetIdentity cache miss (bypass)", target, metrics,
                                   "GetIdentity", get_request(bypass=True), settings)  # fmt: skip
            for result in (bare, base_httpx, default_httpx, composed, hit, miss):
                rounds.setdefault(result.scenario, []).append(result)
            bound = implied_by_parts(bare, base_httpx)
            default_bound = implied_by_parts(bare, default_httpx)
            per_round["cache_hit_vs_bare"].append(hit.rps / bare.rps if bare.rps else 0.0)
            per_round["cache_miss_vs_bound"].append(miss.rps / bound if bound else 0.0)
            per_round["cache_miss_vs_bound_httpx_default"].append(
                miss.rps / default_bound if default_bound else 0.0
            )
            per_round["composed_parts_vs_bound"].append(composed.rps / bound if bound else 0.0)
        results.extend(median_result(r) for r in rounds.values())
        results.append(measure_gateway("AcknowledgeIdentity", target, metrics,
                                       "AcknowledgeIdentity", ack_request(), settings))  # fmt: skip
        results.append(zipf_mix(target, metrics, settings))
        results.append(cold_burst(upstream, target, settings))
    if scaling:
        results.extend(worker_scaling(settings, per_round))
    results.append(cache_memory(settings.cache_entries))
    figures = {key: sorted(values)[len(values) // 2] for key, values in per_round.items()}
    figures["ratio_rounds"] = float(settings.rounds)
    return results, figures, per_round


def worker_scaling(settings: Settings, per_round: dict[str, list[float]]) -> list[Result]:
    """Cache hits with 1 and 2 workers, alternating, every process free to use every core.

    On a two-core machine the load generator shares the cores with the workers, so the
    figure is what a second worker adds here, not on a larger machine.
    """
    ones: list[Result] = []
    twos: list[Result] = []
    with (
        emulator() as upstream,
        gateway(upstream, *GATEWAY_FLAGS, cpus="0-") as (target1, metrics1),
        gateway(upstream, *GATEWAY_FLAGS, "--workers", "2", cpus="0-") as (target2, metrics2),
    ):
        _warm(target1)
        _warm(target2)
        for _ in range(settings.rounds):
            one = measure_gateway("GetIdentity cache hit, 1 worker, all cores", target1,
                                  metrics1, "GetIdentity", get_request(), settings)  # fmt: skip
            two = measure_gateway("GetIdentity cache hit, 2 workers, all cores", target2,
                                  metrics2, "GetIdentity", get_request(), settings)  # fmt: skip
            ones.append(one)
            twos.append(two)
            per_round.setdefault("scaling_1_to_2_workers", []).append(
                two.rps / one.rps if one.rps else 0.0
            )
    return [median_result(ones), median_result(twos)]


def zipf_mix(target: str, metrics: str, settings: Settings) -> Result:
    before = scrape(metrics)
    result = _pyload(["grpc", "--target", target, "--duration", str(settings.duration),
                      "--concurrency", "64", "--zipf", str(settings.zipf_ids)])  # fmt: skip
    after = scrape(metrics)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    hits = delta("identity_gateway_cache_hits_total")
    misses = delta("identity_gateway_cache_misses_total")
    result.scenario = f"Zipf mix over {settings.zipf_ids:,} ids (TTL 30 s)"
    result.extra = {
        "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
        "upstream_rps": delta("upstream") / settings.duration,
    }
    return with_gateway_errors(result, before, after)


def cold_burst(upstream: str, target: str, settings: Settings) -> Result:
    wa_id = "19990000042"
    path = f"/v1/contacts/{wa_id}/identity"
    fault = json.dumps({"path": path, "method": "GET", "delay": 0.5}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{upstream}/_emulator/faults", data=fault,
                                                  method="POST"), timeout=5)  # fmt: skip
    result = _pyload(["burst", "--target", target, "--wa-id", wa_id,
                      "--count", str(settings.burst)])  # fmt: skip
    recorded = json.loads(urllib.request.urlopen(
        f"{upstream}/_emulator/requests?method=GET&path={path}", timeout=5).read())  # fmt: skip
    result.scenario = f"{settings.burst:,} concurrent cold reads of one wa_id"
    result.extra = {"upstream_requests": len(recorded["requests"])}
    return result


def cache_memory(entries: int) -> Result:
    out = subprocess.run([PYTHON, str(BENCH / "memory.py"), str(entries)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    figures = json.loads(out.stdout)
    return Result(scenario=f"memory of {entries:,} cached identities", extra=figures)


# ---------------------------------------------------------------------------- report


def report(
    results: list[Result], figures: dict[str, float], per_round: dict[str, list[float]]
) -> str:
    lines = [f"{'scenario':<46} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  notes",
             "-" * 100]  # fmt: skip
    for r in results:
        notes = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.extra.items()
            if k
            in (
                "hit_ratio",
                "upstream_rps",
                "upstream_requests",
                "mb_per_100k",
                "rss_mb",
                "concurrency",
                "rounds_rps",
            )
        )
        if r.driver:
            notes = f"[{r.driver}] {notes}"
        lines.append(f"{r.scenario:<46} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                     f"{r.errors:>7}  {notes}")  # fmt: skip
    lines.append("-" * 100)
    targets = {
        "cache_hit_vs_bare": ">= 0.9 (median of per-round ratios)",
        "cache_miss_vs_bound": ">= 0.8 (bound: 1 / (1/grpc + 1/httpx), same round)",
        "cache_miss_vs_bound_httpx_default": "(reported: the httpx part over httpx's default)",
        "composed_parts_vs_bound": "(reported: the two parts composed, nothing between)",
        "scaling_1_to_2_workers": "(reported)",
        "ratio_rounds": "",
    }
    for key, value in figures.items():
        rounds = per_round.get(key, [])
        spread = f"  rounds {min(rounds):.3f}-{max(rounds):.3f}" if len(rounds) > 1 else ""
        lines.append(f"{key:<46} {value:>9.3f}  target {targets.get(key, '')}{spread}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds; no real figures")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the ratios")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if args.smoke:
        settings = Settings(1.0, 1, 2, 4, 1_000, 100, 10_000)
    else:
        settings = Settings(args.duration, args.rounds, 8, 16, 100_000, 1_000, 100_000)
    if load_driver() == "python":
        print(
            "neither ghz nor h2load found: using the Python driver, which is slower than the "
            "server it loads (install h2load: apt-get install nghttp2-client)",
            file=sys.stderr,
        )
    results, figures, per_round = run(settings, scaling=not args.smoke)
    print(report(results, figures, per_round))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{'smoke-' if args.smoke else ''}{stamp}.json"
    path.write_text(json.dumps({
        "time": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pinned": MULTI_CPU},
        "settings": dataclasses.asdict(settings),
        "results": [dataclasses.asdict(r) for r in results],
        "ratios": figures,
        "ratios_per_round": per_round,
    }, indent=2))  # fmt: skip
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
