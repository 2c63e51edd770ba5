"""The tutor worker end to end, no mocks: `loqua-tutor start` as a real process registered with the
stack's livekit-server, explicit dispatches (livekit-api), real learners (the rtc SDK, with the Loqua
web app's attributes) driving the tutor's tools over the ``tutor.tool`` RPC, and the reference Loqua
API (token exchange, context, progress, session records, injected faults).

The stack is shared: every room, user and agent name is unique to this module, fault rules are
scoped to our user's paths where the API allows it, and the ones that are not (the progress path)
are short, limited to a few answers, and removed by id in a ``finally``.

The worker is stopped with SIGTERM to its main process only (what the kubelet does); a SIGTERM to
the whole process group during a session is test_tutor_drain.py's subject.

Tests 2-5 follow one learner's session (join → tools → page refresh → end → log scan). Each step is
run on demand by :class:`MainScenario`, so any of these tests also runs alone (``-k``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from loqua_devstack.learner import Learner
from loqua_devstack.loqua_api.tokens import mint_user_token
from loqua_devstack.services import ServiceProcess
from tests.e2e.conftest import EXECUTOR, PARTICIPANT_WAIT_TIMEOUT, PROGRESS_INTERVAL, Cleanup, WorkerMetrics, until
from tests.integration.conftest import live_dispatches

pytestmark = pytest.mark.e2e

PROGRESS_PATH = "/api/v1/agent/progress"
CONTEXT_TEMPLATE = "/api/v1/agent/user/{user_id}/context"
REQUESTS = "loqua_tutor_api_requests_total"
AGENT_KIND = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
# Generous bounds for a loaded 2-core box; every wait polls and returns as soon as it can.
AGENT_JOIN_TIMEOUT = 45.0
API_TIMEOUT = 30.0


# ---- helpers ---------------------------------------------------------------------------------------


def seed_session_id() -> str:
    """The app's session id format (seed 003): ``sess_<ms>_<random>``."""
    return f"sess_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


async def create_user(admin: httpx.AsyncClient, tag: str) -> str:
    user_id = f"e2e-{tag}-{uuid.uuid4().hex[:8]}"
    resp = await admin.post(
        "/admin/users",
        json={
            "user_id": user_id,
            "email": f"{user_id}@example.com",
            "display_name": f"E2E {tag}",
            "preferences": {"language_learning": "spanish", "native_language": "english"},
        },
    )
    assert resp.status_code == 201, resp.text
    return user_id


async def user_records(admin: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    resp = await admin.get(f"/admin/users/{user_id}/records")
    resp.raise_for_status()
    return resp.json()


async def agents_in_room(lk: api.LiveKitAPI, room: str) -> list[api.ParticipantInfo]:
    """Agent participants of a room, asked from livekit-server ([] once the room is gone)."""
    try:
        participants = (await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants
    except api.TwirpError as exc:
        if exc.code == "not_found":
            return []
        raise
    return [p for p in participants if p.kind == api.ParticipantInfo.Kind.AGENT]


async def new_room(lk: api.LiveKitAPI, rooms: list[str], agent_name: str, *, dispatch: bool = True) -> str:
    room = f"{agent_name}-{uuid.uuid4().hex[:8]}"
    await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=300, departure_timeout=60))
    rooms.append(room)
    if dispatch:
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent_name, room=room))
    return room


async def delete_dispatches(lk: api.LiveKitAPI, room: str, agent_name: str) -> int:
    found = await live_dispatches(lk, room, agent_name)
    for d in found:
        await lk.agent_dispatch.delete_dispatch(d.id, room)
    return len(found)


@dataclass
class Driven:
    """What a test did through the tools: the totals the API must end up with."""

    vocabulary: list[dict[str, str]] = field(default_factory=list)
    phrases: int = 0
    scores: list[float] = field(default_factory=list)
    grammar: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    def progress(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "words_learned": len(self.vocabulary),
            "phrases_practiced": self.phrases,
            "grammar_points": list(self.grammar),
        }
        if self.scores:
            body["pronunciation_score"] = round(statistics.fmean(self.scores))
        return body


