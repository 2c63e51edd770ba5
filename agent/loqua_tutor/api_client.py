"""The Loqua API client: one pooled ``httpx.AsyncClient`` for every endpoint of seed 003.

Every request carries ``Authorization: Bearer``, ``X-Agent-ID`` and ``Content-Type``. Policy:

- retries (tenacity): at most ``max_retries`` (3) after the first attempt, on network errors, 5xx
  and 429; exponential backoff with jitter, or the answer's ``Retry-After`` on 429 and 503 (delta
  seconds or an HTTP date, capped at ``max_retry_after``; a value that is neither is ignored);
  never on other 4xx;
- a circuit breaker sees every attempt (network errors and 5xx are failures) and fails calls
  fast while open; each attempt holds a breaker permit that is released in ``finally`` (a
  cancelled or timed-out trial never wedges the half-open state); ``force=True`` calls go out
  whatever the breaker's state, and after :meth:`LoquaApiClient.bypass_breaker` (the end of a
  session) every call does - the token exchange the final calls may need included;
- a 401 on a user-token endpoint asks for a new user token - one exchange shared by every call
  that met a 401 with the same token (see ``TokenManager.refresh``) - and tries once more;
- metrics per attempt with the endpoint *template* as label (never a raw user id).

Errors never carry tokens: messages name the endpoint template and the status only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from loqua_tutor.breaker import CircuitBreaker, CircuitOpenError, Permit
from loqua_tutor.contract import (
    HEALTH,
    PROGRESS,
    SESSIONS,
    USER_CONTEXT,
    USER_TOKEN,
    HealthRequest,
    HealthResponse,
    ProgressAck,
    ProgressUpdate,
    SessionCreated,
    SessionRecord,
    UserContextResponse,
    UserTokenRequest,
    UserTokenResponse,
    body,
)
from loqua_tutor.metrics import JobMetrics

log = logging.getLogger(__name__)

# The endpoint templates are the metric label values; their home is the contract.
__all__ = ["HEALTH", "PROGRESS", "SESSIONS", "USER_CONTEXT", "USER_TOKEN", "ApiError", "LoquaApiClient"]

Auth = Literal["agent", "user"]


class ApiError(Exception):
    """A failed call. ``status`` is None for network errors and timeouts."""

    def __init__(
        self,
        endpoint: str,
        method: str,
        status: int | None,
        detail: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        where = f"{method} {endpoint}"
        super().__init__(f"{where}: {detail}" if status is None else f"{where}: HTTP {status} {detail}".rstrip())
        self.endpoint = endpoint
        self.method = method
        self.status = status
        self.retry_after = retry_after
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


class UserTokens(Protocol):
    async def get(self) -> str: ...

    async def refused(self, token: str) -> str:
        """The API refused ``token``: a replacement (shared with concurrent callers)."""
        ...


_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also accepts '²'
MAX_RETRY_AFTER_CHARS = 64


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (RFC 9110) as seconds from now: delta-seconds or an HTTP date.

    ``None`` for anything else - absent, empty, negative, fractional, non-ASCII digits, an
    unparsable or absurd date: the caller then uses its own backoff. Never raises."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except Exception:  # email.utils raises several types for odd input; all mean "ignore it"
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


_ssl_context: ssl.SSLContext | None = None
_ssl_lock = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (~200 ms of blocking work),
    too slow to repeat on the event loop for every session. The job prewarm builds it early."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


M = TypeVar("M", bound=BaseModel)


@dataclass
class _Call:
    """One call, through its retries. ``token``: the user token of its latest attempt."""

    method: str
    endpoint: str
    path: str
    body: Mapping[str, Any] | None
    auth: Auth
    force: bool
    token: str | None = None


def _parse(model: type[M], answer: dict[str, Any], endpoint: str, method: str) -> M:
    try:
        return model.model_validate(answer)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:3])
        raise ApiError(endpoint, method, 200, f"response does not match seed 003 ({fields})") from None


def _path_segment(name: str, value: str) -> str:
    """One URL path segment. Percent-encoding keeps '/' out, but not a dot segment: '..' survives
    ``quote()`` and httpx then removes it ('/user/../context' is requested as '/context'). Callers
    pass validated ids (loqua_tutor.learner); this is the last line of defence."""
    if value in ("", ".", ".."):
        raise ValueError(f"{name} cannot be empty, '.' or '..' in a URL path")
    return quote(value, safe="")


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.retryable


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:64] if isinstance(code, str) else None


class LoquaApiClient:
    def __init__(
        self,
        base_url: str,
        *,
        agent_id: str,
        agent_token: str,
        breaker: CircuitBreaker,
        metrics: JobMetrics | None = None,
        user_tokens: UserTokens | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        retry_base: float = 0.5,
        retry_max: float = 8.0,
        max_retry_after: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._agent_token = agent_token
        self._agent_id = agent_id
        self.breaker = breaker
        self._metrics = metrics
        self._user_tokens = user_tokens
        self._max_retries = max_retries
        self._backoff = wait_exponential_jitter(multiplier=retry_base, max=retry_max, jitter=retry_base)
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._bypass = False
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "X-Agent-ID": agent_id,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=10, max_keepalive_connections=5),
            verify=shared_ssl_context(),
            transport=transport,
        )

    def set_user_tokens(self, tokens: UserTokens) -> None:
        self._user_tokens = tokens

    async def aclose(self) -> None:
        await self._client.aclose()

    def bypass_breaker(self) -> None:
        """From now on every call goes out whatever the breaker's state (outcomes still recorded):
        the end of a session, whose final calls must reach the API as soon as it answers."""
        self._bypass = True

    # ---- the five endpoints (bodies: loqua_tutor.contract) ----------------------------------------
    async def request_user_token(self, *, room_name: str, user_id: str) -> UserTokenResponse:
        request = UserTokenRequest(room_name=room_name, user_id=user_id, agent_id=self._agent_id)
        answer = await self.call("POST", USER_TOKEN, json_body=body(request), auth="agent")
        return _parse(UserTokenResponse, answer, USER_TOKEN, "POST")

    async def get_user_context(self, user_id: str, *, force: bool = False) -> UserContextResponse:
        answer = await self.call("GET", USER_CONTEXT, params={"user_id": user_id}, auth="user", force=force)
        return _parse(UserContextResponse, answer, USER_CONTEXT, "GET")

    async def update_progress(self, update: ProgressUpdate, *, force: bool = False) -> ProgressAck:
        answer = await self.call("POST", PROGRESS, json_body=body(update), auth="user", force=force)
        return _parse(ProgressAck, answer, PROGRESS, "POST")

    async def create_session(self, record: SessionRecord, *, force: bool = False) -> SessionCreated:
        answer = await self.call("POST", SESSIONS, json_body=body(record), auth="user", force=force)
        return _parse(SessionCreated, answer, SESSIONS, "POST")

    async def health(self, user_id: str) -> HealthResponse:
        answer = await self.call("POST", HEALTH, json_body=body(HealthRequest(userId=user_id)), auth="user")
        return _parse(HealthResponse, answer, HEALTH, "POST")

    # ---- machinery ---------------------------------------------------------------------------
    async def call(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        auth: Auth = "user",
        force: bool = False,
    ) -> dict[str, Any]:
        """One API call with retries. ``force``: go out even while the breaker is open.
        ``params`` fill the endpoint template; callers pass validated ids (no dot segments)."""
        path = endpoint.format(**{k: _path_segment(k, v) for k, v in (params or {}).items()})
        request = _Call(method, endpoint, path, json_body, auth, force or self._bypass)
        try:
            return await self._with_retries(request)
        except ApiError as exc:
            if exc.status != 401 or auth != "user" or self._user_tokens is None or request.token is None:
                raise
        # The API refused the user token before we expected (revoked, clock skew): get a new one -
        # or the one another call already got for the same refusal - and try once more.
        await self._user_tokens.refused(request.token)
        return await self._with_retries(request)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return min(exc.retry_after, self._max_retry_after)
        return float(self._backoff(state))

    @staticmethod
    def _log_retry(request: _Call, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        told = isinstance(exc, ApiError) and exc.retry_after is not None
        log.debug(
            "retrying %s %s in %.1fs (%s; attempt %d): %s",
            request.method,
            request.endpoint,
            state.upcoming_sleep,
            "Retry-After" if told else "backoff",
            state.attempt_number,
            exc,
        )

    async def _with_retries(self, request: _Call) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda s: self._log_retry(request, s),
        )
        result: dict[str, Any] = {}
        async for attempt in retrying:
            with attempt:
                result = await self._attempt(request)
        return result

    def _count(self, endpoint: str, method: str, status: str, seconds: float | None) -> None:
        if self._metrics is None:
            return
        self._metrics.api_requests.labels(endpoint, method, status).inc()
        if seconds is not None:
            self._metrics.api_request_duration.labels(endpoint, method, status).observe(seconds)

    async def _attempt(self, request: _Call) -> dict[str, Any]:
        if request.auth == "user":
            if self._user_tokens is None:
                raise RuntimeError("no user token source configured")
            token = request.token = await self._user_tokens.get()
        else:
            token = self._agent_token
        try:
            permit = self.breaker.permit(force=request.force)
        except CircuitOpenError:
            self._count(request.endpoint, request.method, "circuit_open", None)
            raise
        # The permit is released on every way out of this block, cancellation included.
        with permit:
            return await self._send(permit, request.method, request.endpoint, request.path, request.body, token)

    async def _send(
        self, permit: Permit, method: str, endpoint: str, path: str, body: Mapping[str, Any] | None, token: str
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            response = await self._client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            permit.failure()
            self._count(endpoint, method, "error", time.perf_counter() - started)
            # The type only: httpx messages may echo request details.
            raise ApiError(endpoint, method, None, f"network error ({type(exc).__name__})") from None
        status = response.status_code
        self._count(endpoint, method, str(status), time.perf_counter() - started)
        if status >= 500:
            permit.failure()
            retry_after = parse_retry_after(response.headers.get("Retry-After")) if status == 503 else None
            code = _error_code(response)
            raise ApiError(endpoint, method, status, "server error", code=code, retry_after=retry_after)
        permit.success()  # any non-5xx answer means the API is up
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise ApiError(endpoint, method, status, "rate limited", retry_after=retry_after)
        if status in (401, 403) and self._metrics is not None:
            self._metrics.auth_failures.inc()
        if status >= 400:
            code = _error_code(response)
            raise ApiError(endpoint, method, status, code or "", code=code)
        try:
            data = response.json()
        except ValueError:
            raise ApiError(endpoint, method, status, "response is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(endpoint, method, status, "response is not a JSON object")
        return data
