"""Workers scale with declared demand, on the local node with the values `make cluster` uses
(spanish-tutor: 2 sessions per pod, the built-in scaler with min 1, max 4, 30 s scale-down delay).

Six AgentDispatch objects and six real learners arrive together -> three or more worker pods Ready,
every learner served by exactly one agent; five learners leave while one stays -> the objects expire
and the Deployment goes back to one pod after the delay, the remaining learner's session is not ended
by that scale-down (the busy pod is kept, idle pods go first); at the end every session record exists
exactly once and no learner ever saw two agents.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from livekit import api

from loqua_devstack.learner import session_records
from loqua_devstack.serving import PodSeconds, arrive_together, ready, worker_pods
from loqua_operator.scaling import DELETION_COST
from tests.cluster.conftest import AGENT, NS, Cluster, live_dispatches, until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]
LEARNERS = 6
SCALE_DOWN_DELAY = 30  # helm/loqua-agents/examples/local-node.yaml


def live_worker_pods(cluster: Cluster) -> list[dict]:
    return worker_pods(cluster.stack.kubectl, NS, deleting=False)


async def test_six_learners_get_three_pods_then_back_to_one_without_ending_a_live_session(
    cluster: Cluster, namespace: str, lk: api.LiveKitAPI
) -> None:
    # Steady state first: whatever earlier tests left has scaled back to min (1).
    await until(lambda: len(worker_pods(cluster.stack.kubectl, NS)) == 1, "one worker pod at rest", 300, 2)

    pods = PodSeconds(cluster.stack.kubectl, NS).start()
    arrival = await arrive_together(cluster.env, cluster.apply, namespace, LEARNERS, AGENT, ttl=20)
    most_agents_seen = 0

    async def watch_agents() -> None:
        nonlocal most_agents_seen
        while True:
            most_agents_seen = max([most_agents_seen, *(len(x.agents_in_room()) for x in arrival.learners)])
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_agents())
    try:
        served_after = await arrival.wait_all_served(timeout=420)
        assert served_after is not None, f"served: {arrival.served()} of {LEARNERS}"
        print(f"\nFIGURE all {LEARNERS} learners served after {served_after:.1f} s (built-in scaler)")
        assert pods.peak_ready >= 3 or sum(ready(p) for p in live_worker_pods(cluster)) >= 3
        for room, learner in zip(arrival.rooms, arrival.learners, strict=True):
            agents = learner.agents_in_room()
            assert len(agents) == 1 and agents[0].attributes.get("lk.agent_name") == AGENT, room
            assert len(await live_dispatches(lk, room)) == 1, room
        assert len({x.agents_in_room()[0].identity for x in arrival.learners}) == LEARNERS

        # Five learners leave, one stays in session while the objects of the others expire and the
        # Deployment scales down to one pod.
        stayer = arrival.learners[0]
        agent = stayer.agents_in_room()[0].identity
        await asyncio.gather(*(x.leave() for x in arrival.learners[1:]))
        for i in range(1, LEARNERS):
            await until(lambda i=i: cluster.ad(namespace, f"lesson{i}") is None, f"lesson{i} to expire", 180)
        await until(lambda: len(live_worker_pods(cluster)) == 1, "the scale-down to one pod", SCALE_DOWN_DELAY + 180, 1)
        (kept,) = live_worker_pods(cluster)
        # The pod kept is a busy one: its deletion cost is its running sessions (idle pods cost 0).
        # (a load that was read from the pod's /metrics, not the "unknown = busy" fallback)
        assert 1 <= int(kept["metadata"].get("annotations", {}).get(DELETION_COST, "0")) <= 2, kept["metadata"]
        await asyncio.sleep(3)
        agents = stayer.agents_in_room()
        assert [a.identity for a in agents] == [agent], "the scale-down ended or moved the live session"
        assert agents[0].attributes.get("loqua.status") == "active"
        assert (cluster.ad(namespace, "lesson0") or {}).get("status", {}).get("phase") == "Active"
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await arrival.leave()
        pod_seconds = await pods.stop()
        print(f"FIGURE worker pod-seconds during the scenario: {pod_seconds:.0f}")

    await until(lambda: cluster.ad(namespace, "lesson0") is None, "lesson0 to expire", 180)
    assert most_agents_seen == 1, f"a learner saw {most_agents_seen} agents at once"
    for user in arrival.users:
        records = await until(lambda u=user: session_records(cluster.env, u["user_id"]), "a session record", 120)
        assert len(records["sessions"]) == 1, records
    # Nothing left in LiveKit, and still one pod.
    for room in arrival.rooms:
        assert await live_dispatches(lk, room) == []
    assert len(live_worker_pods(cluster)) == 1
