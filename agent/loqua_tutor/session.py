"""One learner session against the Loqua API: context, health, periodic progress, finalize-once.

The conversation never waits for the API. Tools update the session state in memory; a background loop
sends progress every ``progress_interval`` seconds when something changed. While the API is down
the session runs on cached (or default) context and keeps one progress update pending - always
the latest state - until the API answers again. At the end, :meth:`TutorSession.finalize` sends
the final progress and the learning-session record exactly once, retrying both until they are
delivered or the finalize budget (``FINALIZE_TIMEOUT_SECONDS``) is spent - then they are logged
as lost and counted. These final calls (and a token exchange they need) go through whatever state the
circuit breaker is in: it protects the API from a session's steady traffic, not from the one
record that must reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from loqua_tutor.api_client import ApiError, LoquaApiClient
from loqua_tutor.breaker import CircuitOpenError
from loqua_tutor.cache import TTLCache
from loqua_tutor.contract import ProgressStatus, SessionRecord
from loqua_tutor.crypto import TokenDecryptionError
from loqua_tutor.learner import Learner
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.scoring import progress_update, session_record
from loqua_tutor.state import SessionState, UserContext
from loqua_tutor.token_manager import TokenManager, TokenUnavailableError

log = logging.getLogger(__name__)

# What "the API is unavailable" looks like from here; anything else is a bug and propagates.
API_UNAVAILABLE = (ApiError, CircuitOpenError, TokenUnavailableError, TokenDecryptionError)
RECORD_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)


class TutorSession:
    def __init__(
        self,
        *,
        learner: Learner,
        room_name: str,
        api: LoquaApiClient,
        tokens: TokenManager,
        context_cache: TTLCache[str, UserContext],
        metrics: JobMetrics | None = None,
        progress_interval: float = 30.0,
        finalize_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        record_retry_delays: Sequence[float] = RECORD_RETRY_DELAYS,
    ) -> None:
        self.learner = learner
        # The learner's participant now (a page refresh may bring them back under a new identity).
        self.participant_identity = learner.identity
        self.room_name = room_name
        self.api = api
        self.tokens = tokens
        self.state = SessionState()
        self.context = UserContext.default(learner.user_id)
        self._cache = context_cache
        self._metrics = metrics
        self._interval = progress_interval
        self._finalize_timeout = finalize_timeout
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._record_delays = tuple(record_retry_delays) or (1.0,)
        self._started_at: float | None = None
        self._sent_version = 0
        self._pending = False
        self._loop_task: asyncio.Task[None] | None = None
        self._final_lock = asyncio.Lock()
        self._finalized = False
        self._failed = False
        self._last_error = ""
        self._record: SessionRecord | None = None  # built once, at the end
        self.record_delivered: bool | None = None  # None until finalize ran

    @property
    def session_id(self) -> str:
        return self.learner.session_id

    @property
    def finalized(self) -> bool:
        return self._finalized

    def mark_failed(self) -> None:
        """Something broke in the job: the session ends as ``failed`` rather than ``completed``."""
        self._failed = True

    # ---- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._started_at = self._clock()
        if self._metrics is not None:
            self._metrics.sessions_started.inc()
            self._metrics.active_sessions.inc()
        self.tokens.start()
        self.context = await self.load_context()
        await self.health_check()
        self._loop_task = asyncio.create_task(self._progress_loop(), name="progress-loop")
        log.info(
            "session started: target=%s native=%s pace=%s focus=%s context=%s",
            self.context.target_language,
            self.context.native_language,
            self.context.learning_pace.value,
            ",".join(self.context.focus_areas) or "-",
            "api" if self.context.known else "default",
        )

    async def load_context(self, *, force: bool = False) -> UserContext:
        """Fresh cache → API → stale cache → defaults. Never raises for an API outage.
        ``force``: ask the API whatever the breaker's state."""
        user_id = self.learner.user_id
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        try:
            body = await self.api.get_user_context(user_id, force=force)
        except API_UNAVAILABLE as exc:
            stale = self._cache.get_stale(user_id)
            log.warning(
                "user context unavailable (%s); using %s",
                type(exc).__name__,
                "cached context" if stale is not None else "defaults",
            )
            return stale if stale is not None else UserContext.default(user_id)
        context = UserContext.from_api(user_id, body)
        self._cache.set(user_id, context)
        return context

    async def health_check(self) -> bool:
        try:
            body = await self.api.health(self.learner.user_id)
        except API_UNAVAILABLE as exc:
            log.warning("initial health check failed (%s); continuing in degraded mode", type(exc).__name__)
            return False
        log.info("health check: status=%s permissions=%s", body.status, ",".join(body.permissions) or "-")
        return body.status == "healthy"

    # ---- progress ----------------------------------------------------------------------------
    async def _progress_loop(self) -> None:
        while True:
            await self._sleep(self._interval)
            await self.send_progress(ProgressStatus.IN_PROGRESS)

    def _set_pending(self, pending: bool) -> None:
        if pending != self._pending and self._metrics is not None:
            (self._metrics.progress_updates_queued.inc if pending else self._metrics.progress_updates_queued.dec)()
        self._pending = pending

    @property
    def progress_pending(self) -> bool:
        return self._pending

    async def send_progress(self, status: ProgressStatus, *, force: bool = False, urgent: bool = False) -> bool:
        """Send the latest state if it changed since the last delivered update (or is pending;
        ``force``: in any case). ``urgent``: through the breaker whatever its state (the final
        update). Returns whether the API has the latest state afterwards."""
        version = self.state.version
        if not force and version == self._sent_version and not self._pending:
            return True
        self._set_pending(True)
        body = progress_update(self.learner.user_id, self.session_id, status, self.state.snapshot())
        try:
            await self.api.update_progress(body, force=urgent)
        except API_UNAVAILABLE as exc:
            self._last_error = type(exc).__name__
            if self._metrics is not None:
                self._metrics.progress_updates.labels("failed").inc()
            log.warning("progress update not delivered (%s); kept for the next attempt", type(exc).__name__)
            return False
        self._sent_version = version
        self._set_pending(self.state.version != version)
        if self._metrics is not None:
            self._metrics.progress_updates.labels("sent").inc()
        return True

    # ---- the end -----------------------------------------------------------------------------
    async def finalize(self, reason: str = "") -> None:
        """Final progress + session record, exactly once however often and concurrently called."""
        async with self._final_lock:
            if self._finalized:
                return
            self._finalized = True
            if self._started_at is not None and not self._failed and not self.tokens.ever_obtained:
                # The learner's token was never obtained (exchange refused or failing the whole
                # session): nothing of the lesson could reach their account. Not a normal end.
                log.error("session ending without the learner's token ever obtained: failed")
                self._failed = True
            status = ProgressStatus.FAILED if self._failed else ProgressStatus.COMPLETED
            deadline = self._clock() + self._finalize_timeout
            log.info("session ending (%s): sending final progress and session record", reason or status.value)
            try:
                await self._finish(status, deadline)
            finally:
                await self._release(status)

    async def _finish(self, status: ProgressStatus, deadline: float) -> None:
        # Whatever the breaker's state, every call from here on goes out: the finals, and the token
        # exchange they need when the learner's token ran out during an outage.
        self.api.bypass_breaker()
        if self._loop_task is not None:
            # A progress update in flight (perhaps a hung breaker trial) is cancelled here; its
            # breaker permit is released on the way out, so it cannot block what follows.
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        seconds = self._clock() - (self._started_at if self._started_at is not None else self._clock())
        progress_done = False
        record_outcome: bool | str = False  # True delivered, "rejected"/"invalid" final, False pending
        attempt = 0
        why = ""
        try:
            # Rounds until both are delivered or the budget is spent. Each round tries what is still
            # pending - both at once: they go to different paths, and one that hangs or is refused
            # does not hold the other back - forced through the breaker whatever its state (the API
            # may be back although the breaker has not noticed yet).
            while True:
                jobs: dict[str, Awaitable[bool | str]] = {}
                if not progress_done:
                    jobs["progress"] = self._bounded(self._final_progress(status), deadline)
                if record_outcome is False:
                    jobs["record"] = self._bounded(self._record_attempt(seconds, deadline), deadline)
                results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
                progress_done = progress_done or results.get("progress") is True
                if "record" in results:
                    record_outcome = results["record"]
                if progress_done and record_outcome is not False:
                    break
                why = self._last_error or "timeout"
                delay = self._record_delays[min(attempt, len(self._record_delays) - 1)]
                attempt += 1
                if deadline - self._clock() <= delay:
                    break
                parts = (("final progress", progress_done), ("session record", record_outcome is not False))
                pending = [what for what, done in parts if not done]
                log.warning("%s not delivered (%s); retrying in %.0fs", " and ".join(pending), why, delay)
                await self._sleep(delay)
        except asyncio.CancelledError:
            if record_outcome is False:
                self._lost("job ended before delivery")
            raise
        if not progress_done:
            log.error("final progress update LOST (%s after %d attempts)", why, attempt + 1)
        if record_outcome is False:
            self._lost(f"{why} after {attempt + 1} attempts")
        elif record_outcome is True and self._record is not None:
            self._delivered(self._record)

    async def _record_attempt(self, seconds: float, deadline: float) -> bool | str:
        if self._record is None:
            self._record = await self._build_record(seconds, deadline)
            if self._record is None:
                return "invalid"
        return await self._send_record(self._record)

    async def _bounded(self, work: Awaitable[bool | str], deadline: float) -> bool | str:
        """``work`` within what is left of the budget; False when it ran out."""
        try:
            return await asyncio.wait_for(work, max(0.1, deadline - self._clock()))
        except TimeoutError:
            self._last_error = "TimeoutError"
            return False

    async def _final_progress(self, status: ProgressStatus) -> bool:
        return await self.send_progress(status, force=True, urgent=True)

    async def _build_record(self, seconds: float, deadline: float) -> SessionRecord | None:
        if not self.context.known:
            # Achievements depend on history; the API may be back by now.
            with contextlib.suppress(TimeoutError):
                self.context = await asyncio.wait_for(
                    self.load_context(force=True), max(0.1, (deadline - self._clock()) / 4)
                )
        today = dt.datetime.fromtimestamp(self._wall(), dt.UTC).date()
        try:
            return session_record(
                user_id=self.learner.user_id,
                session_id=self.session_id,
                seconds=seconds,
                snapshot=self.state.snapshot(),
                context=self.context,
                today=today,
            )
        except ValueError as exc:  # a bug in our own record building; never silently dropped
            log.error("session record invalid, not sent: %s", exc)
            self._count_record("invalid")
            self.record_delivered = False
            return None

    async def _send_record(self, record: SessionRecord) -> bool | str:
        """True when delivered, "rejected" when the API refused it for good, False to retry."""
        try:
            await self.api.create_session(record, force=True)
        except API_UNAVAILABLE as exc:
            self._last_error = type(exc).__name__
            if isinstance(exc, ApiError) and exc.status is not None and not exc.retryable and exc.status != 401:
                log.error("session record rejected by the API: %s", exc)
                self._count_record("rejected")
                self.record_delivered = False
                return "rejected"
            return False
        return True

    def _delivered(self, record: SessionRecord) -> None:
        self._count_record("delivered")
        self.record_delivered = True
        log.info(
            "session record delivered: %d words, %d phrases, performance=%s, achievements=%s",
            len(record.new_vocabulary),
            self.state.snapshot().phrases_practiced,
            record.overall_performance.value,
            ",".join(record.achievements) or "-",
        )

    def _lost(self, why: str) -> None:
        log.error("session record LOST (%s)", why)
        self._count_record("lost")
        self.record_delivered = False

    def _count_record(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.session_records.labels(result).inc()

    async def _release(self, status: ProgressStatus) -> None:
        if self._metrics is not None and self._started_at is not None:
            ended = (
                self._metrics.sessions_failed if status == ProgressStatus.FAILED else self._metrics.sessions_completed
            )
            ended.inc()
            self._metrics.active_sessions.dec()
        if self._metrics is not None:
            self._metrics.set_breaker_state(id(self.api.breaker), None)
        self._set_pending(False)
        with contextlib.suppress(Exception):
            await self.tokens.aclose()
        with contextlib.suppress(Exception):
            await self.api.aclose()
