"""The latency a learner feels: ``kubectl apply`` of an AgentDispatch → the project's tutor agent in the
room, against a raw ``CreateDispatch`` → the same agent in the room (issue 15, point 3).

One real `loqua-tutor start` worker (process executor, the production default) serves both sides;
samples alternate (raw, ours, raw, ...) so drift of the machine affects both alike; after each the
room is deleted (the agent's job ends) and the next starts after a pause that lets the worker's pool
of warm job processes refill. "In the room" = livekit-server lists a
participant of kind AGENT in state ACTIVE, its media connection up (what a learner can hear;
``ListParticipants``, polled every 10 ms on both sides). Deleting the room only then also ends the
agent's job at once (a room deleted under an agent still connecting leaves the job retrying).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from livekit import api

from loqua_devstack.bench import Row, pct
from loqua_devstack.services import tutor_process

POLL = 0.01
PAUSE = 0.5  # seconds between samples


async def agent_in_room(lk: api.LiveKitAPI, room: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            if any(
                p.kind == api.ParticipantInfo.Kind.AGENT and p.state == api.ParticipantInfo.State.ACTIVE
                for p in resp.participants
            ):
                return
        except api.TwirpError as exc:
            if exc.code != "not_found":  # the room does not exist yet
                raise
        await asyncio.sleep(POLL)
    raise TimeoutError(f"no agent in room {room} after {timeout:.0f} s (the tutor's log: .devstack/logs/bench/)")


async def agent_latency_figure(bench, say: Callable[[str], None]) -> None:  # type: ignore[no-untyped-def]
    n = 20 if bench.quick else 100
    agent = f"bench-tutor-{uuid.uuid4().hex[:6]}"
    say(f"apply → agent in the room against raw CreateDispatch → agent in the room, {n} each, tutor {agent}")
    tutor = tutor_process(
        bench.env,
        bench.logs / f"tutor-{agent}.log",
        agent_name=agent,
        extra_env={
            "JOB_EXECUTOR": "process",
            "NUM_IDLE_PROCESSES": "2",
            "MAX_CONCURRENT_SESSIONS": "8",
            "PARTICIPANT_WAIT_TIMEOUT_SECONDS": "30",
            "LOG_LEVEL": "WARNING",
        },
    ).start()
    ns = bench.namespace()
    op = None
    lk = bench.lk()
    raw: list[float] = []
    ours: list[float] = []
    try:
        tutor.wait_healthy(timeout=120, body="ok")
        op = bench.operator(ns, "agent", WEBHOOK_PORT="0", MANAGED_AGENT_NAMES=agent)
        last = time.monotonic()
        for i in range(n + 2):  # the first sample of each side warms the paths up and is not counted
            await asyncio.sleep(PAUSE)
            room = f"bench-agent-raw-{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=agent, room=room))
            await agent_in_room(lk, room)
            if i >= 2:
                raw.append(time.perf_counter() - t0)
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))

            await asyncio.sleep(PAUSE)
            room, name = f"bench-agent-ours-{uuid.uuid4().hex[:8]}", f"agent-{i}"
            t0 = time.perf_counter()
            await asyncio.to_thread(bench.create, ns, name, room, agent)
            await agent_in_room(lk, room)
            if i >= 2:
                ours.append(time.perf_counter() - t0)
            await asyncio.to_thread(bench.delete_and_wait, ns, name)
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                say(f"  {len(ours)}/{n} pairs of samples")
    finally:
        await lk.aclose()
        if op is not None:
            bench.cleanup(ns)
            op.stop()
        else:
            bench.core.delete_namespace(ns)
        tutor.stop(timeout=30)
    for label, q in (("median", 0.5), ("p99", 0.99)):
        o, r = pct(ours, q) * 1000, pct(raw, q) * 1000
        bench.rows.append(
            Row(
                f"apply → tutor agent in the room, {label} of {n}",
                f"{o:.0f} ms",
                f"{r:.0f} ms raw CreateDispatch → agent in the room",
                f"{o / r:.2f}x, {o - r:+.0f} ms",
                "loqua-tutor worker (process executor); in the room = kind AGENT, state ACTIVE (ListParticipants)",
            )
        )
