"""The RPC journal: entries noted in the request path become metrics and access lines later."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import threading
import time

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.serving.journal import JournalEntry, RpcJournal, new_entry
from gateway.serving.status import Reason
from gateway.telemetry.logs import AccessLog
from gateway.telemetry.metrics import Metrics

OK, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND


class Context:
    """What the journal uses of an RPC's grpc.aio context."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def hit(
    request_id: str | None = None, context: Context | None = None, cache: str = "hit"
) -> JournalEntry:
    ended = time.perf_counter()
    # built as the cache-hit path builds it: from a plain tuple of the fields in order
    return new_entry(("GetIdentity", OK, None, 0.0004, cache, None, "16315551234", request_id,
                      context, ended))  # fmt: skip


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def handled(metrics: Metrics, code: str = "OK", method: str = "GetIdentity") -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "whatsapp.identity.v1.IdentityService",
        "grpc_method": method,
        "grpc_code": code,
    }
    return samples(metrics).get(("grpc_server_handled_total", tuple(sorted(labels.items()))), 0)


def cache_count(metrics: Metrics, name: str) -> float:
    return samples(metrics)[(f"identity_gateway_{name}_total", ())]


def journal_with_log() -> tuple[RpcJournal, Metrics, io.StringIO]:
    stream = io.StringIO()
    access = AccessLog(stream)
    access.enabled = True
    metrics = Metrics()
    return RpcJournal(metrics, access), metrics, stream


def test_entries_are_counted_and_logged_only_when_folded() -> None:
    journal, _, stream = journal_with_log()
    journal.record(hit("caller-1"))
    a_minute_ago = time.perf_counter() - 60
    journal.record(
        JournalEntry("GetIdentity", NOT_FOUND, Reason.CONTACT_NOT_FOUND, 0.3, "miss", 404,
                     "16315550000", "caller-2", None, a_minute_ago)
    )  # fmt: skip
    assert stream.getvalue() == ""
    journal.fold()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["request_id"], first["cache"]) == ("caller-1", "hit")
    # each line has the time its RPC ended, not the time it was folded
    times = [dt.datetime.fromisoformat(line["time"]).timestamp() for line in (first, second)]
    assert abs(times[0] - time.time()) < 5
    assert abs(times[1] - (time.time() - 60)) < 5
    assert (second["code"], second["reason"], second["upstream_status"], second["wa_id"]) == (
        "NOT_FOUND",
        "CONTACT_NOT_FOUND",
        404,
        "*******0000",
    )
    assert len(journal) == 0


def test_a_scrape_counts_what_is_pending() -> None:
    journal, metrics, _ = journal_with_log()
    for _ in range(3):
        journal.record(hit("r"))
    journal.record(hit("r", cache="joined"))
    assert handled(metrics) == 4  # the exposition folded first
    assert cache_count(metrics, "cache_hits") == 3
    assert cache_count(metrics, "cache_misses") == 1  # a joined read is a miss...
    assert cache_count(metrics, "singleflight_joins") == 1  # ...that joined a flight


def test_without_a_request_id_the_callers_header_or_a_new_one_is_logged() -> None:
    journal, _, stream = journal_with_log()
    journal.record(hit(None, Context(("user-agent", "x"), ("x-request-id", "from-caller"))))
    journal.record(hit(None, Context(("user-agent", "x"))))
    journal.record(hit(None, None))
    journal.fold()
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids[0] == "from-caller"
    assert ids[1] != ids[2]
    assert "from-caller" not in ids[1:]


def test_with_the_access_log_off_entries_are_still_counted() -> None:
    metrics = Metrics()
    access = AccessLog(io.StringIO())
    access.enabled = False
    journal = RpcJournal(metrics, access)
    journal.record(hit("r"))
    journal.fold()
    assert handled(metrics) == 1
    assert access._lines == []


def test_no_entry_is_lost_while_another_thread_scrapes() -> None:
    journal, metrics, stream = journal_with_log()
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            generate_latest(metrics.registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(50_000):
            journal.record(hit("r"))
    finally:
        done.set()
        scraper.join()
    journal.fold()
    assert handled(metrics) == 50_000
    assert len(stream.getvalue().splitlines()) == 50_000


async def test_run_folds_periodically_and_on_cancel() -> None:
    journal, _, stream = journal_with_log()
    journal._interval = 0.01
    task = asyncio.ensure_future(journal.run())
    journal.record(hit("r"))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if stream.getvalue():
            break
    assert len(stream.getvalue().splitlines()) == 1
    journal.record(hit("r"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(stream.getvalue().splitlines()) == 2  # the last entries are not lost


async def test_a_fold_that_fails_is_logged_and_the_next_entries_are_still_folded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal, _, stream = journal_with_log()
    journal._interval = 0.01
    task = asyncio.ensure_future(journal.run())
    broken = new_entry(
        ("GetIdentity", None, None, 0.1, "hit", None, None, "r", None, time.perf_counter())
    )
    journal.record(broken)  # no status code: counting it fails
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "could not count or log" in caplog.text:
            break
    journal.record(hit("after"))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if stream.getvalue():
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "could not count or log finished RPCs" in caplog.text
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["after"]
