"""`loqua-dev learner ROOM`, the scripted learner `make up` suggests for exploring by hand: against
the stack and a real tutor worker it joins, reports the agent and its active session, and leaves."""

from __future__ import annotations

import uuid

import pytest
from livekit import api

from loqua_devstack.learner import visit
from loqua_devstack.services import ServiceProcess
from tests.e2e.conftest import loqua_dev

pytestmark = pytest.mark.e2e


async def test_learner_reports_the_agent_and_its_session(
    stack_env: dict[str, str], tutor_worker: ServiceProcess, tutor_agent_name: str, lk: api.LiveKitAPI
) -> None:
    room = f"explore-{uuid.uuid4().hex[:8]}"
    await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60, departure_timeout=20))
    dispatch = await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=tutor_agent_name, room=room)
    )
    try:
        done = loqua_dev(stack_env, "learner", room, "--seconds", "1", "--name", "Explorer")
    finally:
        await lk.agent_dispatch.delete_dispatch(dispatch.id, room)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Explorer (user ") and f"joined room {room} as learner-" in lines[0], lines
    assert "agent agent-" in lines[1] and lines[1].endswith("is active"), lines
    assert lines[-1].startswith(f"Explorer left room {room}."), lines
    assert "HMAC" not in done.stderr


async def test_learner_without_an_agent_says_what_to_check(
    stack_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    room = f"explore-none-{uuid.uuid4().hex[:8]}"
    assert await visit(stack_env, room, seconds=0, agent_timeout=2) is False
    out = capsys.readouterr().out
    assert f"no agent joined within 2 s: is an AgentDispatch for room {room} applied" in out
    assert f"Ana left room {room}." in out
