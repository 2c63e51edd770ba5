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
from loqua_tutor.api_client import LoquaApiClient
from loqua_tutor.breaker import CircuitBreaker
from loqua_tutor.cache import TTLCache
from loqua_tutor.crypto import encrypt_token
from loqua_tutor.entrypoint import _follow_learner, build_session, learner_from_attributes, wait_for_learner
from loqua_tutor.metrics import JobMetrics
from loqua_tutor.session import Learner, TutorSession
from loqua_tutor.settings import TutorSettings
from loqua_tutor.token_manager import TokenManager, user_token_exchange
from loqua_tutor.tracker import ProgressStatus, UserContext

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
        self.requests: list[tuple[str, str, dict]] = []

    def bodies(self, path: str) -> list[dict]:
        return [body for _, p, body in self.requests if p == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, path, body))
        if self.down:
            return httpx.Response(503)
        if path == "/api/v1/agent/user-token":
            token = jwt.encode({"sub": body["user_id"], "exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")
            return httpx.Response(200, json={"encrypted_token": encrypt_token(token, KEY, bytes(16))})
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
) -> tuple[TutorSession, JobMetrics]:
    metrics = JobMetrics(CollectorRegistry())
    breaker = CircuitBreaker(failure_threshold=1000)
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
    session.tracker.record_new_word("bonjour", "hello", "fr")
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
    session.tracker.record_new_word("un", "one", "fr")
    assert await session.send_progress(ProgressStatus.IN_PROGRESS) is False
    assert session.progress_pending and metrics.progress_updates_queued._value.get() == 1
    session.tracker.record_new_word("deux", "two", "fr")  # the conversation goes on
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
    session.tracker.record_new_word("chat", "cat", "fr")
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


async def test_periodic_loop_sends_changes() -> None:
    api = FakeApi()
    session, _ = make_session(api)
    session._interval = 0.01  # real sleeps for this one
    session._sleep = asyncio.sleep
    await session.start()
    session.tracker.record_phrase("ça va")
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
    assert learner_from_attributes("web-1", {"user_id": "  "}, 0) is None
    assert learner_from_attributes("web-1", {}, 0) is None


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
