"""The operator's only door to LiveKit: typed calls, error translation, retries and metrics."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from livekit import api
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from loqua_operator.leader import WriteGate
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import ObservedDispatch
from loqua_operator.settings import OperatorSettings

T = TypeVar("T")
# Calls made inside one sweep (a task sets a fresh counter), so concurrent reconciles don't count.
sweep_calls: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("sweep_calls", default=None)


class LiveKitError(Exception):
    """A LiveKit call failed. ``code`` is Twirp's code, or ``unavailable`` for transport errors."""

    def __init__(self, method: str, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"LiveKit {method} failed: {code}: {message}")
        self.method = method
        self.code = code
        self.retryable = retryable


# Every LiveKit API method the gateway calls (the `method` label of its series).
METHODS = ("CreateDispatch", "CreateRoom", "DeleteDispatch", "ListDispatch", "ListParticipants", "ListRooms")
RETRYABLE_CODES = {"unavailable", "internal", "unknown", "deadline_exceeded", "resource_exhausted", "aborted"}
HTTP_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied"}
# Errors that say the request itself can never succeed as sent: fail the object, do not retry hot.
PERMANENT_CODES = {"invalid_argument", "permission_denied", "unauthenticated", "failed_precondition", "malformed"}


def reason_of(exc: LiveKitError) -> str:
    """The error code as a condition reason (CamelCase): ``permission_denied`` -> ``PermissionDenied``."""
    return (
        "LiveKit" + "".join(part.capitalize() for part in exc.code.split("_") if part) if exc.code else "LiveKitError"
    )


def classify(code: str | None, http_status: int | None) -> tuple[str, bool]:
    """A Twirp error as (code, retryable). livekit-server refuses a bad key with a bare HTTP 401 (code
    ``unknown``); a request that can never succeed as sent is not retried hot (the object fails)."""
    code = str(code or "unknown")
    status = http_status or 0
    if code == "unknown" and status in HTTP_CODES:
        code = HTTP_CODES[status]
    return code, code not in PERMANENT_CODES and (code in RETRYABLE_CODES or status >= 500)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, LiveKitError) and exc.retryable


async def with_retries(
    fn: Callable[[], Awaitable[T]], attempts: int, base_seconds: float, jitter_seconds: float = 0.25
) -> T:
    """Run ``fn`` and retry retryable LiveKit errors ``attempts`` times after 1 s, 2 s, 4 s (times base)."""
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts + 1),
        wait=wait_exponential(multiplier=base_seconds, min=base_seconds) + wait_random(0, jitter_seconds),
        retry=retry_if_exception(is_retryable),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


class LiveKitGateway:
    def __init__(self, settings: OperatorSettings, metrics: OperatorMetrics, gate: WriteGate | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self.gate = gate or WriteGate(elected=False)
        self._api: api.LiveKitAPI | None = None
        self.calls = 0  # LiveKit calls made, for the per-sweep figure
        # The series exist at 0 before the first call or error: per method, and its error that
        # any method can meet (the server unreachable); codes the server answers appear when seen.
        for method in METHODS:
            metrics.livekit_requests.labels(method)
            metrics.livekit_errors.labels(method, "unavailable")

    async def start(self) -> None:
        self._api = api.LiveKitAPI(
            self._settings.livekit_http_url,
            self._settings.livekit_api_key.get_secret_value(),
            self._settings.livekit_api_secret.get_secret_value(),
            timeout=aiohttp.ClientTimeout(total=self._settings.livekit_timeout_seconds),
            failover=False,
        )

    async def close(self) -> None:
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    @property
    def lk(self) -> api.LiveKitAPI:
        if self._api is None:
            raise RuntimeError("LiveKitGateway.start() was not awaited")
        return self._api

    async def _call(self, method: str, fn: Callable[[], Awaitable[T]], write: bool = False) -> T:
        # Writes wait no longer than the Lease lets this replica act (see leader.py); reads get the
        # client's own timeout (LIVEKIT_TIMEOUT_SECONDS).
        deadline = min(self._settings.livekit_timeout_seconds, self.gate.check(f"LiveKit {method}")) if write else None
        started = time.perf_counter()
        self.calls += 1
        counter = sweep_calls.get()
        if counter is not None:
            counter[0] += 1
        self._metrics.livekit_requests.labels(method).inc()
        try:
            result = await (asyncio.wait_for(fn(), deadline) if deadline is not None else fn())
        except api.TwirpError as exc:
            self._metrics.livekit_up.set(1)  # the server answered, even if with an error
            code, retryable = classify(exc.code, exc.status)
            self._metrics.livekit_errors.labels(method, code).inc()
            raise LiveKitError(method, code, exc.message or "", retryable) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._metrics.livekit_up.set(0)
            self._metrics.livekit_errors.labels(method, "unavailable").inc()
            reason = type(exc).__name__ if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            raise LiveKitError(method, "unavailable", reason, retryable=True) from None
        finally:
            self._metrics.livekit_duration.labels(method).observe(time.perf_counter() - started)
        self._metrics.livekit_up.set(1)
        return result

    # ---- dispatches ------------------------------------------------------------------------------
    async def list_dispatches(self, room: str) -> list[ObservedDispatch]:
        found = await self._call("ListDispatch", lambda: self.lk.agent_dispatch.list_dispatch(room))
        return [ObservedDispatch.from_livekit(d) for d in found]

    async def create_dispatch(self, room: str, agent_name: str, metadata: str) -> ObservedDispatch:
        req = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
        created = await self._call("CreateDispatch", lambda: self.lk.agent_dispatch.create_dispatch(req), write=True)
        return ObservedDispatch.from_livekit(created)

    async def delete_dispatch(self, room: str, dispatch_id: str) -> bool:
        """Delete one dispatch; False when LiveKit no longer had it (not an error)."""
        try:
            await self._call(
                "DeleteDispatch", lambda: self.lk.agent_dispatch.delete_dispatch(dispatch_id, room), write=True
            )
        except LiveKitError as exc:
            if exc.code == "not_found":
                return False
            raise
        return True

    # ---- rooms -----------------------------------------------------------------------------------
    async def ensure_room(self, room: str, empty_timeout: int, departure_timeout: int) -> str:
        """Create the room (no-op when it exists) with timeouts that outlast the object's TTL; its sid."""
        req = api.CreateRoomRequest(name=room, empty_timeout=empty_timeout, departure_timeout=departure_timeout)
        created = await self._call("CreateRoom", lambda: self.lk.room.create_room(req), write=True)
        return str(created.sid or "")

    async def list_rooms(self, names: list[str] | None = None) -> list[api.Room]:
        resp = await self._call("ListRooms", lambda: self.lk.room.list_rooms(api.ListRoomsRequest(names=names or [])))
        return list(resp.rooms)

    async def list_participants(self, room: str) -> list[api.ParticipantInfo]:
        resp = await self._call(
            "ListParticipants", lambda: self.lk.room.list_participants(api.ListParticipantsRequest(room=room))
        )
        return list(resp.participants)
