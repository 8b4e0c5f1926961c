"""The soak's verdicts (bench/soak.py), on made-up figures: no servers, well under a second.

The soak itself runs end to end in tests/test_bench_smoke.py (6 s, every kind of fault); its
figures come from ``make soak``. These pin what its checks call a failure, so a soak that
passes cannot be one that stopped looking.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway.serving.status import DOMAIN, Reason

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    # bench/soak.py imports its neighbour bench/bench.py as `bench`, as when run as a script.
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("soak")
    finally:
        sys.path.remove(str(BENCH))


def info(reason: str, domain: str = DOMAIN) -> Any:
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain)


def tally(soak: ModuleType, stopping: bool = False) -> Any:
    return soak.Tally(soak.Clock(stopping=stopping))


def test_documented_outcomes_pass(soak: ModuleType) -> None:
    seen = tally(soak)
    seen.record(grpc.StatusCode.OK)
    seen.record(grpc.StatusCode.NOT_FOUND, [info(Reason.CONTACT_NOT_FOUND)])
    seen.record(grpc.StatusCode.RESOURCE_EXHAUSTED, [info(Reason.UPSTREAM_RATE_LIMITED)])
    seen.record(grpc.StatusCode.INVALID_ARGUMENT, [info(Reason.INVALID_WA_ID)])
    seen.record(grpc.StatusCode.DEADLINE_EXCEEDED)  # the caller's own deadline
    assert not seen.undocumented
    assert not seen.bugs
    assert seen.outcomes["NOT_FOUND/CONTACT_NOT_FOUND"] == 1


@pytest.mark.parametrize(
    ("code", "infos"),
    [
        (grpc.StatusCode.UNAVAILABLE, []),  # no ErrorInfo
        (grpc.StatusCode.CANCELLED, []),  # nobody cancelled: the soak was not stopping
        (grpc.StatusCode.INTERNAL, [info("SOMETHING_NEW")]),  # not a member of Reason
        (grpc.StatusCode.UNAVAILABLE, [info(Reason.CONTACT_NOT_FOUND)]),  # not the table's code
        (grpc.StatusCode.NOT_FOUND, [info(Reason.CONTACT_NOT_FOUND, "example.com")]),
        (grpc.StatusCode.NOT_FOUND, [info(Reason.CONTACT_NOT_FOUND)] * 2),
    ],
)
def test_undocumented_outcomes_are_counted(
    soak: ModuleType, code: grpc.StatusCode, infos: list[Any]
) -> None:
    seen = tally(soak)
    seen.record(code, infos)
    assert sum(seen.undocumented.values()) == 1


def test_gateway_bugs_are_counted_and_own_cancellations_are_not(soak: ModuleType) -> None:
    seen = tally(soak, stopping=True)
    seen.record(grpc.StatusCode.INTERNAL, [info(Reason.GATEWAY_INTERNAL)])
    seen.record(grpc.StatusCode.UNKNOWN)
    seen.record(grpc.StatusCode.CANCELLED)
    assert sum(seen.bugs.values()) == 2
    assert not seen.undocumented


def records(times: list[float], path: str = "/v1/contacts/18000000001/identity") -> list[Any]:
    return [{"time": t, "method": "GET", "path": path} for t in times]


def test_a_full_bucket_and_a_second_of_refill_is_within_the_limit(soak: ModuleType) -> None:
    limit = soak.RATE_LIMIT + soak.BURST
    burst = [1000.0] * soak.BURST + [1000.0 + k / soak.RATE_LIMIT for k in range(200)]
    up = soak.upstream_windows(records(burst), [], 1000.0, [])
    assert up["max_1s_window"] == limit
    assert up["within_limit"] is True


def test_a_window_over_rate_plus_burst_fails_unless_the_emulator_lagged(
    soak: ModuleType,
) -> None:
    crowd = [1000.0 + k / 1000 for k in range(soak.RATE_LIMIT + soak.BURST + 10)]
    strict = soak.upstream_windows(records(crowd), [], 1000.0, [(1000.0, 0.002)])
    assert strict["within_limit"] is False
    assert strict["worst_window_over_rate_plus_burst"]["requests"] == len(crowd)
    lagging = soak.upstream_windows(records(crowd), [], 1000.0, [(1000.2, 0.25)])
    assert lagging["within_limit"] is True  # 0.25 s of lag at 100/s explains 25 more
    assert lagging["busiest_window"]["allowed"] == soak.RATE_LIMIT + soak.BURST + 25
    # Without a measured lag, the stamps' jitter floor: 50 ms at 100/s.
    assert strict["busiest_window"]["allowed"] == soak.RATE_LIMIT + soak.BURST + 5


def test_logins_are_counted_beside_the_paced_requests(soak: ModuleType) -> None:
    paced = records([1000.0 + k / 1000 for k in range(soak.RATE_LIMIT + soak.BURST)])
    logins = records([1000.5] * 3, path=soak.LOGIN_PATH)
    up = soak.upstream_windows(paced + logins, [], 1000.0, [])
    assert up["within_limit"] is True
    assert up["logins"] == 3
    assert up["max_1s_window_with_logins"] == soak.RATE_LIMIT + soak.BURST + 3


def test_flatness(soak: ModuleType) -> None:
    assert soak.flatness([60.0, 70, 71, 70, 72, 71, 73, 72, 71], 7.0, True)["verdict"] == "flat"
    growing = soak.flatness([60.0, 62, 64, 66, 68, 70, 72, 74, 90], 7.0, True)
    assert growing["verdict"] == "GROWING"
    assert (growing["first"], growing["min"], growing["max"], growing["last"]) == (60, 60, 90, 90)
    assert soak.flatness([60.0, 90, 120], 7.0, True)["verdict"].startswith("not judged")
    assert soak.flatness([60.0] * 9 + [90.0], 7.0, False)["verdict"].startswith("not judged")


def test_a_twenty_second_run_meets_each_kind_of_fault(soak: ModuleType) -> None:
    # --duration 20: four 5 s phases, the first four of the cycle.
    kinds = {phase.kind for phase in soak.CYCLE[:4]}
    assert kinds == {"webhook", "redis-stop", "redis-kill", "upstream"}
    # --duration 300: fifteen 20 s phases, every one of the cycle.
    assert len(soak.CYCLE) <= 300 / soak.PHASE_SECONDS
