"""Session orchestration: progress only when changed, degradation, finalize exactly once.

The API is an in-memory stand-in behind httpx.MockTransport so outages can be switched on and
off; the session, client, breaker, token manager and crypto are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import jwt
import pytest
from livekit import rtc
from prometheus_client import CollectorRegistry

from loqua_common.tokenkey import derive_key
from loqua_devstack.loqua_api.crypto import encrypt_token
from loqua_tutor.api_client import LoquaApiClient
from loqua_tutor.breaker import BreakerState, CircuitBreaker
from loqua_tutor.cache import TTLCache
from loqua_tutor.contract import ProgressStatus
from loqua_tutor.entrypoint import _follow_learner, build_session, wait_for_learner
from loqua_tutor.learner import Learner, Refusal, learner_from_attributes
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.session import TutorSession
from loqua_tutor.settings import TutorSettings
from loqua_tutor.state import UserContext
from loqua_tutor.token_manager import TokenManager, user_token_exchange

SECRET = "unit-test-shared-secret"
KEY = derive_key(SECRET)
CONTEXT = {
    "user_id": "u1",
    "preferences": {"language_learning": "french", "focus_areas": ["grammar"]},
    "progress": {"total_sessions": 0, "words_learned": 8},
}


class FakeApi:
    def __init__(self) -> None:
        self.down = False
        self.fail_sessions = 0
        self.refuse_exchange = False
        self.requests: list[tuple[str, str, dict]] = []

    def bodies(self, path: str) -> list[dict]:
        return [body for _, p, body in self.requests if p == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, path, body))
        if self.down:
            return httpx.Response(503)
        if path == "/api/v1/agent/user-token" and self.refuse_exchange:
            return httpx.Response(401, json={"error": {"code": "UNAUTHORIZED", "message": "agent token invalid"}})
        if path == "/api/v1/agent/user-token":
            token = jwt.encode({"sub": body["user_id"], "exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")
            return httpx.Response(200, json={"encrypted_token": encrypt_token(token, SECRET, iv=bytes(16))})
        if path.endswith("/context"):
            return httpx.Response(200, json=CONTEXT)
        if path == "/api/v1/agent/health":
            return httpx.Response(200, json={"status": "healthy", "permissions": ["user.progress"]})
        if path == "/api/v1/agent/sessions" and self.fail_sessions:
            self.fail_sessions -= 1
            return httpx.Response(503)
        return httpx.Response(200, json={"success": True})


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def make_session(
    api: FakeApi,
    *,
    cache: TTLCache | None = None,
    fake: FakeTime | None = None,
    finalize_timeout: float = 10.0,
    breaker: CircuitBreaker | None = None,
) -> tuple[TutorSession, JobMetrics]:
    metrics = JobMetrics(CollectorRegistry())
    breaker = breaker or CircuitBreaker(failure_threshold=1000)
    client = LoquaApiClient(
        "http://api.test",
        agent_id="tutor",
        agent_token="agent.jwt.t",
        breaker=breaker,
        metrics=metrics,
        transport=httpx.MockTransport(api),
        sleep=no_sleep,
        max_retries=1,
    )
    tokens = TokenManager(
        user_token_exchange(client, key=KEY, room_name="room", user_id="u1", metrics=metrics),
        metrics=metrics,
        sleep=no_sleep,
    )
    client.set_user_tokens(tokens)
    fake = fake or FakeTime()
    session = TutorSession(
        learner=Learner(user_id="u1", session_id="sess_1_abc"),
        room_name="room",
        api=client,
        tokens=tokens,
        context_cache=cache or TTLCache(300),
        metrics=metrics,
        progress_interval=3600,
        finalize_timeout=finalize_timeout,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    return session, metrics


async def test_start_loads_context_and_checks_health() -> None:
    api = FakeApi()
    session, metrics = make_session(api)
    await session.start()
    assert session.context.known and session.context.target_language == "french"
    assert api.bodies("/api/v1/agent/health") == [{"userId": "u1"}]
    assert metrics.sessions_started._value.get() == 1 and metrics.active_sessions._value.get() == 1
    await session.finalize("test")
    assert metrics.active_sessions._value.get() == 0


async def test_progress_is_sent_only_when_changed() -> None:
    api = FakeApi()
    session, _ = make_session(api)
    await session.start()
    await session.send_progress(ProgressStatus.IN_PROGRESS)
    assert api.bodies("/api/v1/agent/progress") == []
    session.state.record_new_word("bonjour", "hello", "fr")
    await session.send_progress(ProgressStatus.IN_PROGRESS)
    await session.send_progress(ProgressStatus.IN_PROGRESS)
    sent = api.bodies("/api/v1/agent/progress")
    assert len(sent) == 1
    assert sent[0] == {
        "userId": "u1",
        "sessionId": "sess_1_abc",
        "data": {
            "status": "in_progress",
            "progress": {"words_learned": 1, "phrases_practiced": 0, "grammar_points": []},
        },
    }
    await session.finalize()


async def test_progress_queued_while_api_down_then_latest_state_sent() -> None:
    api = FakeApi()
    session, metrics = make_session(api)
    await session.start()
    api.down = True
    session.state.record_new_word("un", "one", "fr")
    assert await session.send_progress(ProgressStatus.IN_PROGRESS) is False
    assert session.progress_pending and metrics.progress_updates_queued._value.get() == 1
    session.state.record_new_word("deux", "two", "fr")  # the conversation goes on
    api.down = False
    assert await session.send_progress(ProgressStatus.IN_PROGRESS) is True
    delivered = [b for b in api.bodies("/api/v1/agent/progress")][-1]
    assert delivered["data"]["progress"]["words_learned"] == 2  # latest state, not the queued one
    assert not session.progress_pending and metrics.progress_updates_queued._value.get() == 0
    await session.finalize()


async def test_cached_context_is_used_while_the_api_is_down() -> None:
    now = [0.0]
    cache_expired: TTLCache[str, UserContext] = TTLCache(300, clock=lambda: now[0])
    cache_expired.set("u1", UserContext.from_api("u1", CONTEXT))
    now[0] = 301.0  # expired: the session asks the API first
    api = FakeApi()
    api.down = True
    session, _ = make_session(api, cache=cache_expired)
    await session.start()
    assert session.context.known and session.context.target_language == "french"  # stale, not default
    await session.finalize()
    empty, _ = make_session(api)
    await empty.start()
    assert not empty.context.known  # nothing cached: defaults, the session still runs
    await empty.finalize()


async def test_finalize_runs_once_under_concurrent_double_end() -> None:
    api = FakeApi()
    session, metrics = make_session(api)
    await session.start()
    session.state.record_new_word("chat", "cat", "fr")
    await asyncio.gather(session.finalize("dispatch deleted"), session.finalize("room closed"), session.finalize())
    await session.finalize("again")
    records = api.bodies("/api/v1/agent/sessions")
    assert len(records) == 1
    assert records[0]["userId"] == "u1" and records[0]["sessionId"] == "sess_1_abc"
    assert "first_conversation" in records[0]["achievements"] and "vocabulary_10" not in records[0]["achievements"]
    finals = [b for b in api.bodies("/api/v1/agent/progress") if b["data"]["status"] != "in_progress"]
    assert [b["data"]["status"] for b in finals] == ["completed"]
    assert metrics.sessions_completed._value.get() == 1
    assert metrics.session_records.labels("delivered")._value.get() == 1
    assert session.record_delivered is True


async def test_a_session_that_never_got_the_learners_token_ends_failed() -> None:
    """The exchange refused for the whole session (agent JWT invalid): nothing of the lesson
    reached the learner's account, so it is not a normal end (the completion-rate alert sees it)."""
    api = FakeApi()
    api.refuse_exchange = True
    session, metrics = make_session(api, finalize_timeout=5)
    await session.start()
    session.state.record_new_word("chat", "cat", "fr")
    await session.finalize("learner left")
    assert metrics.sessions_failed._value.get() == 1 and metrics.sessions_completed._value.get() == 0
    assert metrics.token_exchange.labels("auth_failed")._value.get() >= 1


