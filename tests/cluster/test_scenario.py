"""The main scenario through the pods: the operator pod dispatches, the tutor pod's agent serves a
real learner, the TTL ends it, the Loqua API holds exactly one session record."""

from __future__ import annotations

import time

import pytest
from livekit import api

from loqua_devstack.learner import Learner, create_user, session_records
from tests.cluster.conftest import AGENT, Cluster, ad_manifest, live_dispatches, until

# The first test also builds the image and brings the node up (minutes on a fresh machine).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


async def test_main_scenario_through_the_pods(cluster: Cluster, namespace: str, lk: api.LiveKitAPI) -> None:
    room = f"{namespace}-lesson"
    cluster.apply(ad_manifest(namespace, "lesson", room, ttl=20))
    ad = await until(
        lambda: (o := cluster.ad(namespace, "lesson")) and o.get("status", {}).get("dispatchId") and o,
        "Dispatched by the operator pod",
        90,
    )
    assert ad["status"]["phase"] in ("Dispatched", "Idle", "Active")
    assert len(await live_dispatches(lk, room)) == 1

    user = create_user(cluster.env, "Ana")
    learner = Learner(
        cluster.env,
        room,
        user_id=user["user_id"],
        sessionId=f"sess_{int(time.time() * 1000)}_cluster",
        display_name="Ana",
    )
    await learner.join()
    try:
        agent = await until(lambda: next(iter(learner.agents_in_room()), None), "the tutor pod's agent", 90)
        assert agent.attributes.get("lk.agent_name") == AGENT
        await until(lambda: agent.attributes.get("loqua.status") == "active", "the session to start", 60)
        await until(
            lambda: (cluster.ad(namespace, "lesson") or {}).get("status", {}).get("phase") == "Active",
            "Active (a learner in the room)",
            60,
        )
        assert len(learner.agents_in_room()) == 1
    finally:
        await learner.leave()

    await until(lambda: cluster.ad(namespace, "lesson") is None, "the TTL to delete the object", 120)
    await until(lambda: not cluster.ad(namespace, "lesson") and True, "object gone", 5)
    records = await until(lambda: session_records(cluster.env, user["user_id"]), "the session record", 90)
    assert len(records["sessions"]) == 1, records
    assert await live_dispatches(lk, room) == []
