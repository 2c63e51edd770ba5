"""Faults: LiveKit down and back, operator SIGKILLed mid-burst, two replicas at once.

These tests run their own operators on their own namespaces (``solo-*``), so they can kill them.
"""

from __future__ import annotations

import collections
import time
import urllib.request
import uuid
from pathlib import Path

import kubernetes
import pytest

from loqua_devstack.services import ServiceProcess, operator_process, wait_for
from loqua_devstack.stack import Stack
from tests.integration.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    ad_manifest,
    get_ad,
    live_dispatches,
    make_namespace,
    release_namespace,
    wait_gone,
    wait_phase,
)

pytestmark = pytest.mark.integration
SOLO_AGENT = "solo-tutor"  # not managed by the session operator's orphan sweep


def solo_operator(stack_env: dict[str, str], logs_dir: Path, ns: str, tag: str, lease: str) -> ServiceProcess:
    return operator_process(
        stack_env,
        logs_dir / f"operator-{tag}-{ns}.log",
        namespaces=[ns],
        extra_env={"LEASE_NAME": lease, "LEASE_NAMESPACE": ns, "LOG_LEVEL": "INFO", "WEBHOOK_PORT": "0"},
    )


def phases(custom: kubernetes.client.CustomObjectsApi, ns: str) -> collections.Counter[str]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    return collections.Counter((i.get("status") or {}).get("phase", "none") for i in items)


def is_leader(proc: ServiceProcess) -> bool:
    text = urllib.request.urlopen(proc.metrics_url, timeout=5).read().decode()
    return any(line.startswith("loqua_operator_leader ") and line.endswith(" 1.0") for line in text.splitlines())


async def assert_one_dispatch_per_room(lk, custom, ns: str, rooms: dict[str, list[str]]) -> None:
    for room, names in rooms.items():
        found = await live_dispatches(lk, room, SOLO_AGENT)
        assert len(found) == 1, f"room {room}: {len(found)} dispatches"
        for name in names:
            assert get_ad(custom, ns, name)["status"]["dispatchId"] == found[0].id


async def test_livekit_outage_fails_then_recovers(stack_env, stack: Stack, custom, namespace, lk) -> None:
    room = f"room-{uuid.uuid4().hex[:10]}"
    stack.stop_part("livekit")
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ad_manifest("a", room))
        failed = wait_phase(custom, namespace, "a", "Failed", timeout=40)
        ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and "unavailable" in ready["message"]
        assert "CreateRoom" in failed["status"]["lastError"] or "ListDispatch" in failed["status"]["lastError"]
    finally:
        stack.start_part("livekit")
    obj = wait_phase(custom, namespace, "a", "Dispatched", timeout=90)
    assert [d.id for d in await live_dispatches(lk, room)] == [obj["status"]["dispatchId"]]
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and obj["status"].get("lastError") is None


async def test_deletion_waits_for_livekit_and_completes(stack_env, stack: Stack, custom, namespace, lk) -> None:
    room = f"room-{uuid.uuid4().hex[:10]}"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ad_manifest("a", room))
    wait_phase(custom, namespace, "a", "Dispatched")
    stack.stop_part("livekit")
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a")
        time.sleep(10)
        stuck = get_ad(custom, namespace, "a")
        assert stuck is not None and stuck["metadata"].get("deletionTimestamp")  # held by the finalizer
    finally:
        stack.start_part("livekit")
    wait_gone(custom, namespace, "a", timeout=90)
    assert await live_dispatches(lk, room) == []