async def test_a_session_whose_exchange_failed_at_first_but_then_worked_completes() -> None:
    api = FakeApi()
    api.down = True
    session, metrics = make_session(api)
    await session.start()  # degraded: defaults, no token yet
    assert not session.tokens.ever_obtained
    api.down = False
    await session.tokens.get()  # the refresher's next try (or any request) obtains it
    await session.finalize("learner left")
    assert metrics.sessions_completed._value.get() == 1 and metrics.sessions_failed._value.get() == 0
    assert api.bodies("/api/v1/agent/progress")[-1]["data"]["status"] == "completed"


async def test_failed_session_reports_failed() -> None:
    api = FakeApi()
    session, metrics = make_session(api)
    await session.start()
    session.mark_failed()
    await session.finalize()
    assert api.bodies("/api/v1/agent/progress")[-1]["data"]["status"] == "failed"
    assert metrics.sessions_failed._value.get() == 1 and metrics.sessions_completed._value.get() == 0


async def test_session_record_retried_until_delivered() -> None:
    api = FakeApi()
    fake = FakeTime()
    session, metrics = make_session(api, fake=fake, finalize_timeout=60)
    await session.start()
    api.fail_sessions = 5  # the client's own retry gets 2 per round: 3 rounds to get through
    await session.finalize()
    assert len(api.bodies("/api/v1/agent/sessions")) == 6
    assert fake.sleeps[:2] == [1.0, 2.0]
    assert session.record_delivered is True
    assert metrics.session_records.labels("delivered")._value.get() == 1


