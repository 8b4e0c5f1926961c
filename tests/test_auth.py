"""Upstream authentication (spec 4.3): lazy login, renewal, one shared re-login, backoff."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import traceback

import pytest
from google.rpc import error_details_pb2

from gateway.backends.onprem.login import LoginSession, StaticToken
from gateway.backends.onprem.parse import LoginToken
from gateway.failures import BackendFailure, Failure
from gateway.serving.status import to_status

EPOCH = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def refused_login(code: int) -> BackendFailure:
    """What the backend raises when WhatsApp refuses the login with a 401 and ``code``."""
    return BackendFailure(
        Failure.AUTH,
        "the gateway could not log in to WhatsApp: "
        f"WhatsApp API answered HTTP 401 with code {code}",
        http_status=401,
        upstream_code=code,
        login=True,
    )


class Clocks:
    """A monotonic and a wall clock that move together, by hand."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return self.elapsed

    def wall(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.elapsed)


class FakeLogin:
    """Answers logins with numbered tokens living ``lifetime`` seconds, or with failures."""

    def __init__(self, clocks: Clocks, lifetime: float = 7 * 24 * 3600) -> None:
        self.clocks = clocks
        self.lifetime = lifetime
        self.calls = 0
        self.fail_with: BackendFailure | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> LoginToken:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        expires = self.clocks.wall() + dt.timedelta(seconds=self.lifetime)
        return LoginToken(token=f"token-{self.calls}", expires_at=expires)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def session_for(login: FakeLogin, clocks: Clocks) -> LoginSession:
    return LoginSession(login, clock=clocks.monotonic, wall_clock=clocks.wall)


async def test_login_happens_lazily_on_first_need(clocks: Clocks) -> None:
    login = FakeLogin(clocks)
    session = session_for(login, clocks)
    assert login.calls == 0
    assert await session.token() == "token-1"
    assert await session.token() == "token-1"
    assert login.calls == 1


async def test_concurrent_needs_share_one_login(clocks: Clocks) -> None:
    login = FakeLogin(clocks)
    login.gate = asyncio.Event()
    session = session_for(login, clocks)
    waiting = [asyncio.create_task(session.token()) for _ in range(50)]
    await asyncio.sleep(0)
    login.gate.set()
    assert set(await asyncio.gather(*waiting)) == {"token-1"}
    assert login.calls == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_login(clocks: Clocks) -> None:
    login = FakeLogin(clocks)
    login.gate = asyncio.Event()
    session = session_for(login, clocks)
    first = asyncio.create_task(session.token())
    second = asyncio.create_task(session.token())
    await asyncio.sleep(0)
    first.cancel()
    login.gate.set()
    assert await second == "token-1"
    assert login.calls == 1


async def test_the_token_is_renewed_before_it_expires(clocks: Clocks) -> None:
    login = FakeLogin(clocks, lifetime=3600)
    session = session_for(login, clocks)
    assert await session.token() == "token-1"

    clocks.elapsed = 3600 - 301  # more than the 300 s margin left: no renewal yet
    assert await session.token() == "token-1"
    assert login.calls == 1

    clocks.elapsed = 3600 - 299  # inside the margin: renew in the background, keep serving
    assert await session.token() == "token-1"
    await asyncio.sleep(0)
    assert login.calls == 2
    assert await session.token() == "token-2"


async def test_an_expired_token_is_never_used(clocks: Clocks) -> None:
    login = FakeLogin(clocks, lifetime=10)
    session = session_for(login, clocks)
    assert await session.token() == "token-1"
    clocks.elapsed = 11
    assert await session.token() == "token-2"


async def test_a_rejected_token_causes_exactly_one_relogin_for_all_callers(clocks: Clocks) -> None:
    login = FakeLogin(clocks)
    session = session_for(login, clocks)
    stale = await session.token()
    login.gate = asyncio.Event()

    renewals = [asyncio.create_task(session.rejected(stale)) for _ in range(20)]
    await asyncio.sleep(0)
    login.gate.set()

    assert set(await asyncio.gather(*renewals)) == {"token-2"}
    assert login.calls == 2
    # A late report of the old token does not log in again.
    assert await session.rejected(stale) == "token-2"
    assert login.calls == 2


