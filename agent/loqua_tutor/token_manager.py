"""The learner's JWT: obtained by token exchange, refreshed ``margin`` seconds before ``exp``.

A background task sleeps until ``exp - margin`` and refreshes; :meth:`TokenManager.get` refreshes
synchronously when a request finds the token already inside that window (the background task
was late or failed). A 401 reports the refused token (:meth:`TokenManager.refused`).

Single flight: at most one token exchange runs at a time, and every caller that needs one while
it runs - the background refresher, requests inside the window, any number of concurrent 401s -
waits for that exchange's result instead of starting another. A 401 for a token that was already
replaced gets the replacement without a new exchange, and a token younger than
``MIN_TOKEN_AGE_FOR_FORCED_REFRESH`` is not exchanged again because of a 401 (a burst of 401s is
the API refusing, not a stale token; exchanging again would only add load to the auth endpoint).
A failed refresh keeps the old token while it is still valid. ``exp`` is read without verifying
the signature: the agent cannot verify it (the API holds the key) and only needs to know when to
ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import jwt

from loqua_tutor.api_client import ApiError, LoquaApiClient
from loqua_tutor.breaker import CircuitOpenError
from loqua_tutor.crypto import TokenDecryptionError, decrypt_user_token
from loqua_tutor.metrics import JobMetrics

log = logging.getLogger(__name__)

DEFAULT_RETRY_DELAYS = (2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
MIN_REFRESH_DELAY = 1.0
MIN_TOKEN_AGE_FOR_FORCED_REFRESH = 10.0


class TokenUnavailableError(Exception):
    """There is no valid user token (never obtained, or expired and refresh failed)."""

    def __init__(self) -> None:
        super().__init__("no valid user token")


def token_expiry(token: str) -> float | None:
    """``exp`` of a JWT, read without verifying anything; ``None`` when absent or unreadable."""
    try:
        claims = jwt.decode(
            token,
            options={
                "verify_signature": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def refresh_time(obtained_at: float, expires_at: float | None, margin: float) -> float | None:
    """When to refresh: ``exp - margin``; for tokens shorter-lived than the margin, half-way."""
    if expires_at is None:
        return None
    at = expires_at - margin
    if at <= obtained_at:
        at = obtained_at + max(MIN_REFRESH_DELAY, (expires_at - obtained_at) / 2)
    return at


class TokenManager:
    def __init__(
        self,
        exchange: Callable[[], Awaitable[str]],
        *,
        margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        metrics: JobMetrics | None = None,
    ) -> None:
        self._exchange = exchange
        self._margin = margin
        self._clock = clock
        self._sleep = sleep
        self._retry_delays = tuple(retry_delays) or (1.0,)
        self._metrics = metrics
        self._flight: asyncio.Future[str] | None = None
        self._token: str | None = None
        self._obtained_at: float | None = None
        self._expires_at: float | None = None
        self._refresh_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._obtained = asyncio.Event()

    # ---- state -------------------------------------------------------------------------------
    @property
    def has_token(self) -> bool:
        return self._token is not None

    @property
    def ever_obtained(self) -> bool:
        """An exchange has succeeded at least once (the learner's token was ever usable)."""
        return self._obtained.is_set()

    @property
    def expires_at(self) -> float | None:
        return self._expires_at

    @property
    def refresh_at(self) -> float | None:
        return self._refresh_at

    def _valid(self, now: float) -> bool:
        return self._token is not None and (self._expires_at is None or now < self._expires_at)

    def needs_refresh(self) -> bool:
        if self._token is None:
            return True
        return self._refresh_at is not None and self._clock() >= self._refresh_at

    # ---- operations --------------------------------------------------------------------------
    async def get(self) -> str:
        """A usable token; refreshes first when inside the refresh window (sync fallback), and
        waits for an exchange in flight (the current token may just have been refused)."""
        if self._flight is not None or self.needs_refresh():
            with contextlib.suppress(Exception):
                await self.refresh()
        now = self._clock()
        if self._token is None or not self._valid(now):
            raise TokenUnavailableError()
        return self._token

    async def refresh(self, *, force: bool = False) -> str:
        """A fresh token: joins the exchange in flight, or starts one when the current token is
        missing, inside the refresh window, or ``force`` is set. Raises the exchange's error (the
        old token stays if valid)."""
        if self._flight is None and not force and self._token is not None and not self.needs_refresh():
            return self._token
        return await self._exchange_once()

    async def refused(self, token: str) -> str:
        """The API answered 401 to ``token``. Returns the token to retry with: the replacement
        that already exists or is being obtained, or - once per refusal, shared by all callers -
        a new exchange. A token obtained moments ago is kept (see the module docstring)."""
        if self._flight is not None:
            return await self._exchange_once()
        if self._token is not None and self._token != token:
            return self._token  # already replaced since that request was sent
        young = self._obtained_at is not None and self._clock() - self._obtained_at < MIN_TOKEN_AGE_FOR_FORCED_REFRESH
        if self._token is not None and young:
            return self._token
        return await self._exchange_once()

    async def _exchange_once(self) -> str:
        flight = self._flight
        if flight is None:
            flight = self._flight = asyncio.ensure_future(self._run_exchange())
            flight.add_done_callback(self._landed)
        # shield: a waiter that is cancelled does not cancel the exchange the others wait for.
        return await asyncio.shield(flight)

    def _landed(self, flight: asyncio.Future[str]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled():
            flight.exception()  # retrieved: a failure nobody waited for is not "never retrieved"

    async def _run_exchange(self) -> str:
        initial = self._token is None
        try:
            token = await self._exchange()
        except Exception:
            if not initial and self._metrics is not None:
                self._metrics.token_refresh.labels("failure").inc()
            raise
        now = self._clock()
        self._token = token
        self._obtained_at = now
        self._expires_at = token_expiry(token)
        self._refresh_at = refresh_time(now, self._expires_at, self._margin)
        self._obtained.set()
        if not initial and self._metrics is not None:
            self._metrics.token_refresh.labels("success").inc()
        return token

    def start(self) -> None:
        """Run the background refresher (which also keeps trying when the first exchange failed)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="user-token-refresh")

    async def wait_obtained(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._obtained.wait(), timeout)
        return self._obtained.is_set()

    async def _run(self) -> None:
        failures = 0
        while True:
            if self._token is not None and self._refresh_at is None:
                return  # a token without exp: nothing to schedule; a 401 forces a refresh
            if self._token is not None and self._refresh_at is not None:
                delay = self._refresh_at - self._clock()
                if delay > 0:
                    await self._sleep(delay)
                    continue  # re-check: a request may have refreshed synchronously meanwhile
            try:
                await self.refresh()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                failures += 1
                log.warning(
                    "user token %s failed (%s); retrying in %.0fs",
                    "exchange" if self._token is None else "refresh",
                    type(exc).__name__,
                    delay,
                )
                await self._sleep(delay)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        flight = self._flight
        if flight is not None and not flight.done():
            flight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flight


def user_token_exchange(
    api: LoquaApiClient,
    *,
    key: bytes,
    room_name: str,
    user_id: str,
    metrics: JobMetrics | None = None,
) -> Callable[[], Awaitable[str]]:
    """The exchange: ``POST /api/v1/agent/user-token`` with the agent JWT, then decrypt."""

    async def exchange() -> str:
        result = "error"
        try:
            answer = await api.request_user_token(room_name=room_name, user_id=user_id)
            token = decrypt_user_token(answer.encrypted_token, key)
            result = "success"
            return token
        except TokenDecryptionError:
            result = "decrypt_failed"
            log.error("user token exchange: %s (check SHARED_SECRET and SHARED_SECRET_PAD_BYTE)", "decrypt failed")
            raise
        except ApiError as exc:
            if exc.status == 200:  # an answer without an encrypted token: nothing to decrypt
                result = "decrypt_failed"
            if exc.status in (401, 403):
                result = "auth_failed"
                log.error("user token exchange refused (HTTP %d): check AGENT_JWT_TOKEN and AGENT_ID", exc.status)
            raise
        except CircuitOpenError:
            raise
        finally:
            if metrics is not None:
                metrics.token_exchange.labels(result).inc()

    return exchange
