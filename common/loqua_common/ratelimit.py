"""Token-bucket limiter for log lines, with level priorities and folding of repeated lines.

A log flood (a crash loop, a chatty dependency) must not starve the node's log pipeline nor hide
the errors that explain it. The limiter therefore:

* refills ``rate`` tokens per second up to ``burst``; an emitted line costs one token;
* keeps reserves per level, so that under pressure DEBUG goes first, then INFO, then WARNING:

  ============  ===============================================================
  level         may spend a token only while the bucket holds more than
  ============  ===============================================================
  DEBUG (< 20)  ``DEBUG_RESERVE`` = 50 % of ``burst``
  INFO          ``INFO_RESERVE`` = 20 % of ``burst``
  WARNING       0 (any whole token)
  ERROR, CRIT.  never dropped; spends a token if there is one, never goes below 0
  ============  ===============================================================

  A DEBUG flood thus drains the bucket to half and stops there, leaving INFO and WARNING their
  share; an INFO flood leaves 20 % for WARNING. ERROR passes even when the bucket is empty;

* folds repeats: a line identical to the previous one (same level and key; the logging handler puts
  the logger name and the formatted message in the key) within ``fold_window`` seconds of the start
  of the run is not emitted but counted. When the run ends (a different line arrives, the window
  runs out, ``flush()``, or the periodic summary), the caller writes one
  ``"<message> (repeated N times)"`` line, N being the number of suppressed repeats. A line repeated
  forever thus shows once, then once per window;
* counts dropped lines per level and offers a summary line every ``summary_interval`` seconds.

The limiter decides; it writes nothing. ``decide()`` is the per-line fast path: one lock, one
clock read, a few float operations, and in the common case it returns a preallocated constant.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DEBUG_RESERVE",
    "INFO_RESERVE",
    "Decision",
    "Fold",
    "LogRateLimiter",
    "Verdict",
]

DEBUG_RESERVE = 0.5
"""DEBUG (and custom levels below INFO) may only spend tokens above this fraction of the burst."""
INFO_RESERVE = 0.2
"""INFO may only spend tokens above this fraction of the burst."""

# Tiers for dropped-line counts; ERROR and above are never dropped, so they need no counter.
_TIER_NAMES = ("DEBUG", "INFO", "WARNING")


class Verdict(enum.Enum):
    EMIT = "emit"  # write the line
    DROP = "drop"  # rate limited: counted in the summary
    FOLD = "fold"  # a repeat of the previous line: counted in its "(repeated N times)" line


class Fold(NamedTuple):
    """A finished run of repeats: the caller writes ``"<message> (repeated {count} times)"``."""

    levelno: int
    key: str
    payload: object  # what the caller passed with the first line of the run (the log record)
    count: int  # suppressed repeats, not counting the first line


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one line. Write ``fold`` first (if any), then the line, then ``summary``."""

    verdict: Verdict
    fold: Fold | None = None
    summary: str | None = None  # the periodic "dropped N lines" summary is due: write it (WARNING)

    @property
    def emit(self) -> bool:
        return self.verdict is Verdict.EMIT


# The common outcomes carry nothing else: reuse them instead of allocating per line.
_EMIT = Decision(Verdict.EMIT)
_DROP = Decision(Verdict.DROP)
_FOLD = Decision(Verdict.FOLD)
_PLAIN = {Verdict.EMIT: _EMIT, Verdict.DROP: _DROP, Verdict.FOLD: _FOLD}