async def test_session_record_lost_when_the_budget_runs_out() -> None:
    api = FakeApi()
    fake = FakeTime()
    session, metrics = make_session(api, fake=fake, finalize_timeout=10)
    await session.start()
    api.down = True
    await session.finalize()
    assert session.record_delivered is False
    assert metrics.session_records.labels("lost")._value.get() == 1
    assert metrics.sessions_completed._value.get() == 1  # the conversation itself went fine


class HangingApi(FakeApi):
    """FakeApi whose progress path can hang (a latency fault) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.hang_progress = False
        self.hung = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:  # type: ignore[override]
        if self.hang_progress and request.url.path == "/api/v1/agent/progress":
            self.hang_progress = False
            self.hung.set()
            await asyncio.sleep(3600)
        return super().__call__(request)


async def test_hung_half_open_trial_cancelled_at_session_end_loses_nothing() -> None:
    """Issue 16: breaker opened on progress 503s, its half-open trial hung, the session ended while
    the trial was in flight, the API answered again moments later. Both finals must go out."""
    api = HangingApi()
    clock = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5, clock=lambda: clock[0])
    session, metrics = make_session(api, breaker=breaker, finalize_timeout=30)
    await session.start()
    session.state.record_new_word("chat", "cat", "fr")
    api.down = True
    assert not await session.send_progress(ProgressStatus.IN_PROGRESS)  # 2 attempts: 503, 503 → open
    assert breaker.state == BreakerState.OPEN
    clock[0] = 5.0  # half-open: the next progress update is the trial
    api.down = False
    api.hang_progress = True
    session.state.record_phrase("ça va")
    trial = asyncio.create_task(session.send_progress(ProgressStatus.IN_PROGRESS))
    session._loop_task = trial  # the progress loop's update in flight at session end
    await api.hung.wait()
    assert breaker.trials_in_flight == 1
    await session.finalize("dispatch deleted")
    assert breaker.trials_in_flight == 0
    assert session.record_delivered is True
    assert len(api.bodies("/api/v1/agent/sessions")) == 1
    finals = [b for b in api.bodies("/api/v1/agent/progress") if b["data"]["status"] == "completed"]
    assert len(finals) == 1 and finals[0]["data"]["progress"]["phrases_practiced"] == 1
    assert metrics.session_records.labels("lost")._value.get() == 0
    assert breaker.state == BreakerState.CLOSED


async def test_a_hanging_progress_path_does_not_hold_the_record_back() -> None:
    """Final progress and record go out side by side: a hang on one path (longer than the whole
    finalize budget) must not keep the other from being delivered."""
    api = HangingApi()
    session, metrics = make_session(api, finalize_timeout=1.0)
    await session.start()
    session.state.record_phrase("hola")
    api.hang_progress = True
    await session.finalize()
    assert session.record_delivered is True and len(api.bodies("/api/v1/agent/sessions")) == 1
    assert metrics.session_records.labels("lost")._value.get() == 0


async def test_finals_go_out_while_the_breaker_is_still_open() -> None:
    """The API is back but the breaker's reset timeout has not passed: the finals do not wait for it."""
    api = FakeApi()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=3600)
    session, _ = make_session(api, breaker=breaker)
    await session.start()
    api.down = True
    session.state.record_phrase("hola")
    assert not await session.send_progress(ProgressStatus.IN_PROGRESS)
    assert breaker.state == BreakerState.OPEN
    api.down = False
    await session.finalize()
    assert session.record_delivered is True and len(api.bodies("/api/v1/agent/sessions")) == 1
    assert [b["data"]["status"] for b in api.bodies("/api/v1/agent/progress")][-1] == "completed"


