"""The On-Premises backend over httpx.MockTransport: requests sent, answers read, failures typed."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.backends.http import MAX_RESPONSE_BYTES, HttpUpstream
from gateway.backends.onprem.client import OnPremBackend
from gateway.deadline import NO_DEADLINE, Deadline
from gateway.failures import BackendFailure, DeadlineExceeded, Failure

WA_ID = "16315551234"
BASE_URL = "https://wa.test"
IDENTITY_BODY = {
    "contacts": {"hash": "UKD6Y/5SqDU=", "created_timestamp": 1600132094000, "acknowledged": True}
}
LOGIN_BODY = {"users": [{"token": "jwt-{n}", "expires_after": "2099-03-01 15:29:26+00:00"}]}

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Upstream:
    """Records requests; answers logins with numbered tokens and identity calls via ``answer``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.logins = 0
        self.answer: Handler = self._identity

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/users/login":
            self.logins += 1
            body = json.loads(json.dumps(LOGIN_BODY).replace("{n}", str(self.logins)))
            return httpx.Response(200, json=body)
        return await self.answer(request)

    @staticmethod
    async def _identity(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=IDENTITY_BODY)

    def identity_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.startswith("/v1/contacts/")]


def make_backend(
    upstream: Upstream, *, token: str | None = None, request_timeout: float = 5.0
) -> OnPremBackend:
    http = HttpUpstream(
        httpx.MockTransport(upstream), base_url=BASE_URL, request_timeout=request_timeout
    )
    if token is not None:
        return OnPremBackend(http, token=token)
    return OnPremBackend(http, username="admin", password="s3cret")


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


async def test_get_identity_sends_a_bearer_token_from_login(upstream: Upstream) -> None:
    async with make_backend(upstream) as backend:
        identity = await backend.get_identity(WA_ID, deadline=NO_DEADLINE)

    assert (identity.hash, identity.create_time_ms, identity.acknowledged) == (
        "UKD6Y/5SqDU=",
        1600132094000,
        True,
    )
    login, get = upstream.requests
    assert login.method == "POST"
    assert login.headers["authorization"] == "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert (get.method, get.url.path) == ("GET", f"/v1/contacts/{WA_ID}/identity")
    assert get.headers["authorization"] == "Bearer jwt-1"


async def test_requests_carry_the_base_urls_path_user_agent_and_timeouts(
    upstream: Upstream,
) -> None:
    http = HttpUpstream(
        httpx.MockTransport(upstream), base_url="https://wa.test/api/", request_timeout=3.5
    )
    async with OnPremBackend(http, token="static") as backend:
        await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    [request] = upstream.requests
    assert str(request.url) == f"https://wa.test/api/v1/contacts/{WA_ID}/identity"
    assert request.headers["user-agent"].startswith("whatsapp-identity-gateway/")
    assert request.headers["accept"] == "application/json"
    assert request.extensions["timeout"] == httpx.Timeout(3.5).as_dict()


async def test_trace_headers_are_copied_onto_the_upstream_request(upstream: Upstream) -> None:
    trace = {"x-request-id": "req-1", "traceparent": "00-abc-def-01", "x-b3-sampled": "1"}
    async with make_backend(upstream, token="static") as backend:
        await backend.get_identity(WA_ID, deadline=NO_DEADLINE, trace=trace)
    [request] = upstream.identity_requests()
    for name, value in trace.items():
        assert request.headers[name] == value


async def test_acknowledge_puts_the_hash_as_json(upstream: Upstream) -> None:
    async def accept(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"null")

    upstream.answer = accept
    async with make_backend(upstream, token="static") as backend:
        status = await backend.acknowledge(WA_ID, "UKD6Y/5SqDU=", deadline=NO_DEADLINE)
    [put] = upstream.identity_requests()
    assert status == 200
    assert put.method == "PUT"
    assert json.loads(put.content) == {"hash": "UKD6Y/5SqDU="}
    assert put.headers["content-type"] == "application/json"
    assert put.headers["authorization"] == "Bearer static"