class LogRateLimiter:
    """Thread-safe token bucket for log lines; see the module docstring for the policy."""

    def __init__(
        self,
        rate: float = 400.0,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        summary_interval: float = 30.0,
        fold_window: float = 5.0,
    ) -> None:
        if not rate > 0:  # also rejects NaN
            raise ValueError(f"log rate limit must be > 0 lines per second (LOG_RATE_LIMIT), got {rate!r}")
        burst = rate if burst is None else burst
        if not burst >= 1:
            raise ValueError(f"log burst must be >= 1 line, got {burst!r}")
        if not summary_interval > 0:
            raise ValueError(f"summary_interval must be > 0 seconds, got {summary_interval!r}")
        if fold_window < 0:
            raise ValueError(f"fold_window must be >= 0 seconds, got {fold_window!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.summary_interval = float(summary_interval)
        self.fold_window = float(fold_window)
        # math.inf disables limiting (folding stays); inf arithmetic would produce NaN on refill.
        self._unlimited = math.isinf(self.rate) or math.isinf(self.burst)
        self._debug_reserve = DEBUG_RESERVE * self.burst
        self._info_reserve = INFO_RESERVE * self.burst
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._tokens = self.burst
        self._last = now
        self._dropped = [0, 0, 0]
        self._total_dropped = 0
        self._window_start = now
        # The current run of identical lines.
        self._run_key: str | None = None
        self._run_level = 0
        self._run_payload: object = None
        self._run_start = now
        self._run_count = 0

    # -- fast path ---------------------------------------------------------------------------------

    def decide(self, levelno: int, key: str, payload: object = None) -> Decision:
        """Decide about one line. ``payload`` comes back in the ``Fold`` that ends its run."""
        with self._lock:
            now = self._clock()
            fold: Fold | None = None
            if key == self._run_key and levelno == self._run_level:
                if now - self._run_start < self.fold_window:
                    self._run_count += 1
                    verdict = Verdict.FOLD
                elif self._run_count:
                    # The window ran out: report the run (this repeat included) and start a new one,
                    # so a line repeated forever shows up once per window.
                    self._run_count += 1
                    fold = self._take_fold(now, keep_run=True)
                    verdict = Verdict.FOLD
                else:
                    # A lone earlier line, long ago: this is a fresh first line.
                    verdict = self._admit(levelno, key, payload, now)
            else:
                if self._run_count:
                    fold = self._take_fold(now, keep_run=False)
                verdict = self._admit(levelno, key, payload, now)
            summary: str | None = None
            if now - self._window_start >= self.summary_interval:
                if fold is None and self._run_count:
                    fold = self._take_fold(now, keep_run=True)
                summary = self._take_summary(now)
        if fold is None and summary is None:
            return _PLAIN[verdict]
        return Decision(verdict, fold, summary)

    def _admit(self, levelno: int, key: str, payload: object, now: float) -> Verdict:
        """Spend a token for a new line if its level may; a passed line starts a new run."""
        if self._spend(levelno, now):
            self._run_key, self._run_level, self._run_payload = key, levelno, payload
            self._run_start, self._run_count = now, 0
            return Verdict.EMIT
        # A dropped line starts no run: its repeats are rate limited (and counted) like it was.
        self._run_key, self._run_payload, self._run_count = None, None, 0
        return Verdict.DROP

    def _spend(self, levelno: int, now: float) -> bool:
        if self._unlimited:
            return True
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last = now
        if levelno >= logging.ERROR:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        if levelno >= logging.WARNING:
            reserve, tier = 0.0, 2
        elif levelno >= logging.INFO:
            reserve, tier = self._info_reserve, 1
        else:
            reserve, tier = self._debug_reserve, 0
        if self._tokens >= 1.0 and self._tokens > reserve:
            self._tokens -= 1.0
            return True
        self._dropped[tier] += 1
        self._total_dropped += 1
        return False

    def _take_fold(self, now: float, *, keep_run: bool) -> Fold:
        assert self._run_key is not None
        fold = Fold(self._run_level, self._run_key, self._run_payload, self._run_count)
        # The fold line replaces many lines and is not optional: charge it without gating.
        if not self._unlimited:
            self._spend(logging.CRITICAL, now)
        self._run_count = 0
        if keep_run:
            self._run_start = now
        else:
            self._run_key, self._run_payload = None, None
        return fold

    def _take_summary(self, now: float) -> str | None:
        elapsed = now - self._window_start
        self._window_start = now
        total = sum(self._dropped)
        if not total:
            return None
        detail = ", ".join(f"{name}={n}" for name, n in zip(_TIER_NAMES, self._dropped, strict=True) if n)
        self._dropped = [0, 0, 0]
        return f"log rate limiter dropped {total} lines in the last {elapsed:.0f}s ({detail})"

    # -- slow path: flush, summaries, introspection ----------------------------------------------------

    def flush(self) -> Fold | None:
        """End the current run of repeats early (e.g. at shutdown); None if nothing was folded."""
        with self._lock:
            if not self._run_count:
                return None
            return self._take_fold(self._clock(), keep_run=True)

    def summary_due(self) -> bool:
        with self._lock:
            return self._clock() - self._window_start >= self.summary_interval

    def summary(self) -> str | None:
        """The drop summary since the previous one (and start a new period); None if nothing dropped.

        For example ``"log rate limiter dropped 123 lines in the last 30s (DEBUG=100, INFO=23)"``.
        """
        with self._lock:
            return self._take_summary(self._clock())

    def dropped(self) -> dict[str, int]:
        """Lines dropped per level since the last summary (levels without drops omitted)."""
        with self._lock:
            return {name: n for name, n in zip(_TIER_NAMES, self._dropped, strict=True) if n}

    @property
    def total_dropped(self) -> int:
        """Lines dropped since creation (for a metric); never reset."""
        return self._total_dropped

    @property
    def tokens(self) -> float:
        """Tokens in the bucket as of the last decision (for tests and debugging)."""
        return self._tokens
