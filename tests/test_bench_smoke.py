"""The bench and soak harnesses still run end to end (figures come from make bench / soak)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def test_the_bench_smoke_run_measures_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [written] = list(tmp_path.glob("smoke-*.json"))
    report = json.loads(written.read_text())
    by_name = {r["scenario"]: r for r in report["results"]}
    for name in (
        "baseline: bare grpc.aio",
        "baseline: bare httpx loop, gateway's transport",
        "baseline: bare httpx loop, httpx's default",
        "baseline: grpc.aio + httpx composed",
        "GetIdentity cache hit",
        "GetIdentity cache miss (bypass)",
        "AcknowledgeIdentity",
    ):
        assert by_name[name]["rps"] > 0, name
        assert by_name[name]["requests"] > 0, name
    zipf = next(r for r in report["results"] if r["scenario"].startswith("Zipf"))
    assert 0 < zipf["extra"]["hit_ratio"] < 1
    burst = next(r for r in report["results"] if "concurrent cold reads" in r["scenario"])
    assert burst["extra"]["upstream_requests"] == 1
    memory = next(r for r in report["results"] if r["scenario"].startswith("memory"))
    assert memory["extra"]["entries"] == 10_000
    assert report["ratios"]["cache_hit_vs_bare"] > 0
    for ratio in (
        "cache_miss_vs_bound",
        "cache_miss_vs_bound_httpx_default",
        "composed_parts_vs_bound",
    ):
        assert report["ratios"][ratio] > 0, ratio
        assert len(report["ratios_per_round"][ratio]) == 1, ratio
    assert "cache_hit_vs_bare" in done.stdout


def test_a_short_soak_keeps_the_gateway_up_and_every_error_in_the_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "6", "--callers", "8",
         "--json", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    summary = json.loads(done.stdout)
    assert summary["gateway_alive_at_end"] is True
    assert summary["calls"] > 0
    assert summary["violations"] == {}
    assert done.returncode == 0