async def test_finals_exchange_an_expired_token_while_the_breaker_is_open() -> None:
    """The learner's token ran out during the outage: at the end, the token exchange the finals need
    goes out whatever the breaker's state too (a record is not lost to the breaker's reset timeout)."""
    api = FakeApi()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=3600)
    session, metrics = make_session(api, breaker=breaker, fake=FakeTime(), finalize_timeout=30)
    await session.start()
    api.down = True
    session.state.record_phrase("hola")
    assert not await session.send_progress(ProgressStatus.IN_PROGRESS)
    assert breaker.state == BreakerState.OPEN
    session.tokens._expires_at = session.tokens._refresh_at = time.time() - 1  # expired meanwhile
    api.down = False
    exchanges = len(api.bodies("/api/v1/agent/user-token"))
    await session.finalize()
    assert len(api.bodies("/api/v1/agent/user-token")) == exchanges + 1
    assert session.record_delivered is True and len(api.bodies("/api/v1/agent/sessions")) == 1
    assert [b["data"]["status"] for b in api.bodies("/api/v1/agent/progress")][-1] == "completed"
    assert metrics.session_records.labels("lost")._value.get() == 0


async def test_final_progress_retried_while_its_path_is_down() -> None:
    """Progress path down, sessions path up: the record goes out at once, the progress when it can."""
    api = FakeApi()
    fake = FakeTime()
    session, _ = make_session(api, fake=fake, finalize_timeout=30)
    await session.start()
    session.state.record_phrase("hola")
    failures = {"n": 4}
    inner = api.__call__

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/agent/progress" and failures["n"]:
            failures["n"] -= 1
            return httpx.Response(503)
        return inner(request)

    session.api._client._transport = httpx.MockTransport(flaky)
    await session.finalize()
    assert session.record_delivered is True and len(api.bodies("/api/v1/agent/sessions")) == 1
    completed = [b for b in api.bodies("/api/v1/agent/progress") if b["data"]["status"] == "completed"]
    assert len(completed) == 1


async def test_periodic_loop_sends_changes() -> None:
    api = FakeApi()
    session, _ = make_session(api)
    session._interval = 0.01  # real sleeps for this one
    session._sleep = asyncio.sleep
    await session.start()
    session.state.record_phrase("ça va")
    for _ in range(100):
        if api.bodies("/api/v1/agent/progress"):
            break
        await asyncio.sleep(0.01)
    assert api.bodies("/api/v1/agent/progress")[0]["data"]["progress"]["phrases_practiced"] == 1
    await session.finalize()


def test_learner_attributes() -> None:
    learner = learner_from_attributes(
        "web-1", {"user_id": " u1 ", "sessionId": "sess_5_x", "display_name": "Ana", "email": "a@x"}, 0
    )
    assert learner == Learner("u1", "sess_5_x", "web-1", "Ana", "a@x")
    generated = learner_from_attributes("web-1", {"user_id": "u1"}, 1736937000.0)
    assert generated is not None and generated.session_id.startswith("sess_1736937000000_")
    assert learner_from_attributes("web-1", {"user_id": "  "}, 0) == Refusal("user_id", missing=True)
    assert learner_from_attributes("web-1", {}, 0) == Refusal("user_id", missing=True)


VALID_IDS = ["u1", "5f0c7a1e-3b2d-4c8e-9a6f-0123456789ab", "ana@example.com", "sess_1736937000000_abc123xyz", "a..b"]
HOSTILE_IDS = [
    ".",
    "..",
    "../context",
    ".hidden",
    "a/b",
    "a\\b",
    "a%2F..",
    "a?x=1",
    "a#b",
    "a b",
    "u1\n[2026-01-01T00:00:00.000Z] [INFO] forged",
    "u\x1b[31m",
    "u\x00",
    "ü",
    "u" * 129,
]


