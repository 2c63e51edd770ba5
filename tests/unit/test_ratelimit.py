"""LogRateLimiter: level priorities under pressure, refill, folding of repeats, summaries, cost."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from loqua_common.ratelimit import DEBUG_RESERVE, INFO_RESERVE, LogRateLimiter, Verdict

DEBUG, INFO, WARNING, ERROR, CRITICAL = (
    logging.DEBUG,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
    logging.CRITICAL,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float = 100.0, burst: float | None = None, **kw: float) -> tuple[LogRateLimiter, FakeClock]:
    clock = FakeClock()
    return LogRateLimiter(rate=rate, burst=burst, clock=clock, **kw), clock


def emitted(lim: LogRateLimiter, level: int, n: int, prefix: str = "m") -> int:
    """Offer n distinct lines (distinct, so folding stays out of the way); count those emitted."""
    return sum(lim.decide(level, f"{prefix}{i}").emit for i in range(n))


class TestPriorities:
    def test_debug_stops_at_half_the_bucket(self) -> None:
        lim, _ = limiter(rate=100)
        assert DEBUG_RESERVE == 0.5 and INFO_RESERVE == 0.2
        assert emitted(lim, DEBUG, 1000) == 50
        assert lim.dropped() == {"DEBUG": 1000 - 50}

    def test_debug_flood_leaves_room_for_info_and_warning(self) -> None:
        lim, _ = limiter(rate=100)
        emitted(lim, DEBUG, 1000)
        assert emitted(lim, INFO, 1000, "i") == 30  # from 50 % down to 20 %
        assert emitted(lim, WARNING, 1000, "w") == 20  # the rest
        assert emitted(lim, DEBUG, 10, "d") == 0 and emitted(lim, INFO, 10, "j") == 0

    def test_info_flood_leaves_room_for_warning_only(self) -> None:
        lim, _ = limiter(rate=100)
        assert emitted(lim, INFO, 1000) == 80
        assert emitted(lim, DEBUG, 10, "d") == 0
        assert emitted(lim, WARNING, 1000, "w") == 20

    def test_mixed_pressure_drops_in_priority_order(self) -> None:
        lim, clock = limiter(rate=100)
        got = {DEBUG: 0, INFO: 0, WARNING: 0}
        for tick in range(200):  # 2 s at 4x the rate, equal parts of each level
            clock.advance(0.01)
            for level in (DEBUG, INFO, WARNING):
                got[level] += lim.decide(level, f"{level}-{tick}").emit
        assert got[DEBUG] < got[INFO] <= got[WARNING]
        dropped = lim.dropped()
        assert dropped["DEBUG"] > dropped.get("INFO", 0) >= dropped.get("WARNING", 0)

    @pytest.mark.parametrize("level", [ERROR, CRITICAL])
    def test_errors_are_never_dropped(self, level: int) -> None:
        lim, _ = limiter(rate=10)
        emitted(lim, WARNING, 100)  # empty the bucket
        assert emitted(lim, level, 10_000, "e") == 10_000
        assert lim.tokens == 0  # errors drain the bucket but never below zero
        assert "ERROR" not in lim.dropped() and "CRITICAL" not in lim.dropped()

    def test_custom_levels_below_info_count_as_debug(self) -> None:
        lim, _ = limiter(rate=10)
        emitted(lim, 5, 100)
        assert set(lim.dropped()) == {"DEBUG"}


class TestRefill:
    def test_refill_over_time(self) -> None:
        lim, clock = limiter(rate=100)
        assert emitted(lim, WARNING, 500) == 100
        assert emitted(lim, WARNING, 10, "a") == 0
        clock.advance(0.1)  # 10 tokens
        assert emitted(lim, WARNING, 100, "b") == 10
        clock.advance(60)  # refills only up to the burst
        assert emitted(lim, WARNING, 500, "c") == 100

    def test_burst_defaults_to_rate_and_can_differ(self) -> None:
        assert LogRateLimiter(rate=50).burst == 50
        lim, clock = limiter(rate=10, burst=200)
        assert emitted(lim, WARNING, 1000) == 200
        clock.advance(1)
        assert emitted(lim, WARNING, 1000, "x") == 10

    def test_infinite_rate_disables_limiting(self) -> None:
        lim, _ = limiter(rate=float("inf"))
        assert emitted(lim, DEBUG, 10_000) == 10_000

    @pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": -1}, {"rate": float("nan")}, {"burst": 0.5}])
    def test_invalid_parameters(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            LogRateLimiter(**kwargs)


class TestFolding:
    def test_repeats_fold_into_one_line_when_a_different_line_arrives(self) -> None:
        lim, clock = limiter()
        assert lim.decide(INFO, "same", "first").verdict is Verdict.EMIT
        for _ in range(5):
            clock.advance(0.1)
            assert lim.decide(INFO, "same").verdict is Verdict.FOLD
        decision = lim.decide(INFO, "other")
        assert decision.emit
        assert decision.fold is not None
        assert (decision.fold.key, decision.fold.count, decision.fold.payload) == ("same", 5, "first")

    def test_single_line_leaves_nothing_to_fold(self) -> None:
        lim, _ = limiter()
        lim.decide(INFO, "a")
        assert lim.decide(INFO, "b").fold is None
        assert lim.flush() is None

    def test_same_message_other_level_is_not_a_repeat(self) -> None:
        lim, _ = limiter()
        lim.decide(INFO, "a")
        assert lim.decide(WARNING, "a").verdict is Verdict.EMIT

    def test_flush_reports_the_pending_run(self) -> None:
        lim, _ = limiter()
        lim.decide(INFO, "a", "rec")
        lim.decide(INFO, "a")
        lim.decide(INFO, "a")
        fold = lim.flush()
        assert fold is not None and fold.count == 2 and fold.payload == "rec"
        assert lim.flush() is None
        assert lim.decide(INFO, "a").verdict is Verdict.FOLD  # the run goes on after a flush

    def test_endless_repeats_show_once_per_window(self) -> None:
        lim, clock = limiter(fold_window=5.0)
        decisions = []
        for _ in range(40):  # 10 s, one line every 0.25 s
            decisions.append(lim.decide(INFO, "tick"))
            clock.advance(0.25)
        assert [d.verdict for d in decisions].count(Verdict.EMIT) == 1
        folds = [d.fold for d in decisions if d.fold is not None]
        assert [f.count for f in folds] == [20]  # at 5 s: 19 repeats plus the one that closed the run
        pending = lim.flush()
        assert pending is not None and pending.count == 19

    def test_lone_line_repeated_after_the_window_passes_again(self) -> None:
        lim, clock = limiter(fold_window=5.0)
        lim.decide(INFO, "a")
        clock.advance(6)
        decision = lim.decide(INFO, "a")
        assert decision.verdict is Verdict.EMIT and decision.fold is None

    def test_dropped_line_starts_no_run(self) -> None:
        lim, _ = limiter(rate=10)
        emitted(lim, DEBUG, 100)
        assert lim.decide(DEBUG, "x").verdict is Verdict.DROP
        assert lim.decide(DEBUG, "x").verdict is Verdict.DROP  # dropped and counted, not folded
        assert lim.dropped()["DEBUG"] == 100 - 5 + 2

    def test_repeats_cost_no_tokens(self) -> None:
        lim, _ = limiter(rate=10)
        lim.decide(WARNING, "same")
        for _ in range(1000):
            lim.decide(WARNING, "same")
        assert emitted(lim, WARNING, 100) == 8  # 10 - the first line - the fold line


class TestSummary:
    def test_summary_names_levels_with_drops(self) -> None:
        lim, clock = limiter(rate=10, summary_interval=30)
        emitted(lim, DEBUG, 105)  # 5 pass
        emitted(lim, INFO, 23, "i")  # the bucket is at half: 3 pass, 20 dropped
        clock.advance(30)
        assert lim.summary() == "log rate limiter dropped 120 lines in the last 30s (DEBUG=100, INFO=20)"
        assert lim.summary() is None  # counts reset
        assert lim.total_dropped == 120

    def test_no_summary_without_drops(self) -> None:
        lim, clock = limiter()
        emitted(lim, INFO, 10)
        clock.advance(31)
        assert lim.summary() is None

    def test_summary_is_delivered_with_the_first_line_after_the_interval(self) -> None:
        lim, clock = limiter(rate=10, summary_interval=30)
        emitted(lim, INFO, 20)  # 8 pass, 12 dropped
        clock.advance(29)
        assert not lim.summary_due()
        assert lim.decide(ERROR, "not yet").summary is None
        clock.advance(1)
        assert lim.summary_due()
        decision = lim.decide(ERROR, "now")
        assert decision.emit
        assert decision.summary == "log rate limiter dropped 12 lines in the last 30s (INFO=12)"
        clock.advance(30)
        assert lim.decide(ERROR, "again").summary is None  # nothing dropped since

    def test_summary_time_flushes_a_pending_run(self) -> None:
        lim, clock = limiter(summary_interval=30, fold_window=60)
        lim.decide(INFO, "a")
        lim.decide(INFO, "a")
        clock.advance(30)
        decision = lim.decide(INFO, "a")
        assert decision.verdict is Verdict.FOLD
        assert decision.fold is not None and decision.fold.count == 2


def test_thread_safety_counts_every_line() -> None:
    lim = LogRateLimiter(rate=1000.0, burst=1000.0, clock=lambda: 0.0)
    results: list[int] = []

    def worker(n: int) -> None:
        results.append(emitted(lim, WARNING, 2000, f"t{n}-"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1000
    assert lim.total_dropped == 8 * 2000 - 1000


def test_cost_per_call_relative_to_plain_logging() -> None:
    """Print the limiter's cost relative to a logging call to a NullHandler; the bound only
    catches pathologies (wall-clock limits would be flaky on shared CI machines)."""
    logger = logging.getLogger("loqua.test.bench")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    lim = LogRateLimiter(rate=1e9)
    n = 20_000
    keys = [f"message number {i}" for i in range(64)]

    def best_of(fn: object, rounds: int = 5) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return min(times)

    def plain() -> None:
        for i in range(n):
            logger.info("message number %d", i & 63)

    def limited() -> None:
        for i in range(n):
            lim.decide(INFO, keys[i & 63])

    ratio = best_of(limited) / best_of(plain)
    print(f"\nLogRateLimiter.decide costs {ratio:.2f}x a logging call to a NullHandler")
    assert ratio < 50
