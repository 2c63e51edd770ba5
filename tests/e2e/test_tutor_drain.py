"""SIGTERM to the tutor worker's whole process group while a learner's session runs: the worker
drains, the session finalizes (final progress and one session record in the Loqua API) and the
worker exits 0 — with either job executor. No mocks: a real `loqua-tutor start` process, a real
learner (rtc SDK), livekit-server and the reference Loqua API.

A group SIGTERM is what systemd's default ``KillMode``, ``kill -- -PGID`` and the devstack's own
``ServiceProcess.stop`` send. Before ``loqua_tutor.signals`` it also killed livekit-agents'
forkserver, and every running session ended without its record.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from livekit import api

from loqua_devstack.learner import Learner
from loqua_devstack.services import tutor_process
from tests.e2e.conftest import WorkerMetrics, until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("executor", ["process", "thread"])
async def test_group_sigterm_drains_the_running_session(
    stack_env: dict[str, str], logs_dir: Path, lk: api.LiveKitAPI, admin: httpx.AsyncClient, executor: str
) -> None:
    agent_name = f"drain-{executor}-{uuid.uuid4().hex[:6]}"
    log_file = logs_dir / f"tutor-{agent_name}.log"
    worker = tutor_process(
        stack_env,
        log_file,
        agent_name=agent_name,
        extra_env={
            "JOB_EXECUTOR": executor,
            "PROGRESS_INTERVAL_SECONDS": "2",
            "DRAIN_TIMEOUT_SECONDS": "3",  # the learner stays: the drain ends by closing the session
            "FINALIZE_TIMEOUT_SECONDS": "30",
            "LOG_FORMAT": "text",
        },
    ).start()
    learner: Learner | None = None
    try:
        worker.wait_healthy(timeout=90, body="ok")
        user = await admin.post("/admin/users", json={"email": "drain@example.com", "display_name": "Drain"})
        uid = user.json()["user_id"]
        room = f"drain-room-{uuid.uuid4().hex[:8]}"
        await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=600, departure_timeout=120))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent_name, room=room))
        learner = Learner(stack_env, room, user_id=uid, sessionId=f"sess_{int(time.time() * 1000)}_drain")
        await learner.join()
        agent = await until(lambda: next(iter(learner.agents_in_room()), None), "the agent", 60)
        await until(lambda: agent.attributes.get("loqua.status") == "active", "the session to start", 60)

        # The job's own metrics reach the worker's /metrics (the forkserver got the metrics directory).
        metrics = WorkerMetrics(worker.metrics_url)

        async def session_counted() -> bool:
            return await metrics.value("loqua_tutor_sessions_started_total") >= 1

        await until(session_counted, "metrics", 10)

        worker.signal(signal.SIGTERM)  # the whole process group, job processes and forkserver included
        assert worker.proc is not None
        code = await asyncio.to_thread(worker.proc.wait, 90)

        records = (await admin.get(f"/admin/users/{uid}/records")).json()
    finally:
        if learner is not None:
            await learner.leave()
        worker.stop(timeout=30)
    log = worker.log_text()
    assert code == 0, f"loqua-tutor exited with {code} after a group SIGTERM; see {log_file}"
    assert "SIGTERM: draining" in log and "worker stopped" in log, log[-2000:]
    assert "session record LOST" not in log and "exit code 255" not in log, log[-3000:]
    assert len(records["sessions"]) == 1, records
    final = [p for p in records["progress_updates"] if p["data"]["status"] == "completed"]
    assert len(final) == 1, records["progress_updates"]
