"""Where the upstream bearer token comes from (spec 4.3): a static token, or a login session.

    session = LoginSession(client.login)
    token = await session.token()            # logs in lazily, renews before expires_after
    token = await session.rejected(token)    # after a 401: one shared re-login, then the new token

A :class:`LoginSession` never logs in twice at once: concurrent needs share one login task, which
no cancelled caller can cancel. After a failed login it backs off exponentially (with jitter) and
fails fast meanwhile, because repeated failed logins lock WhatsApp accounts (code 1031).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.backends.onprem.parse import LoginToken
from gateway.failures import BackendFailure, Failure

log = logging.getLogger(__name__)

# Failures of a login that was never sent.
_NOT_SENT = frozenset({Failure.PACED, Failure.RATE_LIMITED, Failure.OVERLOADED})

# A token is renewed this long before it expires, or at half its life when that is sooner.
RENEW_MARGIN = 300.0
# A token claiming to live less than this (a skewed clock, say) is used this long anyway: the
# 401 path renews it if WhatsApp disagrees, and we never log in on every request.
MIN_LIFETIME = 1.0


class TokenSource(Protocol):
    """Gives the bearer token for upstream calls."""

    @property
    def can_renew(self) -> bool:
        """Whether :meth:`rejected` can produce a different token."""
        ...

    async def token(self) -> str:
        """A token believed valid now."""
        ...

    async def rejected(self, token: str) -> str:
        """``token`` was refused with a 401: a fresh token to retry with once."""
        ...

    def renewal_refused(self, token: str) -> None:
        """``token``, just obtained from :meth:`rejected`, was refused too (a 401 storm)."""
        ...

    async def aclose(self) -> None:
        """Stop any background work."""
        ...


class StaticToken:
    """A token managed outside the gateway; a 401 cannot be fixed here."""

    can_renew = False

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def rejected(self, token: str) -> str:
        return self._token

    def renewal_refused(self, token: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class LoginSession:
    """Tokens from ``POST /v1/users/login``, fetched lazily and renewed before they expire."""

    can_renew = True

    def __init__(
        self,
        login: Callable[[], Awaitable[LoginToken]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        on_login: Callable[[str], None] | None = None,
    ) -> None:
        self._login = login
        self._clock = clock
        self._wall_clock = wall_clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_login = on_login
        self._token: str | None = None
        self._expires_at = 0.0
        self._renew_at = 0.0
        self._task: asyncio.Task[str] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: BackendFailure | None = None

    async def token(self) -> str:
        now = self._clock()
        if self._token is not None and now < self._expires_at:
            if now >= self._renew_at and now >= self._retry_at:
                self._start_login()  # renew in the background; this token is still good
            return self._token
        return await self._wait_for_login()

    async def rejected(self, token: str) -> str:
        if self._token == token:
            # Only the first caller to report this token forgets it; concurrent callers with the
            # same stale token then share the one login it starts.
            self._token = None
        if self._token is not None:
            return self._token
        return await self._wait_for_login()

    def renewal_refused(self, token: str) -> None:
        # WhatsApp refuses even a token it has just issued. Logging in again for every request
        # would hammer the login endpoint; treat it as a failed login instead, so the backoff
        # applies and callers fail fast until it has passed.
        if self._token == token:
            self._token = None
            self._failed(
                BackendFailure(
                    Failure.AUTH,
                    "the gateway could not log in to WhatsApp: WhatsApp API answered HTTP 401: "
                    "a newly issued token was refused",
                    http_status=401,
                    login=True,
                )
            )

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendFailure):
                await self._task

    async def _wait_for_login(self) -> str:
        now = self._clock()
        if (self._task is None or self._task.done()) and now < self._retry_at:
            # Backing off: do not touch the account again yet. A fresh failure each time, so
            # no shared exception's traceback grows with every caller that fails fast.
            last = self._last_error
            assert last is not None
            wait = self._retry_at - now
            # A refused login is the gateway's credentials: UPSTREAM_AUTH_FAILED with when to
            # try again. A login that got no usable answer stays what it was (unreachable...).
            refused = last.kind is Failure.AUTH
            raise BackendFailure(
                Failure.LOGIN_BACKOFF if refused else last.kind,
                "the gateway's last login to WhatsApp failed; it logs in again in "
                f"{wait:.1f} s (the last failure: {_reason(last)})",
                retry_after=wait,
                login=last.login,
            ) from last
        return await asyncio.shield(self._start_login())

    def _start_login(self) -> asyncio.Task[str]:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._login_once())
            # A background renewal nobody awaits must not warn "exception never retrieved".
            self._task.add_done_callback(_retrieve_exception)
        return self._task

    async def _login_once(self) -> str:
        try:
            result = await self._login()
        except BackendFailure as error:
            # Held back by the gateway's own pace (or an upstream 429's pause): WhatsApp was not
            # asked, so the account is not at risk and there is nothing to back off from.
            if error.http_status is not None or error.kind not in _NOT_SENT:
                self._failed(error)
            raise
        self._failures = 0
        self._last_error = None
        self._retry_at = 0.0
        lifetime = (result.expires_at - self._wall_clock()).total_seconds()
        if lifetime < MIN_LIFETIME:
            log.warning(
                "WhatsApp's login token expires in %.0f s; is this host's clock right?", lifetime
            )
            lifetime = MIN_LIFETIME
        now = self._clock()
        self._token = result.token
        self._expires_at = now + lifetime
        self._renew_at = self._expires_at - min(RENEW_MARGIN, lifetime / 2)
        log.info("logged in to WhatsApp; token valid for %.0f s", lifetime)
        if self._on_login is not None:
            self._on_login("success")
        return result.token

    def _failed(self, error: BackendFailure) -> None:
        self._failures += 1
        ceiling = min(self._backoff_max, self._backoff_initial * 2 ** (self._failures - 1))
        # Jitter keeps replicas that failed together from retrying together.
        delay = random.uniform(ceiling / 2, ceiling)
        self._retry_at = self._clock() + delay
        self._last_error = error
        hint = _operator_hint(error)
        log.error("login to WhatsApp failed (%s); %s; next attempt in %.1f s", error, hint, delay)
        if self._on_login is not None:
            self._on_login("failure")


def _operator_hint(error: BackendFailure) -> str:
    """What an operator should do about a failed login."""
    if error.http_status is None or not error.login:
        return "WhatsApp is unreachable or did not answer properly"
    if error.upstream_code == 1024:
        return (
            "WhatsApp requires a password change for this user: change it, then update the "
            "gateway's password"
        )
    if error.upstream_code == 1031:
        return "WhatsApp has locked this account after failed logins"
    if error.http_status in (401, 403):
        return "check the gateway's upstream username and password"
    return "WhatsApp refused the login"


def _retrieve_exception(task: asyncio.Task[str]) -> None:
    if not task.cancelled():
        task.exception()


def _reason(error: BackendFailure) -> str:
    """The last failure, said without claiming WhatsApp was asked again."""
    if error.http_status is None:  # no answer: its own words say so ("... unreachable: ...")
        return error.message or error.kind.value.replace("_", " ")
    reason = f"HTTP {error.http_status}"
    if error.upstream_code is not None:
        reason += f", code {error.upstream_code}"
    return reason
