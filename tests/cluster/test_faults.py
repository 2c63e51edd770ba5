"""Faults through the pods: the operator pod deleted, the worker rolled during a live session."""

from __future__ import annotations

import time

import pytest
from livekit import api

from loqua_devstack.learner import Learner, create_user, session_records
from tests.cluster.conftest import NS, Cluster, ad_manifest, live_dispatches, until

# The first test also builds the image and brings the node up (minutes on a fresh machine).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


async def test_operator_pod_deleted_the_replacement_takes_the_lease_and_objects_converge(
    cluster: Cluster, namespace: str, lk: api.LiveKitAPI
) -> None:
    rooms = [f"{namespace}-r{i}" for i in range(3)]
    for i, room in enumerate(rooms):
        cluster.apply(ad_manifest(namespace, f"ad{i}", room, ttl=600))
    for i in range(3):
        await until(
            lambda i=i: (cluster.ad(namespace, f"ad{i}") or {}).get("status", {}).get("dispatchId"), "bound", 90
        )
    before = {i: cluster.ad(namespace, f"ad{i}")["status"]["dispatchId"] for i in range(3)}

    old = cluster.pods("operator")[0]["metadata"]["name"]
    cluster.kubectl("-n", NS, "delete", "pod", old, "--wait=false")
    new = await until(
        lambda: next((p["metadata"]["name"] for p in cluster.pods("operator") if p["metadata"]["name"] != old), None),
        "a replacement operator pod",
        90,
    )
    lease = cluster.json("-n", NS, "get", "lease")["items"][0]
    await until(
        lambda: cluster.json("-n", NS, "get", "lease", lease["metadata"]["name"])["spec"].get("holderIdentity") == new,
        "the replacement to take the Lease",
        120,
    )
    await until(
        lambda: all(s["ready"] for s in (cluster.pods("operator")[0]["status"].get("containerStatuses") or [{}])),
        "the replacement Ready",
        120,
    )
    # A new object is served by the new leader, and the old ones kept their one dispatch each.
    cluster.apply(ad_manifest(namespace, "after", f"{namespace}-after", ttl=600))
    await until(lambda: (cluster.ad(namespace, "after") or {}).get("status", {}).get("dispatchId"), "served", 90)
    for i, room in enumerate(rooms):
        dispatches = await live_dispatches(lk, room)
        assert [d.id for d in dispatches] == [before[i]], (room, dispatches)
        assert cluster.ad(namespace, f"ad{i}")["status"]["dispatchId"] == before[i]


async def test_worker_rollout_during_a_session_keeps_one_agent_and_one_record(
    cluster: Cluster, namespace: str, lk: api.LiveKitAPI
) -> None:
    room = f"{namespace}-roll"
    cluster.apply(ad_manifest(namespace, "roll", room, ttl=15))
    await until(lambda: (cluster.ad(namespace, "roll") or {}).get("status", {}).get("dispatchId"), "bound", 90)
    user = create_user(cluster.env, "Bea")
    learner = Learner(cluster.env, room, user_id=user["user_id"], sessionId=f"sess_{int(time.time() * 1000)}_roll")
    await learner.join()
    try:
        agent = await until(lambda: next(iter(learner.agents_in_room()), None), "the agent", 90)
        await until(lambda: agent.attributes.get("loqua.status") == "active", "the session to start", 60)
        old_pods = {p["metadata"]["name"] for p in cluster.pods("worker")}
        worker = cluster.deployment("worker")
        cluster.kubectl("-n", NS, "rollout", "restart", f"deploy/{worker}")
        cluster.kubectl("-n", NS, "rollout", "status", f"deploy/{worker}", "--timeout=300s", timeout=330)
        new_pods = {p["metadata"]["name"] for p in cluster.pods("worker")}
        assert new_pods and not (new_pods & old_pods)
        # The old pod drains: still there (terminating) while its session runs; the learner keeps
        # exactly the same one agent.
        terminating = cluster.json("-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=worker")["items"]
        assert any(p["metadata"]["name"] in old_pods for p in terminating), "the old pod did not wait for its session"
        assert [a.identity for a in learner.agents_in_room()] == [agent.identity]
        assert len(await live_dispatches(lk, room)) == 1
    finally:
        await learner.leave()
    # Learner gone -> TTL -> dispatch deleted -> the session ends -> the old pod exits.
    await until(lambda: cluster.ad(namespace, "roll") is None, "the TTL", 120)
    await until(
        lambda: (
            not any(
                p["metadata"]["name"] in old_pods
                for p in cluster.json("-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=worker")["items"]
            )
        ),
        "the drained pod to exit",
        180,
    )
    records = await until(lambda: session_records(cluster.env, user["user_id"]), "the session record", 90)
    assert len(records["sessions"]) == 1, records
