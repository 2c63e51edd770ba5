"""User token timing with a controlled clock: refresh exactly at exp - 300 s, sync fallback."""

from __future__ import annotations

import asyncio

import httpx
import jwt
import pytest
from prometheus_client import CollectorRegistry

from loqua_common.tokenkey import derive_key
from loqua_devstack.loqua_api.crypto import encrypt_token
from loqua_tutor.api_client import ApiError, LoquaApiClient
from loqua_tutor.breaker import CircuitBreaker
from loqua_tutor.contract import ProgressStatus
from loqua_tutor.crypto import TokenDecryptionError
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.scoring import progress_update
from loqua_tutor.state import ProgressSnapshot
from loqua_tutor.token_manager import (
    TokenManager,
    TokenUnavailableError,
    refresh_time,
    token_expiry,
    user_token_exchange,
)

SIGNING = "reference-api-signing-key-32-bytes!"


def user_jwt(exp: float | None, n: int = 0) -> str:
    claims: dict = {"sub": "u1", "n": n}
    if exp is not None:
        claims["exp"] = int(exp)
    return jwt.encode(claims, SIGNING, algorithm="HS256")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sleeper:
    """Advances the clock instead of waiting; parks forever after ``limit`` sleeps."""

    def __init__(self, clock: Clock, limit: int = 10) -> None:
        self.clock, self.limit, self.delays = clock, limit, []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) > self.limit:
            await asyncio.Event().wait()
        self.clock.now += delay
        await asyncio.sleep(0)


class Exchange:
    def __init__(self, clock: Clock, ttl: float = 3600, fail: int = 0) -> None:
        self.clock, self.ttl, self.fail, self.calls = clock, ttl, fail, []

    async def __call__(self) -> str:
        self.calls.append(self.clock.now)
        if self.fail:
            self.fail -= 1
            raise ApiError("/api/v1/agent/user-token", "POST", 503, "server error")
        return user_jwt(self.clock.now + self.ttl, len(self.calls))


async def settle(predicate, rounds: int = 200) -> None:
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def test_expiry_is_read_without_verifying() -> None:
    assert token_expiry(user_jwt(12345)) == 12345
    assert token_expiry(user_jwt(None)) is None
    assert token_expiry(jwt.encode({"exp": 1}, "other-key-of-at-least-32-bytes-long", algorithm="HS256")) == 1
    assert token_expiry("not-a-jwt") is None


def test_refresh_time() -> None:
    assert refresh_time(1000, 4600, 300) == 4300
    assert refresh_time(1000, 1100, 300) == 1050  # shorter-lived than the margin: half-way
    assert refresh_time(1000, None, 300) is None


async def test_background_refresh_happens_exactly_at_exp_minus_300() -> None:
    clock = Clock(1000.0)
    sleeper = Sleeper(clock, limit=1)
    exchange = Exchange(clock)
    metrics = JobMetrics(CollectorRegistry())
    manager = TokenManager(exchange, margin=300, clock=clock, sleep=sleeper, metrics=metrics)
    manager.start()
    await settle(lambda: len(exchange.calls) == 2)
    assert exchange.calls == [1000.0, 4300.0]  # initial exchange, then exp (4600) - 300
    assert sleeper.delays[0] == 3300.0
    assert manager.refresh_at == 4300.0 + 3300.0
    assert metrics.token_refresh.labels("success")._value.get() == 1  # the initial one is no refresh
    await manager.aclose()


async def test_sync_fallback_when_inside_the_window() -> None:
    clock = Clock(1000.0)
    exchange = Exchange(clock)
    manager = TokenManager(exchange, margin=300, clock=clock)  # no background task
    first = await manager.get()
    clock.now = 4299.0
    assert await manager.get() == first and len(exchange.calls) == 1
    clock.now = 4300.0  # exactly at exp - 300: refreshed before the request goes out
    second = await manager.get()
    assert second != first and exchange.calls == [1000.0, 4300.0]


async def test_concurrent_requests_share_one_refresh() -> None:
    clock = Clock(0.0)
    exchange = Exchange(clock)
    manager = TokenManager(exchange, clock=clock)
    tokens = await asyncio.gather(*(manager.get() for _ in range(5)))
    assert len(set(tokens)) == 1 and len(exchange.calls) == 1


async def test_failed_refresh_keeps_a_still_valid_token_then_gives_up_at_exp() -> None:
    clock = Clock(0.0)
    exchange = Exchange(clock)
    metrics = JobMetrics(CollectorRegistry())
    manager = TokenManager(exchange, margin=300, clock=clock, metrics=metrics)
    token = await manager.get()
    exchange.fail = 100
    clock.now = 3500.0
    assert await manager.get() == token  # refresh failed, old token valid until 3600
    assert metrics.token_refresh.labels("failure")._value.get() == 1
    clock.now = 3600.0
    with pytest.raises(TokenUnavailableError):
        await manager.get()


async def test_background_retries_a_failed_first_exchange_with_backoff() -> None:
    clock = Clock(0.0)
    sleeper = Sleeper(clock, limit=2)  # two retry sleeps, then it parks before the next refresh
    exchange = Exchange(clock, fail=2)
    manager = TokenManager(exchange, clock=clock, sleep=sleeper, retry_delays=(2.0, 5.0))
    manager.start()
    assert await manager.wait_obtained(1.0)
    assert exchange.calls == [0.0, 2.0, 7.0] and sleeper.delays[:2] == [2.0, 5.0]
    await manager.aclose()


