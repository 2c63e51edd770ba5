"""A small circuit breaker (closed → open → half-open → closed) with an injectable clock.

Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls fail fast until
``reset_timeout`` has passed, then it is half-open. Half-open: ``half_open_max_calls`` trial calls
pass; a success closes it, a failure opens it again for another ``reset_timeout``.

Every admitted call holds a :class:`Permit` (``with breaker.permit() as p: ...``). The permit is
released in ``finally``, whatever happens to the call: a trial that is cancelled gives its
half-open slot back without a verdict (nothing was learned about the API), one that raises
anything other than a recorded outcome counts as a failure. A wedged half-open state - a slot
taken by a call that never reported back - cannot happen.

``permit(force=True)`` admits a call whatever the state (the end of a session: its final progress
and record must go out as soon as the API answers, not when the breaker would next allow a trial);
its outcome is recorded like any other.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable
from types import TracebackType


class BreakerState(enum.IntEnum):
    """Values are the ``loqua_tutor_circuit_breaker_state`` gauge: higher is worse."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpenError(Exception):
    """The breaker is open: the call was not attempted."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"circuit breaker open; next trial in {retry_in:.1f}s")
        self.retry_in = retry_in


class Permit:
    """One admitted call. Report ``success()`` or ``failure()``; leaving the ``with`` block
    without either releases the slot (cancelled) or counts a failure (any other exception)."""

    def __init__(self, breaker: CircuitBreaker, trial: bool) -> None:
        self._breaker = breaker
        self._trial = trial  # holds one of the half-open slots
        self._done = False

    def success(self) -> None:
        if not self._done:
            self._done = True
            self._breaker._outcome(self._trial, ok=True)

    def failure(self) -> None:
        if not self._done:
            self._done = True
            self._breaker._outcome(self._trial, ok=False)

    def release(self) -> None:
        """Give the slot back without a verdict."""
        if not self._done:
            self._done = True
            self._breaker._release(self._trial)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            self.release()
        else:
            self.failure()


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0 or half_open_max_calls < 1:
            raise ValueError("failure_threshold >= 1, reset_timeout > 0, half_open_max_calls >= 1")
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._half_open_max = half_open_max_calls
        self._clock = clock
        self._on_change = on_change
        # A lock, not asyncio: the breaker is plain state and may be read from a metrics thread.
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0

    def _set(self, state: BreakerState) -> BreakerState | None:
        if state == self._state:
            return None
        self._state = state
        return state

    def _notify(self, changed: BreakerState | None) -> None:
        if changed is not None and self._on_change is not None:
            self._on_change(changed)

    def _advance(self) -> BreakerState | None:
        """Open → half-open once the reset timeout has passed. Lock held by caller."""
        if self._state == BreakerState.OPEN and self._clock() - self._opened_at >= self._reset_timeout:
            self._trials = 0
            return self._set(BreakerState.HALF_OPEN)
        return None

    def _open(self) -> BreakerState | None:
        self._opened_at = self._clock()
        self._trials = 0
        return self._set(BreakerState.OPEN)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            changed = self._advance()
            state = self._state
        self._notify(changed)
        return state

    @property
    def trials_in_flight(self) -> int:
        with self._lock:
            return self._trials

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        with self._lock:
            if self._state != BreakerState.OPEN:
                return 0.0
            return max(0.0, self._reset_timeout - (self._clock() - self._opened_at))

    def permit(self, *, force: bool = False) -> Permit:
        """Admit one call or raise :class:`CircuitOpenError`. ``force``: admit it in any state."""
        with self._lock:
            changed = self._advance()
            trial = False
            if self._state == BreakerState.CLOSED or force:
                allowed = True
            elif self._state == BreakerState.HALF_OPEN and self._trials < self._half_open_max:
                self._trials += 1
                allowed = trial = True
            else:
                allowed = False
            retry_in = 0.0 if allowed else max(0.0, self._reset_timeout - (self._clock() - self._opened_at))
        self._notify(changed)
        if not allowed:
            raise CircuitOpenError(retry_in if self._state == BreakerState.OPEN else 0.0)
        return Permit(self, trial)

    def allow(self) -> bool:
        """May a call go ahead now? (A probe that takes no slot: for callers that only ask.)"""
        with self._lock:
            changed = self._advance()
            state, trials = self._state, self._trials
        self._notify(changed)
        return state == BreakerState.CLOSED or (state == BreakerState.HALF_OPEN and trials < self._half_open_max)

    def _release(self, trial: bool) -> None:
        with self._lock:
            if trial and self._trials > 0:
                self._trials -= 1

    def _outcome(self, trial: bool, *, ok: bool) -> None:
        with self._lock:
            if trial and self._trials > 0:
                self._trials -= 1
            changed: BreakerState | None = None
            if ok:
                self._failures = 0
                self._trials = 0
                changed = self._set(BreakerState.CLOSED)
            elif self._state == BreakerState.HALF_OPEN:
                changed = self._open()
            elif self._state == BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self._threshold:
                    changed = self._open()
            # A failure reported while open (a call admitted before it opened, or a forced one)
            # changes nothing: the reset timeout counts from the opening.
        self._notify(changed)

    # Outcomes of calls made without a permit (kept for callers that only report).
    def record_success(self) -> None:
        self._outcome(False, ok=True)

    def record_failure(self) -> None:
        self._outcome(False, ok=False)
