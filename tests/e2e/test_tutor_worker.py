"""The tutor worker end to end: `loqua-tutor start` registered with the real livekit-server, real
learners (rtc SDK), the reference Loqua API with injected faults. No mocks."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from livekit import api

from loqua_devstack.learner import Learner
from loqua_devstack.services import ServiceProcess, tutor_process

pytestmark = pytest.mark.e2e
AGENT = f"e2e-tutor-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def tutor(stack_env: dict[str, str]) -> Iterator[ServiceProcess]:
    log = Path(stack_env["DEVSTACK_DIR"]) / "logs" / "tests" / f"tutor-{AGENT}.log"
    proc = tutor_process(
        stack_env,
        log,
        agent_name=AGENT,
        extra_env={
            "PARTICIPANT_WAIT_TIMEOUT_SECONDS": "6",
            "PROGRESS_INTERVAL_SECONDS": "2",
            "JOB_EXECUTOR": "thread",
            "LOG_LEVEL": "DEBUG",
        },
    ).start()
    proc.wait_healthy(timeout=90, body="ok")
    yield proc
    assert proc.stop(timeout=120) is not None


@pytest.fixture
async def lk(stack_env: dict[str, str]) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(stack_env["LIVEKIT_URL"], stack_env["LIVEKIT_API_KEY"], stack_env["LIVEKIT_API_SECRET"])
    yield client
    await client.aclose()


def metric(proc: ServiceProcess, name: str) -> float:
    text = urllib.request.urlopen(proc.metrics_url, timeout=5).read().decode()  # type: ignore[attr-defined]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name)
        and not line.startswith("#")
        and (line.split(" ")[0] == name or line.startswith(name + "{"))
    )


async def until(check, what: str, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def admin(env: dict[str, str]) -> httpx.Client:
    return httpx.Client(
        base_url=env["LOQUA_API_URL"], timeout=10, headers={"Authorization": f"Bearer {env['LOQUA_ADMIN_TOKEN']}"}
    )


async def dispatch(lk: api.LiveKitAPI) -> tuple[str, api.AgentDispatch]:
    room = f"e2e-room-{uuid.uuid4().hex[:8]}"
    await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=600, departure_timeout=120))
    return room, await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=AGENT, room=room))


async def tool(learner: Learner, identity: str, name: str, **args: object) -> dict:
    assert learner.room is not None
    reply = await learner.room.local_participant.perform_rpc(
        destination_identity=identity, method="tutor.tool", payload=json.dumps({"tool": name, "args": args})
    )
    return json.loads(reply)


async def test_session_survives_api_faults_and_writes_records_exactly_once(stack_env, tutor, lk) -> None:
    with admin(stack_env) as http:
        user = http.post("/admin/users", json={"email": "e2e@example.com", "display_name": "E2E"}).json()
        uid = user["user_id"]
        room, _ = await dispatch(lk)
        learner = Learner(
            stack_env,
            room,
            user_id=uid,
            sessionId=f"sess_{int(time.time() * 1000)}_e2e",
            display_name="E2E",
            email="e2e@example.com",
        )
        await learner.join()
        try:
            agent = await until(lambda: next(iter(learner.agents_in_room()), None), "the agent", 60)
            await until(lambda: agent.attributes.get("loqua.status") == "active", "the session", 60)
            # Faults on this user's API paths while the conversation goes on: 5xx, 429 + Retry-After, latency.
            for fault in (
                {"status": 503, "count": 2, "path_prefix": "/api/v1/agent/progress"},
                {"status": 429, "count": 1, "retry_after": 1, "path_prefix": "/api/v1/agent/progress"},
                {"latency_ms": 300, "path_prefix": f"/api/v1/agent/user/{uid}/context"},
            ):
                http.post("/admin/faults", json=fault).raise_for_status()
            assert (await tool(learner, agent.identity, "new_word", word="hola", translation="hello", language="es"))[
                "ok"
            ]
            assert (await tool(learner, agent.identity, "new_word", word="adiós", translation="bye", language="es"))[
                "ok"
            ]
            assert (await tool(learner, agent.identity, "pronunciation_score", score=91))["ok"]
            assert (await tool(learner, agent.identity, "grammar_point", point="articles"))["ok"]
            await asyncio.sleep(5)  # at least two progress intervals against the faulty API
            await learner.refresh()
            again = await until(lambda: next(iter(learner.agents_in_room()), None), "the agent after refresh", 30)
            assert again.identity == agent.identity  # the same agent stayed through the refresh
            assert (await tool(learner, agent.identity, "phrase_practised", phrase="¿Qué tal?"))["ok"]
        finally:
            http.delete("/admin/faults")
            await learner.leave()
        # The end: the dispatch is deleted (what the operator does at TTL expiry).
        for d in await lk.agent_dispatch.list_dispatch(room):
            if d.agent_name == AGENT:
                await lk.agent_dispatch.delete_dispatch(d.id, room)

        def records() -> dict | None:
            body = http.get(f"/admin/users/{uid}/records").json()
            return body if body["sessions"] else None

        rec = await until(records, "the session record", 60)
        await asyncio.sleep(3)  # a second write, if any, would land now
        rec = http.get(f"/admin/users/{uid}/records").json()
        assert len(rec["sessions"]) == 1, rec["sessions"]
        session = rec["sessions"][0]
        assert sorted(w["word"] for w in session["new_vocabulary"]) == ["adiós", "hola"]
        assert session["grammar_points"] == ["articles"]
        final = [p for p in rec["progress_updates"] if p["data"]["status"] == "completed"]
        assert len(final) == 1 and final[0]["data"]["progress"]["words_learned"] == 2
        # The faults were really met: the worker's own request metrics saw the 503s and the 429.
        seen = urllib.request.urlopen(tutor.metrics_url, timeout=5).read().decode()  # type: ignore[attr-defined]
        statuses = {m.group(1) for m in re.finditer(r'loqua_tutor_api_requests_total\{[^}]*status="(\d+)"', seen)}
        assert {"503", "429"} <= statuses, statuses
        user_jwt_prefix = re.compile(r"eyJ[A-Za-z0-9_-]{20,}\.eyJ")
    log = tutor.log_text()
    for secret in (stack_env["AGENT_JWT_TOKEN"], stack_env["SHARED_SECRET"], stack_env["LOQUA_JWT_SECRET"]):
        assert secret not in log
    assert not user_jwt_prefix.search(log) and "Bearer " not in log


async def test_learner_who_never_joins_ends_the_job_after_the_timeout(tutor, lk) -> None:
    before = metric(tutor, "loqua_tutor_participant_wait_timeouts_total")
    room, _ = await dispatch(lk)

    def agent_left() -> bool:
        return metric(tutor, "loqua_tutor_participant_wait_timeouts_total") > before

    await until(agent_left, "the participant wait timeout", 40)

    async def agents() -> list:
        participants = (await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants
        return [p for p in participants if p.kind == api.ParticipantInfo.Kind.AGENT]

    deadline = time.monotonic() + 15
    while await agents() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert not await agents(), "the agent stayed in the room after the wait timeout"


async def test_missing_user_id_ends_cleanly(stack_env, tutor, lk) -> None:
    before = metric(tutor, "loqua_tutor_missing_user_id_total")
    room, _ = await dispatch(lk)
    learner = Learner(stack_env, room)
    learner.attributes.pop("user_id")
    await learner.join()
    try:
        await until(lambda: metric(tutor, "loqua_tutor_missing_user_id_total") > before, "missing user_id", 40)
    finally:
        await learner.leave()
    assert tutor.alive(), "the worker survives a job that ended on bad input"
