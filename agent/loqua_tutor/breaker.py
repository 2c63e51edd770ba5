"""A small circuit breaker (closed → open → half-open → closed) with an injectable clock.

Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls fail fast until
``reset_timeout`` has passed, then it is half-open. Half-open: ``half_open_max_calls`` trial calls
pass; a success closes it, a failure opens it again for another ``reset_timeout``.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable


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

    @property
    def state(self) -> BreakerState:
        with self._lock:
            changed = self._advance()
            state = self._state
        self._notify(changed)
        return state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        with self._lock:
            if self._state != BreakerState.OPEN:
                return 0.0
            return max(0.0, self._reset_timeout - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go ahead now? In half-open this takes one of the trial slots."""
        with self._lock:
            changed = self._advance()
            if self._state == BreakerState.CLOSED:
                allowed = True
            elif self._state == BreakerState.HALF_OPEN and self._trials < self._half_open_max:
                self._trials += 1
                allowed = True
            else:
                allowed = False
        self._notify(changed)
        return allowed

    def check(self) -> None:
        """:meth:`allow` or raise :class:`CircuitOpenError`."""
        if not self.allow():
            raise CircuitOpenError(self.retry_in())

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trials = 0
            changed = self._set(BreakerState.CLOSED)
        self._notify(changed)

    def record_failure(self) -> None:
        with self._lock:
            changed: BreakerState | None = None
            if self._state == BreakerState.HALF_OPEN:
                self._opened_at = self._clock()
                changed = self._set(BreakerState.OPEN)
            elif self._state == BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self._threshold:
                    self._opened_at = self._clock()
                    changed = self._set(BreakerState.OPEN)
            # A failure reported while open (a call admitted before it opened) changes nothing.
        self._notify(changed)