@pytest.mark.parametrize("value", VALID_IDS)
def test_valid_ids_pass(value: str) -> None:
    learner = learner_from_attributes("p", {"user_id": value, "sessionId": value}, 0)
    assert isinstance(learner, Learner) and learner.user_id == value and learner.session_id == value


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_hostile_ids_are_refused(value: str) -> None:
    assert learner_from_attributes("p", {"user_id": value}, 0) == Refusal("user_id", missing=False)
    assert learner_from_attributes("p", {"user_id": "u1", "sessionId": value}, 0) == Refusal("sessionId", missing=False)
    refusal = learner_from_attributes("p", {"user_id": value}, 0)
    assert isinstance(refusal, Refusal) and (len(value) < 4 or value not in refusal.message())


def test_display_name_and_email_become_one_printable_line() -> None:
    learner = learner_from_attributes("p", {"user_id": "u1", "display_name": "Ana\n[x]\x1b", "email": "a@x\r\n"}, 0)
    assert isinstance(learner, Learner)
    assert learner.display_name == "Ana [x]" and learner.email == "a@x"


async def test_build_session_wires_real_parts() -> None:
    settings = TutorSettings(
        agent_jwt_token="a.b.c",
        agent_id="tutor",
        api_base_url="http://api.test",
        shared_secret=SECRET,
        livekit_url="ws://lk",
        livekit_api_key="k",
        livekit_api_secret="s",
    )
    api = FakeApi()
    session = build_session(
        settings,
        "room",
        Learner("u1", "sess_1_a"),
        JobMetrics(CollectorRegistry()),
        transport=httpx.MockTransport(api),
        sleep=no_sleep,
    )
    await session.start()
    await session.finalize()
    assert [p for _, p, _ in api.requests][:2] == [
        "/api/v1/agent/user-token",
        "/api/v1/agent/user/u1/context",
    ]
    assert len(api.bodies("/api/v1/agent/sessions")) == 1


class FakeRoom(rtc.EventEmitter):
    def __init__(self) -> None:
        super().__init__()
        self.remote_participants: dict[str, SimpleNamespace] = {}

    def join(
        self, identity: str, user_id: str | None, kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    ) -> None:
        p = SimpleNamespace(identity=identity, kind=kind, attributes={"user_id": user_id} if user_id else {})
        self.remote_participants[identity] = p
        self.emit("participant_connected", p)

    def leave(self, identity: str) -> None:
        self.emit("participant_disconnected", self.remote_participants.pop(identity))


async def test_wait_for_learner_matches_user_and_skips_agents() -> None:
    room = FakeRoom()
    room.join("agent-x", "u1", rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
    waiter = asyncio.create_task(wait_for_learner(room, "u1"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    room.join("someone-else", "u2")
    await asyncio.sleep(0)
    assert not waiter.done()
    room.join("web-2", "u1")  # the learner back under a new identity after a refresh
    assert (await asyncio.wait_for(waiter, 1)).identity == "web-2"
    room.remote_participants["web-2"].attributes = {"user_id": "u1"}
    assert (await wait_for_learner(room)).identity in ("someone-else", "web-2")  # type: ignore[arg-type]
    gone = asyncio.create_task(wait_for_learner(room, "u9"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    room.emit("disconnected")
    with pytest.raises(RuntimeError):
        await gone


async def test_learner_refresh_keeps_the_session() -> None:
    room = FakeRoom()
    room.join("web-1", "u1")
    api = FakeApi()
    session, _ = make_session(api)
    ctx = SimpleNamespace(room=room)
    follower = asyncio.create_task(_follow_learner(ctx, session, "web-1", None))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    room.leave("web-1")
    await asyncio.sleep(0)
    assert not follower.done() and not session.finalized  # leaving is not the end
    room.join("web-1", "u1")
    await asyncio.sleep(0)
    room.leave("web-1")  # and again: it keeps following
    await asyncio.sleep(0)
    assert not follower.done() and not session.finalized
    follower.cancel()