async def test_sigkill_mid_burst_converges(stack_env, custom, core, logs_dir, lk, crd) -> None:
    ns = make_namespace(core, "solo")
    rooms: dict[str, list[str]] = collections.defaultdict(list)
    op = solo_operator(stack_env, logs_dir, ns, "crash", "crash-test").start()
    try:
        op.wait_healthy(timeout=60, body="ok")
        for i in range(50):
            room = f"burst-{ns}-{i % 35}"  # 15 rooms are shared by two objects
            name = f"ad-{i}"
            rooms[room].append(name)
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, ad_manifest(name, room, agent=SOLO_AGENT)
            )
        wait_for(lambda: phases(custom, ns)["Dispatched"] >= 10, "some objects dispatched", 60, interval=0.05)
        op.kill()
        done_at_kill = phases(custom, ns)["Dispatched"]
        assert done_at_kill < 50, "the operator finished before it could be killed; the test proves nothing"
        op = solo_operator(stack_env, logs_dir, ns, "crash-restart", "crash-test").start()
        # The killed leader's Lease must expire (15 s) before the new process may act.
        wait_for(lambda: phases(custom, ns)["Dispatched"] == 50, "all 50 Dispatched after restart", 120)
        await assert_one_dispatch_per_room(lk, custom, ns, rooms)
        # No dispatch without an object: every room with our agent is one the objects name.
        for room in rooms:
            assert len(await live_dispatches(lk, room)) == 1
    finally:
        release_namespace(core, custom, ns)
        op.stop()
    for room in rooms:
        assert await live_dispatches(lk, room) == []


async def test_two_replicas_never_duplicate(stack_env, custom, core, logs_dir, lk, crd) -> None:
    ns = make_namespace(core, "solo")
    a = solo_operator(stack_env, logs_dir, ns, "replica-a", "ha-test").start()
    b = solo_operator(stack_env, logs_dir, ns, "replica-b", "ha-test").start()
    rooms: dict[str, list[str]] = collections.defaultdict(list)
    try:
        wait_for(lambda: a.health()[0] == 200 and b.health()[0] == 200, "both replicas serving health", 60)
        leader = wait_for(lambda: a if is_leader(a) else b if is_leader(b) else None, "a leader", 60)
        standby = b if leader is a else a
        assert not is_leader(standby)
        for i in range(20):
            room = f"ha-{ns}-{i % 10}"
            rooms[room].append(f"ad-{i}")
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, ad_manifest(f"ad-{i}", room, agent=SOLO_AGENT)
            )
        wait_for(lambda: phases(custom, ns)["Dispatched"] == 20, "20 Dispatched", 60)
        await assert_one_dispatch_per_room(lk, custom, ns, rooms)
        # Fail over: the standby takes the Lease once it expires and serves new objects.
        leader.kill()
        wait_for(lambda: is_leader(standby), "standby takes over", 60)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, ad_manifest("after", f"ha-{ns}-0", agent=SOLO_AGENT)
        )
        rooms[f"ha-{ns}-0"].append("after")
        wait_phase(custom, ns, "after", "Dispatched", timeout=60)
        await assert_one_dispatch_per_room(lk, custom, ns, rooms)
    finally:
        release_namespace(core, custom, ns)
        a.stop()
        b.stop()


async def test_single_replica_without_leader_election_acts_and_says_so(
    stack_env, custom, core, logs_dir, lk, crd
) -> None:
    ns = make_namespace(core, "solo")
    proc = operator_process(
        stack_env,
        logs_dir / f"operator-no-election-{ns}.log",
        namespaces=[ns],
        extra_env={"LEADER_ELECTION": "false", "LEASE_NAMESPACE": ns, "WEBHOOK_PORT": "0"},
    ).start()
    try:
        proc.wait_healthy(timeout=60, body="ok")
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, ad_manifest("a", f"ne-{ns}", agent=SOLO_AGENT)
        )
        wait_phase(custom, ns, "a", "Dispatched", timeout=60)
        # It acts without a Lease, and its leader gauge says it acts (dashboards count acting replicas).
        assert is_leader(proc)
        leases = kubernetes.client.CoordinationV1Api(core.api_client).list_namespaced_lease(ns).items
        assert leases == [], [lease.metadata.name for lease in leases]
        assert len(await live_dispatches(lk, f"ne-{ns}", SOLO_AGENT)) == 1
    finally:
        release_namespace(core, custom, ns)
        proc.stop()
