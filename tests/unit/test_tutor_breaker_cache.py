"""Circuit breaker transitions and the TTL cache, both with a controlled clock."""

from __future__ import annotations

import pytest

from loqua_tutor.breaker import BreakerState, CircuitBreaker, CircuitOpenError
from loqua_tutor.cache import TTLCache


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, changes: list[BreakerState] | None = None, **kw: object) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3,
        reset_timeout=30.0,
        clock=clock,
        on_change=(changes.append if changes is not None else None),
        **kw,  # type: ignore[arg-type]
    )


def test_opens_after_threshold_consecutive_failures() -> None:
    clock, changes = Clock(), []
    breaker = make(clock, changes)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count: failures must be consecutive
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN
    assert not breaker.allow()
    with pytest.raises(CircuitOpenError) as info:
        breaker.check()
    assert info.value.retry_in == pytest.approx(30.0)
    assert changes == [BreakerState.OPEN]


def test_half_open_after_reset_timeout_then_closes_on_success() -> None:
    clock, changes = Clock(), []
    breaker = make(clock, changes)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 29.9
    assert breaker.state == BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.state == BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()  # others keep failing fast while it runs
    breaker.record_success()
    assert breaker.state == BreakerState.CLOSED and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_half_open_failure_reopens_for_a_full_timeout() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 30
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow() and breaker.state == BreakerState.HALF_OPEN


def test_half_open_allows_configured_trials() -> None:
    clock = Clock()
    breaker = make(clock, half_open_max_calls=2)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 30
    assert [breaker.allow() for _ in range(3)] == [True, True, False]


def test_late_failure_while_open_changes_nothing() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 20
    breaker.record_failure()
    clock.now += 10
    assert breaker.state == BreakerState.HALF_OPEN  # timeout counted from opening, not the late failure


def test_state_values_are_the_gauge_values() -> None:
    assert [int(s) for s in (BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN)] == [0, 1, 2]


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)


def test_cache_ttl_and_stale_reads() -> None:
    clock = Clock(0.0)
    cache: TTLCache[str, int] = TTLCache(300, clock=clock)
    assert cache.get("u") is None and cache.get_stale("u") is None
    cache.set("u", 1)
    clock.now = 299.9
    assert cache.get("u") == 1
    clock.now = 300.0
    assert cache.get("u") is None  # expired exactly at the TTL
    assert cache.get_stale("u") == 1  # still there for degraded operation
    cache.set("u", 2)
    assert cache.get("u") == 2
    cache.invalidate("u")
    assert cache.get_stale("u") is None


def test_cache_is_bounded() -> None:
    cache: TTLCache[int, int] = TTLCache(10, clock=Clock(), max_entries=3)
    for i in range(5):
        cache.set(i, i)
    assert len(cache) == 3
    assert cache.get_stale(0) is None and cache.get(4) == 4