async def test_forced_refresh_replaces_a_token_the_api_refused() -> None:
    clock = Clock(0.0)
    exchange = Exchange(clock)
    manager = TokenManager(exchange, clock=clock)
    first = await manager.get()
    assert await manager.refresh(force=True) != first and len(exchange.calls) == 2


class SlowExchange(Exchange):
    """An exchange that takes a while (the network): concurrent callers really overlap it."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.calls.append(self.clock.now)
        await self.release.wait()
        return user_jwt(self.clock.now + self.ttl, len(self.calls))


async def test_concurrent_401s_share_one_exchange() -> None:
    clock = Clock(0.0)
    exchange = Exchange(clock)
    manager = TokenManager(exchange, clock=clock)
    refused = await manager.get()
    clock.now = 60.0  # older than MIN_TOKEN_AGE_FOR_FORCED_REFRESH
    slow = SlowExchange(clock)
    manager._exchange = slow
    waiters = [asyncio.create_task(manager.refused(refused)) for _ in range(20)]
    await settle(lambda: len(slow.calls) == 1)
    waiters.append(asyncio.create_task(manager.get()))  # a request meanwhile joins the same flight
    waiters.append(asyncio.create_task(manager.refresh()))  # and so does the background refresher
    for _ in range(20):
        await asyncio.sleep(0)
    slow.release.set()
    tokens = await asyncio.gather(*waiters)
    assert len(slow.calls) == 1, "one exchange for 20 concurrent 401s"
    assert len(set(tokens)) == 1 and tokens[0] != refused
    # A late 401 for the old token gets the replacement, without another exchange.
    assert await manager.refused(refused) == tokens[0] and len(slow.calls) == 1


async def test_a_fresh_token_is_not_exchanged_again_on_401() -> None:
    clock = Clock(0.0)
    exchange = Exchange(clock)
    manager = TokenManager(exchange, clock=clock)
    token = await manager.get()
    clock.now = 5.0
    assert await manager.refused(token) == token and len(exchange.calls) == 1
    clock.now = 11.0
    assert await manager.refused(token) != token and len(exchange.calls) == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_exchange() -> None:
    clock = Clock(0.0)
    slow = SlowExchange(clock)
    manager = TokenManager(slow, clock=clock)
    first = asyncio.create_task(manager.get())
    second = asyncio.create_task(manager.get())
    await settle(lambda: len(slow.calls) == 1)
    first.cancel()
    await asyncio.sleep(0)
    slow.release.set()
    assert (await second).count(".") == 2 and len(slow.calls) == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_concurrent_401s_through_the_client_start_one_exchange() -> None:
    """N concurrent requests that all meet a 401: one token exchange, every request retried once."""
    clock = Clock(0.0)
    slow = SlowExchange(clock)
    slow.release.set()
    manager = TokenManager(slow, clock=clock)
    first = await manager.get()
    clock.now = 60.0
    slow.release.clear()
    seen: list[str] = []

    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == f"Bearer {first}":
            await gate.wait()  # all ten are in flight with the old token before any answer
            return httpx.Response(401, json={"error": {"code": "INVALID_TOKEN"}})
        return httpx.Response(200, json={"success": True})

    api = LoquaApiClient(
        "http://api.test",
        agent_id="a",
        agent_token="agent.jwt.x",
        breaker=CircuitBreaker(),
        user_tokens=manager,
        transport=httpx.MockTransport(handler),
    )
    updates = [progress_update("u1", f"sess_{i}_x", ProgressStatus.IN_PROGRESS, ProgressSnapshot()) for i in range(10)]
    calls = asyncio.gather(*(api.update_progress(u) for u in updates))
    await settle(lambda: len(seen) == 10)
    gate.set()
    await settle(lambda: len(slow.calls) == 2)
    for _ in range(10):
        await asyncio.sleep(0)
    slow.release.set()
    results = await calls
    await api.aclose()
    assert all(r.success for r in results)
    assert len(slow.calls) == 2  # the first token, then ONE exchange for ten concurrent 401s
    assert seen.count(f"Bearer {first}") == 10 and len(seen) == 20  # each retried once, with the new token


def _api(handler) -> LoquaApiClient:
    return LoquaApiClient(
        "http://api.test",
        agent_id="a",
        agent_token="agent.jwt.x",
        breaker=CircuitBreaker(),
        transport=httpx.MockTransport(handler),
        max_retries=0,
    )


async def test_exchange_decrypts_and_counts_results() -> None:
    key = derive_key("shared-secret")
    token = user_jwt(9_999_999_999)
    metrics = JobMetrics(CollectorRegistry())

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"encrypted_token": encrypt_token(token, "shared-secret", iv=bytes(16)), "expires_in": 3600}
        )

    exchange = user_token_exchange(_api(handler), key=key, room_name="r", user_id="u", metrics=metrics)
    assert await exchange() == token
    wrong = user_token_exchange(_api(handler), key=derive_key("wrong"), room_name="r", user_id="u", metrics=metrics)
    with pytest.raises(TokenDecryptionError):
        await wrong()
    refused = user_token_exchange(
        _api(lambda r: httpx.Response(401, json={"error": {"code": "INVALID_TOKEN"}})),
        key=key,
        room_name="r",
        user_id="u",
        metrics=metrics,
    )
    with pytest.raises(ApiError):
        await refused()
    values = {r: metrics.token_exchange.labels(r)._value.get() for r in ("success", "decrypt_failed", "auth_failed")}
    assert values == {"success": 1, "decrypt_failed": 1, "auth_failed": 1}