async def test_a_401_logs_in_again_once_and_retries(upstream: Upstream) -> None:
    async def expire_first_token(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer jwt-1":
            return httpx.Response(401)
        return httpx.Response(200, json=IDENTITY_BODY)

    upstream.answer = expire_first_token
    async with make_backend(upstream) as backend:
        await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert upstream.logins == 2
    assert [r.headers["authorization"] for r in upstream.identity_requests()] == [
        "Bearer jwt-1",
        "Bearer jwt-2",
    ]


async def test_a_second_401_after_the_relogin_is_an_auth_failure(upstream: Upstream) -> None:
    async def always_401(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    upstream.answer = always_401
    async with make_backend(upstream) as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert (raised.value.kind, raised.value.http_status) == (Failure.AUTH, 401)
    assert upstream.logins == 2
    assert len(upstream.identity_requests()) == 2


async def test_a_static_token_is_not_retried_after_a_401(upstream: Upstream) -> None:
    async def always_401(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    upstream.answer = always_401
    async with make_backend(upstream, token="static") as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert (raised.value.kind, raised.value.http_status) == (Failure.AUTH, 401)
    assert upstream.logins == 0
    assert len(upstream.identity_requests()) == 1


async def test_a_refused_login_is_a_login_failure_with_whatsapps_code(upstream: Upstream) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        body = {"errors": [{"code": 1024, "title": "Password change required"}]}
        return httpx.Response(401, json=body)

    http = HttpUpstream(httpx.MockTransport(refuse), base_url=BASE_URL, request_timeout=5)
    async with OnPremBackend(http, username="admin", password="s3cret") as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    error = raised.value
    assert (error.kind, error.login) == (Failure.AUTH, True)
    assert (error.http_status, error.upstream_code) == (401, 1024)
    assert str(error) == (
        "the gateway could not log in to WhatsApp: "
        "WhatsApp API answered HTTP 401 with code 1024: Password change required"
    )


async def test_error_answers_carry_status_code_title_and_retry_after(upstream: Upstream) -> None:
    async def rate_limited(request: httpx.Request) -> httpx.Response:
        body = {"errors": [{"code": 1015, "title": "Too many requests", "details": "x"}]}
        return httpx.Response(429, json=body, headers={"Retry-After": "7"})

    upstream.answer = rate_limited
    async with make_backend(upstream, token="static") as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    error = raised.value
    assert (error.kind, error.http_status, error.upstream_code, error.retry_after) == (
        Failure.RATE_LIMITED,
        429,
        1015,
        7.0,
    )
    assert str(error) == "WhatsApp API answered HTTP 429 with code 1015: Too many requests"


async def test_an_oversized_answer_is_refused_without_reading_it_all(upstream: Upstream) -> None:
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        while chunks_sent < 10_000:
            chunks_sent += 1
            yield b"x" * 65536

    async def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())  # streamed, no Content-Length

    upstream.answer = huge
    async with make_backend(upstream, token="static") as backend:
        with pytest.raises(BackendFailure, match="larger than") as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.BAD_ANSWER
    assert chunks_sent <= MAX_RESPONSE_BYTES // 65536 + 2


async def test_a_declared_oversized_answer_is_refused(upstream: Upstream) -> None:
    async def declared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(10 * MAX_RESPONSE_BYTES)})

    upstream.answer = declared
    async with make_backend(upstream, token="static") as backend:
        with pytest.raises(BackendFailure, match="larger than") as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.BAD_ANSWER


async def test_a_connection_failure_is_a_transport_error_without_the_url(
    upstream: Upstream,
) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused to https://wa.test/secret-path")

    upstream.answer = refuse
    async with make_backend(upstream, token="static") as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.UNREACHABLE
    assert "wa.test" not in str(raised.value)
    assert "secret" not in str(raised.value)


async def test_a_slow_upstream_is_an_upstream_timeout(upstream: Upstream) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200, json=IDENTITY_BODY)

    upstream.answer = slow
    async with make_backend(upstream, token="static", request_timeout=0.05) as backend:
        with pytest.raises(BackendFailure) as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert raised.value.kind is Failure.TIMEOUT


async def test_a_caller_deadline_shorter_than_the_cap_is_a_deadline_error(
    upstream: Upstream,
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200, json=IDENTITY_BODY)

    upstream.answer = slow
    async with make_backend(upstream, token="static", request_timeout=5) as backend:
        deadline = Deadline.after(0.05)
        with pytest.raises(DeadlineExceeded):
            async with deadline.bound():
                await backend.get_identity(WA_ID, deadline=deadline)


async def test_a_non_200_success_on_get_is_a_bad_response(upstream: Upstream) -> None:
    async def no_content(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    upstream.answer = no_content
    async with make_backend(upstream, token="static") as backend:
        with pytest.raises(BackendFailure, match="unexpected success status 204") as raised:
            await backend.get_identity(WA_ID, deadline=NO_DEADLINE)
    assert (raised.value.kind, raised.value.http_status) == (Failure.BAD_ANSWER, 204)