@dataclass
class Session:
    """One learner in one dispatched room, and the agent serving them."""

    env: dict[str, str]
    lk: api.LiveKitAPI
    admin: httpx.AsyncClient
    agent_name: str
    user_id: str
    session_id: str
    room: str
    learner: Learner
    agent_identity: str = ""
    driven: Driven = field(default_factory=Driven)
    ended: bool = False

    def agent(self) -> rtc.RemoteParticipant | None:
        agents = [
            p for p in self.learner.agents_in_room() if p.attributes.get("loqua.agent_id") == self.env["AGENT_ID"]
        ]
        return agents[0] if agents else None

    async def wait_agent_active(self, timeout: float = AGENT_JOIN_TIMEOUT) -> rtc.RemoteParticipant:
        def active() -> rtc.RemoteParticipant | None:
            agent = self.agent()
            if agent is None or agent.attributes.get("loqua.status") != "active":
                return None
            return agent if agent.attributes.get("loqua.session_id") == self.session_id else None

        agent = await until(active, f"the agent to start session {self.session_id} in {self.room}", timeout)
        self.agent_identity = agent.identity
        return agent

    async def tool(self, name: str, **args: Any) -> dict[str, Any]:
        """Call a tool over the agent's ``tutor.tool`` RPC and keep track of what it recorded."""
        assert self.learner.room is not None and self.agent_identity
        reply = json.loads(
            await self.learner.room.local_participant.perform_rpc(
                destination_identity=self.agent_identity,
                method="tutor.tool",
                payload=json.dumps({"tool": name, "args": args}),
                response_timeout=15,
            )
        )
        if reply.get("ok"):
            assert reply["session_id"] == self.session_id, reply
            result = reply["result"]
            d = self.driven
            if name == "new_word" and result["added"]:
                d.vocabulary.append(dict(args))
            elif name in ("phrase_practised", "phrase_practiced"):
                d.phrases += 1
            elif name == "pronunciation_score":
                d.scores.append(float(args["score"]))
            elif name == "grammar_point" and result["added"]:
                d.grammar.append(args["point"])
            elif name == "topic" and result["added"]:
                d.topics.append(args["topic"])
        return reply

    async def records(self) -> dict[str, Any]:
        return await user_records(self.admin, self.user_id)

    def progress_of_session(self, records: dict[str, Any], status: str | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in records["progress_updates"]
            if p["session_id"] == self.session_id and (status is None or p["data"]["status"] == status)
        ]

    async def wait_progress(self, expected: dict[str, Any], timeout: float = API_TIMEOUT) -> dict[str, Any]:
        """An ``in_progress`` update carrying exactly ``expected`` (the running totals) reaches the API."""

        async def arrived() -> dict[str, Any] | None:
            updates = self.progress_of_session(await self.records(), "in_progress")
            return next((p for p in reversed(updates) if p["data"].get("progress") == expected), None)

        return await until(arrived, f"progress {expected} of {self.session_id}", timeout)

    async def end(self) -> None:
        """The learner leaves and the dispatch is deleted (what the operator does when the TTL runs out)."""
        await self.learner.leave()
        deleted = await delete_dispatches(self.lk, self.room, self.agent_name)
        assert deleted == 1, f"expected one dispatch for {self.agent_name} in {self.room}, found {deleted}"
        self.ended = True

    async def final_records(self, metrics: WorkerMetrics, completed_before: float) -> dict[str, Any]:
        """After :meth:`end`: wait for the session record and the final progress, then for the job to
        be over (agent gone, session counted as completed) so that no later write can follow."""

        async def delivered() -> dict[str, Any] | None:
            rec = await self.records()
            has_session = any(s["session_id"] == self.session_id for s in rec["sessions"])
            return rec if has_session and self.progress_of_session(rec, "completed") else None

        await until(delivered, f"the session record of {self.session_id}", API_TIMEOUT + 30)
        await until(lambda: self._completed(metrics, completed_before), "the session counted as completed", API_TIMEOUT)
        await until(self._agent_gone, f"the agent to leave {self.room}", API_TIMEOUT)
        return await self.records()

    async def _completed(self, metrics: WorkerMetrics, before: float) -> bool:
        return await metrics.value("loqua_tutor_sessions_completed_total") > before

    async def _agent_gone(self) -> bool:
        return not await agents_in_room(self.lk, self.room)

    def assert_stored_once(self, records: dict[str, Any]) -> dict[str, Any]:
        """The session record and the final progress exist exactly once, with the driven totals."""
        sessions = [s for s in records["sessions"] if s["session_id"] == self.session_id]
        assert len(sessions) == 1, sessions
        completed = self.progress_of_session(records, "completed")
        assert len(completed) == 1, completed
        assert not self.progress_of_session(records, "failed")
        assert completed[0]["agent_id"] == self.env["AGENT_ID"]
        assert completed[0]["data"]["progress"] == self.driven.progress()
        record = sessions[0]
        d = self.driven
        assert record["user_id"] == self.user_id and record["agent_id"] == self.env["AGENT_ID"]
        assert [(v["word"], v["translation"], v["language"]) for v in record["new_vocabulary"]] == [
            (v["word"], v["translation"], v["language"]) for v in d.vocabulary
        ]
        assert record["grammar_points"] == d.grammar
        assert record["pronunciation_practice_count"] == len(d.scores)
        assert record["topics_covered"] == (d.topics or d.grammar[:3] or ["conversation"])
        assert record["duration_minutes"] >= 1
        assert record["overall_performance"] in ("excellent", "good", "fair", "needs_improvement")
        return record

    async def context(self) -> dict[str, Any]:
        """The user context as the agent endpoints serve it (a user JWT minted for this room)."""
        token = mint_user_token(self.env["LOQUA_JWT_SECRET"], self.user_id, self.room, self.env["AGENT_ID"], 300)
        async with httpx.AsyncClient(base_url=self.env["LOQUA_API_URL"], timeout=15) as client:
            resp = await client.get(
                CONTEXT_TEMPLATE.format(user_id=self.user_id),
                headers={"Authorization": f"Bearer {token}", "X-Agent-ID": self.env["AGENT_ID"]},
            )
        resp.raise_for_status()
        return resp.json()


