"""Circuit breaker transitions and the TTL cache, both with a controlled clock."""

from __future__ import annotations

import asyncio

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
        breaker.permit()
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
    trial = breaker.permit()  # the one trial call
    assert not breaker.allow()  # others keep failing fast while it runs
    with pytest.raises(CircuitOpenError):
        breaker.permit()
    trial.success()
    assert breaker.state == BreakerState.CLOSED and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_half_open_failure_reopens_for_a_full_timeout() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 30
    breaker.permit().failure()
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
    breaker.permit()
    breaker.permit()
    with pytest.raises(CircuitOpenError):
        breaker.permit()


def test_late_failure_while_open_changes_nothing() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 20
    breaker.record_failure()
    clock.now += 10
    assert breaker.state == BreakerState.HALF_OPEN  # timeout counted from opening, not the late failure


def open_then_half_open(clock: Clock, breaker: CircuitBreaker) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 30
    assert breaker.state == BreakerState.HALF_OPEN


async def test_cancelled_trial_releases_the_half_open_slot() -> None:
    """The wedge of issue 16: a trial call cancelled mid-flight (session end) kept the only
    half-open slot, and every later call failed fast forever."""
    clock = Clock()
    breaker = make(clock)
    open_then_half_open(clock, breaker)
    started = asyncio.Event()

    async def hung_trial() -> None:
        with breaker.permit():
            started.set()
            await asyncio.sleep(3600)  # a latency fault

    task = asyncio.create_task(hung_trial())
    await started.wait()
    assert not breaker.allow() and breaker.trials_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.trials_in_flight == 0
    assert breaker.state == BreakerState.HALF_OPEN  # no verdict from a cancelled call
    with breaker.permit() as trial:  # the next call is the trial, and the API answers
        trial.success()
    assert breaker.state == BreakerState.CLOSED


@pytest.mark.parametrize("error", [TimeoutError(), RuntimeError("bug"), KeyError("x")])
def test_trial_that_raises_anything_releases_the_slot_as_a_failure(error: Exception) -> None:
    clock = Clock()
    breaker = make(clock)
    open_then_half_open(clock, breaker)
    with pytest.raises(type(error)), breaker.permit():
        raise error
    assert breaker.trials_in_flight == 0
    assert breaker.state == BreakerState.OPEN  # a failed trial re-opens it for a full timeout
    clock.now += 30
    with breaker.permit() as trial:
        trial.success()
    assert breaker.state == BreakerState.CLOSED


def test_trial_without_outcome_releases_the_slot() -> None:
    clock = Clock()
    breaker = make(clock)
    open_then_half_open(clock, breaker)
    with breaker.permit():
        pass
    assert breaker.trials_in_flight == 0 and breaker.allow()


def test_outcome_is_recorded_once() -> None:
    clock = Clock()
    breaker = make(clock)
    open_then_half_open(clock, breaker)
    with breaker.permit() as trial:
        trial.success()
        trial.failure()  # ignored: the permit already has its outcome
    assert breaker.state == BreakerState.CLOSED


def test_forced_permit_goes_out_while_open_and_its_success_closes() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state == BreakerState.OPEN
    with breaker.permit(force=True) as forced:
        forced.failure()
    assert breaker.state == BreakerState.OPEN and breaker.retry_in() == pytest.approx(30.0)
    with breaker.permit(force=True) as forced:
        forced.success()
    assert breaker.state == BreakerState.CLOSED


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