async def test_failed_logins_back_off_instead_of_retrying_at_once(clocks: Clocks) -> None:
    login = FakeLogin(clocks)
    login.fail_with = refused_login(1005)
    session = session_for(login, clocks)

    with pytest.raises(BackendFailure) as first:
        await session.token()
    assert first.value is login.fail_with  # the login's own failure
    for _ in range(9):
        with pytest.raises(BackendFailure) as raised:
            await session.token()
        # A fresh failure for each caller, chained to the login's, saying when to try again.
        assert raised.value is not login.fail_with
        assert raised.value.__cause__ is login.fail_with
        assert raised.value.kind is Failure.LOGIN_BACKOFF
        assert raised.value.retry_after is not None
        assert 0 < raised.value.retry_after <= 1.0
    assert login.calls == 1  # the other nine failed fast during the backoff

    clocks.elapsed += 1.0  # the first backoff is at most 1 s
    login.fail_with = None
    assert await session.token() == "token-2"


async def test_backoff_grows_with_consecutive_failures(clocks: Clocks) -> None:
    login = FakeLogin(clocks)
    login.fail_with = refused_login(1031)
    session = session_for(login, clocks)
    attempts_at: list[float] = []
    while clocks.elapsed < 100:
        calls_before = login.calls
        with pytest.raises(BackendFailure):
            await session.token()
        if login.calls > calls_before:
            attempts_at.append(clocks.elapsed)
        clocks.elapsed += 0.05
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert len(attempts_at) <= 9  # 1, 2, 4, ... 60 s ceilings with jitter: a handful in 100 s
    assert gaps[-1] > gaps[0]
    assert all(gap >= 0.5 for gap in gaps)


async def test_a_token_claiming_to_be_expired_is_still_used_briefly(clocks: Clocks) -> None:
    login = FakeLogin(clocks, lifetime=-3600)  # a badly skewed clock
    session = session_for(login, clocks)
    assert await session.token() == "token-1"
    assert await session.token() == "token-1"
    assert login.calls == 1


async def test_a_static_token_is_never_renewed() -> None:
    source = StaticToken("static-abc")
    assert source.can_renew is False
    assert await source.token() == "static-abc"
    assert await source.rejected("static-abc") == "static-abc"


async def test_callers_failing_fast_during_backoff_get_a_retry_delay_and_no_growing_traceback(
    clocks: Clocks,
) -> None:
    """Each caller gets UPSTREAM_AUTH_FAILED with a RetryInfo for the next login, a message
    that does not claim WhatsApp answered it, and an exception of its own: re-raising one
    shared exception grew its traceback by frames for every caller."""
    login = FakeLogin(clocks)
    login.fail_with = refused_login(1005)
    session = session_for(login, clocks)
    with pytest.raises(BackendFailure):
        await session.token()
    depths = []
    for _ in range(200):
        try:
            await session.token()
        except BackendFailure as error:
            depths.append(len(traceback.extract_tb(error.__traceback__)))
            cause = error.__cause__
            assert cause is not None
            depths.append(len(traceback.extract_tb(cause.__traceback__)))
            last = error
    status = to_status(last)
    [info] = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    reason = error_details_pb2.ErrorInfo()
    info.Unpack(reason)

    assert max(depths) < 10
    assert reason.reason == "UPSTREAM_AUTH_FAILED"
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    assert "answered" not in status.message
    assert "logs in again in" in status.message


async def test_a_login_the_gateway_held_back_is_no_failed_login(clocks: Clocks) -> None:
    """A login refused by the gateway's own pace never reached WhatsApp: no backoff follows,
    and the next caller logs in at once."""
    login = FakeLogin(clocks)
    login.fail_with = BackendFailure(Failure.PACED, "the next request slot is 1 s away")
    session = session_for(login, clocks)
    with pytest.raises(BackendFailure) as held:
        await session.token()
    login.fail_with = None

    assert held.value.kind is Failure.PACED
    assert await session.token() == "token-2"
    assert login.calls == 2