async def open_session(
    env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    agent_name: str,
    rooms: list[str],
    learners: list[Learner],
    tag: str,
    before_join: Callable[[str], Awaitable[None]] | None = None,
) -> Session:
    """A new user, a room with a dispatch for our agent name, the learner joined, the session active."""
    user_id = await create_user(admin, tag)
    if before_join is not None:
        await before_join(user_id)
    room = await new_room(lk, rooms, agent_name)
    session_id = seed_session_id()
    learner = Learner(
        env,
        room,
        user_id=user_id,
        sessionId=session_id,
        display_name=f"E2E {tag}",
        email=f"{user_id}@example.com",
    )
    learners.append(learner)
    await learner.join()
    session = Session(env, lk, admin, agent_name, user_id, session_id, room, learner)
    await session.wait_agent_active()
    return session


# ---- fixtures --------------------------------------------------------------------------------------


class MainScenario:
    """One learner's session through tests 2-5; each step runs once, on first demand."""

    def __init__(
        self,
        env: dict[str, str],
        lk: api.LiveKitAPI,
        admin: httpx.AsyncClient,
        agent_name: str,
        metrics: WorkerMetrics,
        cleanup: Cleanup,
    ) -> None:
        self.env, self.lk, self.admin, self.agent_name, self.metrics = env, lk, admin, agent_name, metrics
        self.cleanup = cleanup
        self.session: Session | None = None
        self.exchanges_before = 0.0
        self.completed_before = 0.0
        self.progress_seen: dict[str, Any] | None = None
        self.refreshed = False
        self.agents_seen: list[str] = []
        self.identities: list[str] = []
        self.final: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def started(self) -> Session:
        async with self._lock:
            if self.session is None:
                self.exchanges_before = await self.metrics.value("loqua_tutor_token_exchange_total", result="success")
                self.completed_before = await self.metrics.value("loqua_tutor_sessions_completed_total")
                self.session = await open_session(
                    self.env, self.lk, self.admin, self.agent_name, self.cleanup.rooms, self.cleanup.learners, "main"
                )
            return self.session

    async def tools_driven(self) -> dict[str, Any]:
        """new_word, phrase_practised, pronunciation_score, grammar_point over RPC; the running totals
        reach the API as an ``in_progress`` update. Returns that update."""
        s = await self.started()
        async with self._lock:
            if self.progress_seen is None:
                for word, translation in (("hola", "hello"), ("gracias", "thank you")):
                    reply = await s.tool("new_word", word=word, translation=translation, language="es")
                    assert reply["ok"] and reply["result"]["added"], reply
                again = await s.tool("new_word", word="hola", translation="hello", language="es")
                assert again["ok"] and not again["result"]["added"], again  # counted once per session
                assert (await s.tool("phrase_practised", phrase="¿Cómo estás?"))["ok"]
                assert (await s.tool("phrase_practiced", phrase="Muy bien"))["ok"]  # the alias
                assert (await s.tool("pronunciation_score", score=82, text="hola"))["ok"]
                scored = await s.tool("pronunciation_score", score=91)
                assert scored["ok"] and scored["result"] == {"average": 86.5, "count": 2}, scored
                bad = await s.tool("pronunciation_score", score=150)
                assert not bad["ok"] and "between 0 and 100" in bad["error"], bad
                grammar = await s.tool("grammar_point", point="present_tense")
                assert grammar["ok"] and grammar["result"]["grammar_points"] == ["present_tense"], grammar
                state = (await s.tool("state"))["result"]
                assert (state["words_learned"], state["phrases_practiced"], state["pronunciation_count"]) == (2, 2, 2)
                self.progress_seen = await s.wait_progress(s.driven.progress())
            return self.progress_seen

    async def refreshed_once(self) -> list[str]:
        """The learner reloads the page twice: leave + rejoin under the same identity, then (a new tab)
        under a new identity with the same ``user_id`` and ``sessionId``. Returns the agent's identity
        before, after the first and after the second; ``self.identities`` the learner's."""
        s = await self.started()
        async with self._lock:
            if not self.refreshed:
                agents = [s.agent_identity]
                self.identities = [s.learner.identity]
                await s.learner.refresh()
                agents.append((await s.wait_agent_active()).identity)
                await s.learner.leave()
                s.learner = Learner(self.env, s.room, **s.learner.attributes)
                self.cleanup.learners.append(s.learner)
                await s.learner.join()
                self.identities.append(s.learner.identity)
                agents.append((await s.wait_agent_active()).identity)
                self.agents_seen = agents
                self.refreshed = True
            return self.agents_seen

    async def ended(self) -> dict[str, Any]:
        await self.tools_driven()
        s = await self.started()
        async with self._lock:
            if self.final is None:
                await s.end()
                self.final = await s.final_records(self.metrics, self.completed_before)
            return self.final


