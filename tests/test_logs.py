"""JSON log lines: the formatter, masking, and the per-RPC access line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.telemetry.logs import (
    AccessLog,
    JsonFormatter,
    RateLimitedLog,
    RequestIds,
    mask_wa_id,
    request_id,
)


@pytest.mark.parametrize(
    ("wa_id", "masked"),
    [("16315551234", "*******1234"), ("123456", "**3456"), ("1234", "****"), ("", "")],
)
def test_a_wa_id_is_masked_to_its_last_four_digits(wa_id: str, masked: str) -> None:
    assert mask_wa_id(wa_id) == masked


@pytest.mark.parametrize(
    "caller_request_id",
    ["plain-id", 'quote"inside', "back\\slash", "new\nline", "tab\there", "snow☃", "\x00\x1f"],
)
def test_the_access_line_is_valid_json_whatever_the_request_id(caller_request_id: str) -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    at = 1_790_000_000.25
    access.rpc("GetIdentity", "OK", None, 0.00123, "hit", None, "16315551234", caller_request_id,
               at)  # fmt: skip
    access.rpc("AcknowledgeIdentity", "FAILED_PRECONDITION", "HASH_MISMATCH", 0.2, None, 409,
               None, "x", at)  # fmt: skip
    access.flush()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "time": "2026-09-21T14:13:20.250+00:00",
        "level": "info",
        "logger": "gateway.rpc",
        "message": "GetIdentity OK",
        "request_id": caller_request_id,
        "method": "GetIdentity",
        "code": "OK",
        "reason": None,
        "latency_ms": 1.23,
        "cache": "hit",
        "upstream_status": None,
        "wa_id": "*******1234",
    }
    assert (second["reason"], second["upstream_status"], second["wa_id"]) == (
        "HASH_MISMATCH",
        409,
        None,
    )


def test_the_access_log_writes_only_when_flushed() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    for _ in range(2):
        access.rpc("GetIdentity", "OK", None, 0.001, "hit", None, "16315551234", "r", 1e9)
    assert stream.getvalue() == ""
    access.flush()
    assert len(stream.getvalue().splitlines()) == 2


def test_request_ids_are_unique() -> None:
    ids = RequestIds()
    assert len({ids.new() for _ in range(10_000)}) == 10_000


def test_a_log_line_carries_the_rpc_request_id_and_its_fields() -> None:
    record = logging.LogRecord(
        "gateway.backends.onprem.login", logging.INFO, __file__, 1, "logged %s", ("in",), None
    )
    record.fields = {"port": 50051, "time": "not the real time"}
    token = request_id.set("req-7")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert line["message"] == "logged in"
    assert line["request_id"] == "req-7"
    assert line["port"] == 50051
    assert line["field_time"] == "not the real time"  # a reserved key is never overwritten


def test_a_rate_limited_log_writes_one_line_a_second_per_kind_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), interval=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        for _ in range(300):
            limited.warning("refused", "refused a push from %s", "10.0.0.1")
        limited.warning("other", "another kind")
        now[0] += 1.0
        limited.warning("refused", "refused a push from %s", "10.0.0.2")

    assert [record.getMessage() for record in caplog.records] == [
        "refused a push from 10.0.0.1",
        "another kind",
        "refused a push from 10.0.0.2 (and 299 more like it since the last such line)",
    ]
