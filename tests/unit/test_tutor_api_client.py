"""The API client's retry policy, Retry-After, breaker integration, headers and metrics.

httpx.MockTransport stands in for the network here: these tests are about our retry and breaker
logic, not the API (the end-to-end tests run against the reference API).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from loqua_tutor.api_client import ApiError, LoquaApiClient, parse_retry_after
from loqua_tutor.breaker import BreakerState, CircuitBreaker, CircuitOpenError
from loqua_tutor.contract import Performance, ProgressStatus, SessionRecord
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.scoring import progress_update
from loqua_tutor.state import ProgressSnapshot

AGENT_TOKEN = "agent.jwt.token"
UPDATE = progress_update("u1", "sess_1_a", ProgressStatus.IN_PROGRESS, ProgressSnapshot())
RECORD = SessionRecord(
    userId="u1",
    sessionId="sess_1_a",
    duration_minutes=1,
    topics_covered=["conversation"],
    new_vocabulary=[],
    grammar_points=[],
    pronunciation_practice_count=0,
    overall_performance=Performance.FAIR,
    achievements=[],
    next_session_recommendations=[],
)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Tokens:
    def __init__(self) -> None:
        self.token = "user.jwt.one"
        self.forced = 0

    async def get(self) -> str:
        return self.token

    async def refused(self, token: str) -> str:
        self.forced += 1
        self.token = "user.jwt.two"
        return self.token


def make_client(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    breaker: CircuitBreaker | None = None,
    max_retries: int = 3,
) -> tuple[LoquaApiClient, Sleeps, JobMetrics, Tokens]:
    sleeps, metrics, tokens = Sleeps(), JobMetrics(CollectorRegistry()), Tokens()
    client = LoquaApiClient(
        "http://api.test",
        agent_id="tutor-1",
        agent_token=AGENT_TOKEN,
        breaker=breaker or CircuitBreaker(failure_threshold=100),
        metrics=metrics,
        user_tokens=tokens,
        max_retries=max_retries,
        retry_base=0.5,
        retry_max=8.0,
        sleep=sleeps,
        transport=httpx.MockTransport(handler),
    )
    return client, sleeps, metrics, tokens


def sequence(
    *responses: httpx.Response | Exception,
) -> tuple[Callable[[httpx.Request], httpx.Response], list]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses[min(len(seen) - 1, len(responses) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def ok(body: dict | None = None) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else {"success": True})


def count(metrics: JobMetrics, endpoint: str, status: str, method: str = "POST") -> float:
    return metrics.api_requests.labels(endpoint, method, status)._value.get()


async def test_headers_body_and_templated_metric_label() -> None:
    handler, seen = sequence(ok({"user_id": "u/1", "encrypted_token": "00:00"}))
    client, _, metrics, _ = make_client(handler)
    await client.get_user_context("u/1")
    await client.request_user_token(room_name="room-1", user_id="u/1")
    ctx_req, token_req = seen
    assert ctx_req.url.raw_path == b"/api/v1/agent/user/u%2F1/context"
    assert ctx_req.headers["Authorization"] == "Bearer user.jwt.one"
    assert token_req.headers["Authorization"] == f"Bearer {AGENT_TOKEN}"
    for req in seen:
        assert req.headers["X-Agent-ID"] == "tutor-1" and req.headers["Content-Type"] == "application/json"
    assert json.loads(token_req.content) == {"room_name": "room-1", "user_id": "u/1", "agent_id": "tutor-1"}
    assert count(metrics, "/api/v1/agent/user/{user_id}/context", "200", "GET") == 1
    await client.aclose()


async def test_retries_5xx_with_exponential_backoff_then_succeeds() -> None:
    handler, seen = sequence(httpx.Response(503), httpx.Response(500), httpx.Response(502), ok())
    client, sleeps, metrics, _ = make_client(handler)
    assert (await client.update_progress(UPDATE)).success
    assert len(seen) == 4
    # initial * 2**n plus jitter in [0, initial]
    for delay, base in zip(sleeps.delays, (0.5, 1.0, 2.0), strict=True):
        assert base <= delay <= base + 0.5
    assert count(metrics, "/api/v1/agent/progress", "503") == 1
    assert count(metrics, "/api/v1/agent/progress", "200") == 1


async def test_at_most_three_retries() -> None:
    handler, seen = sequence(httpx.Response(503))
    client, sleeps, _, _ = make_client(handler)
    with pytest.raises(ApiError) as info:
        await client.update_progress(UPDATE)
    assert info.value.status == 503 and len(seen) == 4 and len(sleeps.delays) == 3


async def test_network_errors_are_retried() -> None:
    handler, seen = sequence(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok())
    client, _, metrics, _ = make_client(handler)
    await client.health("u1")
    assert len(seen) == 3
    assert count(metrics, "/api/v1/agent/health", "error") == 2


async def test_429_honours_retry_after_seconds() -> None:
    handler, seen = sequence(httpx.Response(429, headers={"Retry-After": "7"}), ok())
    client, sleeps, _, _ = make_client(handler)
    await client.create_session(RECORD)
    assert sleeps.delays == [7.0] and len(seen) == 2


async def test_429_retry_after_is_capped_and_falls_back_to_backoff() -> None:
    handler, _ = sequence(httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(429), ok())
    client, sleeps, _, _ = make_client(handler)
    await client.create_session(RECORD)
    assert sleeps.delays[0] == 30.0 and 1.0 <= sleeps.delays[1] <= 1.5


@pytest.mark.parametrize("user_id", ["..", ".", ""])
async def test_dot_segments_never_reach_a_url(user_id: str) -> None:
    handler, seen = sequence(ok())
    client, _, _, _ = make_client(handler)
    with pytest.raises(ValueError, match="URL path"):
        await client.get_user_context(user_id)
    assert seen == []
    # Why it matters: httpx itself drops the dot segment that quote() lets through.
    assert httpx.URL("http://api.test/api/v1/agent/user/../context").path == "/api/v1/agent/context"


async def test_503_honours_retry_after_too(caplog: pytest.LogCaptureFixture) -> None:
    handler, seen = sequence(httpx.Response(503, headers={"Retry-After": "4"}), httpx.Response(503), ok())
    client, sleeps, _, _ = make_client(handler)
    with caplog.at_level(logging.DEBUG, logger="loqua_tutor.api_client"):
        await client.update_progress(UPDATE)
    assert sleeps.delays[0] == 4.0 and len(seen) == 3
    # The log names each wait and where it came from (the e2e test reads these lines).
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert waits[0].startswith("retrying POST /api/v1/agent/progress in 4.0s (Retry-After; attempt 1): ")
    assert waits[1].startswith(f"retrying POST /api/v1/agent/progress in {sleeps.delays[1]:.1f}s (backoff; attempt 2)")


GARBAGE_RETRY_AFTER = ["\u00b2", "\u0661", "1.5", "-3", "", "   ", "soon", "Wed, 99 Foo 2015 07:28:10 GMT", "9" * 400]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("value", GARBAGE_RETRY_AFTER)
async def test_any_retry_after_value_is_safe(status: int, value: str) -> None:
    """A header that is not delta-seconds nor an HTTP date is ignored: the backoff applies."""
    handler, seen = sequence(httpx.Response(status, headers={"Retry-After": value.encode("utf-8")}), ok())
    client, sleeps, _, _ = make_client(handler)
    await client.update_progress(UPDATE)
    assert len(seen) == 2 and len(sleeps.delays) == 1 and 0.5 <= sleeps.delays[0] <= 1.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412500.0) == 0.0  # in the past
    for garbage in ("soon", None, "", "\u00b2", "\u0661\u0662", "1e3", "-1", "1.5", "Mon, 32 Dec 9999 99:99:99 GMT"):
        assert parse_retry_after(garbage) is None, garbage


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_no_retry_on_other_4xx(status: int) -> None:
    body = {"error": {"code": "MISSING_USER_ID", "message": "userId is required"}}
    handler, seen = sequence(httpx.Response(status, json=body))
    client, sleeps, metrics, _ = make_client(handler)
    with pytest.raises(ApiError) as info:
        await client.request_user_token(room_name="r", user_id="u")  # agent auth: no refresh retry
    assert info.value.status == status and info.value.code == "MISSING_USER_ID"
    assert len(seen) == 1 and sleeps.delays == []
    assert metrics.auth_failures._value.get() == (1 if status in (401, 403) else 0)


async def test_cancelled_attempt_in_half_open_releases_the_trial_slot() -> None:
    """A hung half-open trial cancelled at session end must not keep the breaker refusing."""
    import asyncio

    clock = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=lambda: clock[0])
    breaker.record_failure()
    clock[0] = 5.0
    assert breaker.state == BreakerState.HALF_OPEN
    hang = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if not hang.is_set():
            hang.set()
            await asyncio.sleep(3600)
        return ok()

    client = LoquaApiClient(
        "http://api.test",
        agent_id="tutor-1",
        agent_token=AGENT_TOKEN,
        breaker=breaker,
        user_tokens=Tokens(),
        transport=httpx.MockTransport(handler),
    )
    task = asyncio.create_task(client.update_progress(UPDATE))
    await hang.wait()
    assert breaker.trials_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.trials_in_flight == 0 and breaker.state == BreakerState.HALF_OPEN
    await client.create_session(RECORD)  # the next call is let through as the trial, and closes it
    assert breaker.state == BreakerState.CLOSED
    await client.aclose()


async def test_forced_call_goes_out_while_the_breaker_is_open() -> None:
    handler, seen = sequence(ok())
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=3600)
    breaker.record_failure()
    client, _, _, _ = make_client(handler, breaker=breaker)
    with pytest.raises(CircuitOpenError):
        await client.create_session(RECORD)
    assert seen == []
    await client.create_session(RECORD, force=True)
    assert len(seen) == 1 and breaker.state == BreakerState.CLOSED


async def test_401_on_user_endpoint_refreshes_token_once() -> None:
    handler, seen = sequence(httpx.Response(401), ok())
    client, _, _, tokens = make_client(handler)
    await client.update_progress(UPDATE)
    assert tokens.forced == 1
    assert [r.headers["Authorization"] for r in seen] == ["Bearer user.jwt.one", "Bearer user.jwt.two"]


async def test_breaker_opens_on_failures_and_fails_fast() -> None:
    clock = [0.0]
    breaker = CircuitBreaker(failure_threshold=4, reset_timeout=30, clock=lambda: clock[0])
    handler, seen = sequence(httpx.Response(503))
    client, _, metrics, _ = make_client(handler, breaker=breaker)
    with pytest.raises(ApiError):
        await client.update_progress(UPDATE)  # 4 attempts, 4 failures: opens
    assert breaker.state == BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await client.update_progress(UPDATE)
    assert len(seen) == 4  # the second call never reached the network
    assert count(metrics, "/api/v1/agent/progress", "circuit_open") == 1
    clock[0] = 30.0
    handler_ok, _ = sequence(ok())
    client._client._transport = httpx.MockTransport(handler_ok)  # the API is back
    await client.update_progress(UPDATE)
    assert breaker.state == BreakerState.CLOSED


async def test_4xx_counts_as_the_api_being_up() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    handler, _ = sequence(httpx.Response(503), httpx.Response(404))
    client, _, _, _ = make_client(handler, breaker=breaker, max_retries=1)
    with pytest.raises(ApiError):
        await client.update_progress(UPDATE)
    assert breaker.state == BreakerState.CLOSED


async def test_errors_never_carry_tokens() -> None:
    handler, _ = sequence(httpx.ConnectError(f"boom Bearer {AGENT_TOKEN}"))
    client, _, _, _ = make_client(handler, max_retries=0)
    with pytest.raises(ApiError) as info:
        await client.request_user_token(room_name="r", user_id="u")
    assert AGENT_TOKEN not in str(info.value) and "ConnectError" in str(info.value)


async def test_non_json_success_is_an_error() -> None:
    handler, _ = sequence(httpx.Response(200, text="<html>"))
    client, _, _, _ = make_client(handler)
    with pytest.raises(ApiError, match="not JSON"):
        await client.health("u")