@pytest.fixture(scope="module")
async def scenario(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    tutor_agent_name: str,
    worker_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> MainScenario:
    return MainScenario(stack_env, lk, admin, tutor_agent_name, worker_metrics, cleanup)


# ---- 1. registration -------------------------------------------------------------------------------


async def test_start_registers_with_livekit(
    tutor_worker: ServiceProcess, worker_metrics: WorkerMetrics, tutor_agent_name: str
) -> None:
    code, body = tutor_worker.health()
    assert code == 200 and "ok" in body, (code, body)  # "starting" until registered
    log = tutor_worker.log_text()
    registered = re.search(r"registered with LiveKit as (AW_\w+): agent_name=(\S+) \(explicit dispatch\)", log)
    assert registered, log[-2000:]
    assert registered.group(2) == tutor_agent_name
    assert f"executor={EXECUTOR}" in log
    info = [labels for name, labels, _ in await worker_metrics.samples() if name == "loqua_tutor_build_info"]
    assert info and info[0]["agent_name"] == tutor_agent_name and info[0]["executor"] == EXECUTOR, info
    assert await worker_metrics.value("loqua_tutor_worker_capacity") == 10  # basic-conversation tier


# ---- 2. dispatch, join, token exchange, tools, progress --------------------------------------------


async def test_dispatched_agent_joins_exchanges_token_and_records_progress(
    scenario: MainScenario, stack_env: dict[str, str], worker_metrics: WorkerMetrics
) -> None:
    s = await scenario.started()
    agent = s.agent()
    assert agent is not None and agent.kind == AGENT_KIND
    assert agent.attributes.get("lk.agent_name") == scenario.agent_name, agent.attributes
    assert agent.attributes["loqua.agent_id"] == stack_env["AGENT_ID"]
    assert len(s.learner.agents_in_room()) == 1

    # The agent exchanged its JWT for the learner's token and read the context with it.
    audit = (await s.records())["audit"]
    actions = [a["action"] for a in audit if a["agent_id"] == stack_env["AGENT_ID"]]
    assert actions[:1] == ["user_token"], audit
    assert {"context", "health"} <= set(actions), audit
    assert await worker_metrics.value("loqua_tutor_token_exchange_total", result="success") > scenario.exchanges_before

    update = await scenario.tools_driven()
    assert update["agent_id"] == stack_env["AGENT_ID"]
    assert update["data"]["progress"] == {
        "words_learned": 2,
        "phrases_practiced": 2,
        "pronunciation_score": 86,  # round(86.5): Python rounds half to even
        "grammar_points": ["present_tense"],
    }
    assert await worker_metrics.value("loqua_tutor_tool_calls_total", tool="new_word", result="ok") >= 3
    assert await worker_metrics.value("loqua_tutor_tool_calls_total", tool="pronunciation_score", result="invalid") >= 1


# ---- 3. page refresh -------------------------------------------------------------------------------


async def test_refresh_keeps_the_same_agent_and_session(scenario: MainScenario, tutor_worker: ServiceProcess) -> None:
    s = await scenario.started()
    agents = await scenario.refreshed_once()
    assert len(set(agents)) == 1, f"a page refresh must not replace the agent: {agents}"
    assert len(s.learner.agents_in_room()) == 1
    assert len(await live_dispatches(s.lk, s.room, scenario.agent_name)) == 1
    # The agent followed the learner to the new identity (same user_id). A quick rejoin under the same
    # identity may reach the agent as no change at all (livekit-server replaces the participant), so
    # only the new identity is sure to be logged.
    new_identity = scenario.identities[-1]
    await until(
        lambda: f"learner is back (identity {new_identity})" in tutor_worker.log_text(),
        f"the agent to see the learner back as {new_identity}",
        15,
    )
    # The session carries on: tools after the refresh add to the same session.
    reply = await s.tool("topic", topic="greetings")
    assert reply["ok"] and reply["session_id"] == s.session_id, reply
    state = (await s.tool("state"))["result"]
    assert state["words_learned"] == len(s.driven.vocabulary) and state["topics"] == ["greetings"], state


# ---- 4. the end: records exactly once --------------------------------------------------------------


async def test_end_of_session_writes_record_and_final_progress_exactly_once(scenario: MainScenario) -> None:
    final = await scenario.ended()
    s = await scenario.started()
    record = s.assert_stored_once(final)
    assert "first_conversation" in record["achievements"], record  # a new user's first session
    context = await s.context()
    history = [h for h in context["session_history"] if h.get("session_id") == s.session_id]
    assert len(history) == 1, context["session_history"]
    assert context["progress"]["total_sessions"] == 1
    assert context["progress"]["words_learned"] == len(s.driven.vocabulary)


# ---- 5. no secrets in the output -------------------------------------------------------------------


async def test_no_token_or_secret_in_worker_output(
    scenario: MainScenario, tutor_worker: ServiceProcess, stack_env: dict[str, str]
) -> None:
    await scenario.ended()  # the log holds a whole session: exchange, context, progress, record
    log = tutor_worker.log_text()
    assert "session record delivered" in log
    secrets_ = {
        "AGENT_JWT_TOKEN": stack_env["AGENT_JWT_TOKEN"],
        "SHARED_SECRET": stack_env["SHARED_SECRET"],
        "LOQUA_JWT_SECRET": stack_env["LOQUA_JWT_SECRET"],
    }
    if len(stack_env["LIVEKIT_API_SECRET"]) > 6:  # the dev server's secret is the word "secret"
        secrets_["LIVEKIT_API_SECRET"] = stack_env["LIVEKIT_API_SECRET"]
    for name, value in secrets_.items():
        assert value not in log, f"{name} appears in {tutor_worker.log_file}"
    assert "Bearer " not in log
    jwt_like = re.search(r"eyJ[A-Za-z0-9_-]*", log)
    assert jwt_like is None, f"a JWT (user token?) in the log: {jwt_like.group(0)[:12]}..."
    encrypted = re.search(r"[0-9a-f]{32}:[0-9a-f]{32,}", log)
    assert encrypted is None, "an encrypted user token in the log"


# ---- 6. nobody joins -------------------------------------------------------------------------------


async def test_learner_never_joins_job_ends_after_wait_timeout(
    lk: api.LiveKitAPI, worker_metrics: WorkerMetrics, tutor_agent_name: str, cleanup: Cleanup
) -> None:
    before = await worker_metrics.value("loqua_tutor_participant_wait_timeouts_total")
    room = await new_room(lk, cleanup.rooms, tutor_agent_name)
    await until(lambda: agents_in_room(lk, room), "the agent to join the empty room", AGENT_JOIN_TIMEOUT, 0.3)
    joined = time.monotonic()
    timeout_seen = await until(
        lambda: _increased(worker_metrics, "loqua_tutor_participant_wait_timeouts_total", before),
        "the participant wait timeout",
        PARTICIPANT_WAIT_TIMEOUT + 30,
        0.5,
    )
    assert timeout_seen
    assert time.monotonic() - joined >= PARTICIPANT_WAIT_TIMEOUT - 2  # not before the timeout
    await until(lambda: _no_agents(lk, room), "the agent to leave the room", 20, 0.5)


async def _increased(metrics: WorkerMetrics, name: str, before: float) -> bool:
    return await metrics.value(name) > before


async def join_until_refused(
    lk: api.LiveKitAPI, learner: Learner, metrics: WorkerMetrics, metric: str, before: float
) -> None:
    """The learner joins; the agent refuses them (``metric`` goes above ``before``) and leaves."""
    await learner.join()
    try:
        await until(lambda: _increased(metrics, metric, before), metric, AGENT_JOIN_TIMEOUT, 0.5)
        await until(lambda: _no_agents(lk, learner.room_name), "the agent to leave the room", 30, 0.5)
    finally:
        await learner.leave()


async def _no_agents(lk: api.LiveKitAPI, room: str) -> bool:
    return not await agents_in_room(lk, room)


# ---- 7. API faults during the session --------------------------------------------------------------


class Faults:
    """Fault rules we added, removed by id (never DELETE /admin/faults: other people's rules stay)."""

    def __init__(self, admin: httpx.AsyncClient) -> None:
        self.admin = admin
        self.ids: list[int] = []

    async def add(self, **rule: Any) -> int:
        resp = await self.admin.post("/admin/faults", json=rule)
        assert resp.status_code == 201, resp.text
        self.ids.append(resp.json()["id"])
        return self.ids[-1]

    async def remove(self, rule_id: int) -> None:
        await self.admin.delete(f"/admin/faults/{rule_id}")  # 404 once a counted rule is used up
        if rule_id in self.ids:
            self.ids.remove(rule_id)

    async def active(self, rule_id: int) -> bool:
        rules = (await self.admin.get("/admin/faults")).json()["faults"]
        return any(r["id"] == rule_id for r in rules)

    async def clear(self) -> None:
        for rule_id in list(self.ids):
            await self.remove(rule_id)

    async def until_met(
        self,
        metrics: WorkerMetrics,
        endpoint: str,
        status: int,
        rule: dict[str, Any],
        trigger: Callable[[], Awaitable[object]],
        timeout: float = 30,
    ) -> int:
        """Add a counted status rule on a shared path, ``trigger`` a request from our worker, and wait
        until the rule's answers are used up; repeat until *our* worker has met at least one (other
        clients of the shared stack may take some). Returns how many of them our worker got."""
        before = await metrics.value(REQUESTS, endpoint=endpoint, status=str(status))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rule_id = await self.add(status=status, **rule)
            try:
                await trigger()
                while await self.active(rule_id) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
            finally:
                await self.remove(rule_id)
            met = await _delta(metrics, endpoint, status, before)
            if met > 0:
                return met
        raise AssertionError(f"the worker never met the injected {status} on {endpoint}")


async def _delta(metrics: WorkerMetrics, endpoint: str, status: int, before: float) -> int:
    await asyncio.sleep(0.3)  # the answer that used the rule up is counted when the worker reads it
    return int(await metrics.value(REQUESTS, endpoint=endpoint, status=str(status)) - before)


async def test_api_faults_during_session_lose_nothing(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    tutor_agent_name: str,
    worker_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    faults = Faults(admin)
    completed_before = await worker_metrics.value("loqua_tutor_sessions_completed_total")
    context_endpoint = CONTEXT_TEMPLATE
    context_503_before = await worker_metrics.value(REQUESTS, endpoint=context_endpoint, status="503")

    async def faulty_context(user_id: str) -> None:
        # Scoped to this user: the first two context reads fail with 503, the retry gets through.
        await faults.add(status=503, count=2, path_prefix=CONTEXT_TEMPLATE.format(user_id=user_id))

    try:
        s = await open_session(
            stack_env, lk, admin, tutor_agent_name, cleanup.rooms, cleanup.learners, "faults", faulty_context
        )
        assert await worker_metrics.value(REQUESTS, endpoint=context_endpoint, status="503") >= context_503_before + 2

        # 5xx on the progress path, for a few requests: with 4 answers (1 try + 3 retries) one update
        # fails outright and must stay pending until the next one.
        failed_before = await worker_metrics.value("loqua_tutor_progress_updates_total", result="failed")
        words = iter(("perro", "casa", "libro", "mesa", "silla"))
        met_503 = await faults.until_met(
            worker_metrics,
            PROGRESS_PATH,
            503,
            {"count": 4, "path_prefix": PROGRESS_PATH},
            lambda: s.tool("new_word", word=next(words), translation="?", language="es"),
        )
        if met_503 == 4:
            assert await worker_metrics.value("loqua_tutor_progress_updates_total", result="failed") > failed_before
        assert (await s.tool("pronunciation_score", score=70))["ok"]

        # 429 with Retry-After (the worker waits as told, then retries).
        met_429 = await faults.until_met(
            worker_metrics,
            PROGRESS_PATH,
            429,
            {"count": 2, "retry_after": 1, "path_prefix": PROGRESS_PATH},
            lambda: s.tool("phrase_practised", phrase="Tengo un perro"),
        )
        assert met_429 >= 1
        print(f"faults met by this worker: {met_503} x 503, {met_429} x 429")
        assert (await s.tool("grammar_point", point="articles"))["ok"]

        # Added latency: the update still arrives, just late.
        slow = await faults.add(latency_ms=1500, path_prefix=PROGRESS_PATH)
        try:
            assert (await s.tool("new_word", word="gato", translation="cat", language="es"))["ok"]
            started = time.monotonic()
            await s.wait_progress(s.driven.progress(), timeout=PROGRESS_INTERVAL + 30)
            assert time.monotonic() - started >= 1.0
        finally:
            await faults.remove(slow)

        # Faults cleared: the latest totals (everything driven) are in the API.
        await s.wait_progress(s.driven.progress())
        await s.end()
        final = await s.final_records(worker_metrics, completed_before)
    finally:
        await faults.clear()
    s.assert_stored_once(final)
    assert len(s.driven.vocabulary) >= 2 and s.driven.phrases >= 1 and s.driven.grammar == ["articles"]
    assert await worker_metrics.value("loqua_tutor_progress_updates_queued") == 0
    assert await worker_metrics.value("loqua_tutor_session_records_total", result="lost") == 0


# ---- 7b. Retry-After honoured on 503 and 429 (issue 16) ---------------------------------------------

RETRY_AFTER_SECONDS = 3  # well above the first backoff (0.5-1.0 s), well below the cap (30 s)


async def test_retry_after_is_honoured_on_503_and_429(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    tutor_agent_name: str,
    tutor_worker: ServiceProcess,
    worker_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    """One 503, then one 429, each with ``Retry-After: 3`` (delta-seconds), then one 503 with an HTTP
    date 3 s ahead, on the progress path: the retry reaches the API no sooner than the header says
    (the first backoff would be 0.5-1.0 s), and the worker's log names the wait as Retry-After."""
    faults = Faults(admin)
    s = await open_session(stack_env, lk, admin, tutor_agent_name, cleanup.rooms, cleanup.learners, "retry-after")
    words = iter(f"espera{i}" for i in range(10))
    waits: list[str] = []
    try:
        for status, header in ((503, str(RETRY_AFTER_SECONDS)), (429, str(RETRY_AFTER_SECONDS)), (503, "date")):
            # An HTTP date has whole seconds and the 503 comes up to a progress interval later: aim further.
            date = int(time.time()) + RETRY_AFTER_SECONDS + PROGRESS_INTERVAL + 3
            value = email.utils.formatdate(date, usegmt=True) if header == "date" else header
            rule = await faults.add(status=status, count=1, retry_after=value, path_prefix=PROGRESS_PATH)
            assert (await s.tool("new_word", word=next(words), translation="wait", language="es"))["ok"]
            await until(lambda r=rule: _used_up(faults, r), f"the {status} to be met", PROGRESS_INTERVAL + 15, 0.05)
            answered = time.monotonic()
            told = date - time.time() if header == "date" else RETRY_AFTER_SECONDS
            await s.wait_progress(s.driven.progress(), timeout=told + 30)
            waited = time.monotonic() - answered
            waits.append(f"{status} Retry-After {value!r}: retried after {waited:.1f} s (told {told:.1f} s)")
            # The observed wait can fall short of the header by the two polling intervals at most; the
            # backoff alone would retry after 0.5-1.0 s.
            assert told > 1.5 and waited >= told - 0.6, waits[-1]
    finally:
        await faults.clear()
    print("Retry-After honoured: " + "; ".join(waits))
    retries = re.findall(r"retrying POST /api/v1/agent/progress in (\d+\.\d)s \(Retry-After;", tutor_worker.log_text())
    assert len(retries) >= 3, retries
    await s.end()
    rec = await until(lambda: with_session(admin, s.user_id, s.session_id), "the session record", API_TIMEOUT + 15)
    assert len([x for x in rec["sessions"] if x["session_id"] == s.session_id]) == 1


async def _used_up(faults: Faults, rule_id: int) -> bool:
    return not await faults.active(rule_id)


async def with_session(admin: httpx.AsyncClient, user_id: str, session_id: str) -> dict[str, Any] | None:
    rec = await user_records(admin, user_id)
    return rec if any(x["session_id"] == session_id for x in rec["sessions"]) else None


# ---- 8. no user_id ---------------------------------------------------------------------------------


async def test_missing_user_id_ends_the_job_cleanly(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    tutor_worker: ServiceProcess,
    worker_metrics: WorkerMetrics,
    tutor_agent_name: str,
    cleanup: Cleanup,
) -> None:
    missing_before = await worker_metrics.value("loqua_tutor_missing_user_id_total")
    started_before = await worker_metrics.value("loqua_tutor_sessions_started_total")
    room = await new_room(lk, cleanup.rooms, tutor_agent_name)
    learner = Learner(stack_env, room, sessionId=seed_session_id(), display_name="No Id")
    del learner.attributes["user_id"]
    cleanup.learners.append(learner)
    await join_until_refused(lk, learner, worker_metrics, "loqua_tutor_missing_user_id_total", missing_before)
    assert f"participant {learner.identity} has no user_id attribute" in tutor_worker.log_text()
    assert await worker_metrics.value("loqua_tutor_sessions_started_total") == started_before  # no session
    assert tutor_worker.alive()
    code, body = tutor_worker.health()
    assert code == 200 and "ok" in body
