"""The operator against the real kube-apiserver and livekit-server: reuse, duplicates, sharing,
finalizers, refresh storms, status shape, metrics."""

from __future__ import annotations

import json
import urllib.request
import uuid

import kubernetes
import pytest
import yaml
from livekit import api

from loqua_devstack.services import ServiceProcess, wait_for
from tests.integration.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    ad_manifest,
    events_for,
    get_ad,
    kubectl,
    live_dispatches,
    wait_gone,
    wait_phase,
)

pytestmark = pytest.mark.integration


def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


def create(custom: kubernetes.client.CustomObjectsApi, ns: str, name: str, room: str, **spec: object) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ad_manifest(name, room, **spec))


def delete(custom: kubernetes.client.CustomObjectsApi, ns: str, name: str) -> None:
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def metric(operator: ServiceProcess, name: str) -> float:
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


async def test_create_makes_one_dispatch_and_status(custom, core, namespace, lk) -> None:
    room = room_name()
    create(custom, namespace, "a", room, metadata='{"lesson":"greetings"}')
    obj = wait_phase(custom, namespace, "a", "Dispatched")
    status = obj["status"]
    found = await live_dispatches(lk, room)
    assert len(found) == 1 and found[0].agent_name == "tutor" and found[0].metadata == '{"lesson":"greetings"}'
    assert status["dispatchId"] == found[0].id and status["reused"] is False
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Dispatched"]["status"] == "True"
    for c in status["conditions"]:
        assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(c)
    assert "agents.loqua.app/dispatch-cleanup" in obj["metadata"]["finalizers"]
    # The status was written through the status subresource.
    managers = [m for m in obj["metadata"]["managedFields"] if "f:status" in json.dumps(m.get("fieldsV1", {}))]
    assert managers and all(m.get("subresource") == "status" for m in managers)
    reasons = wait_for(
        lambda: {e.reason for e in events_for(core, namespace, "a")} & {"DispatchCreated"},
        "DispatchCreated event",
        10,
    )
    assert reasons


async def test_existing_dispatch_is_reused(custom, namespace, lk) -> None:
    room = room_name()
    await lk.room.create_room(api.CreateRoomRequest(name=room))
    pre = await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="tutor", room=room))
    create(custom, namespace, "a", room)
    obj = wait_phase(custom, namespace, "a", "Dispatched")
    assert obj["status"]["dispatchId"] == pre.id and obj["status"]["reused"] is True
    assert [d.id for d in await live_dispatches(lk, room)] == [pre.id]


async def test_duplicates_are_removed_keeping_most_recent(custom, core, namespace, lk, operator) -> None:
    room = room_name()
    await lk.room.create_room(api.CreateRoomRequest(name=room))
    made = [
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="tutor", room=room))
        for _ in range(3)
    ]
    other = await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="grammar", room=room))
    newest = max(made, key=lambda d: (d.state.created_at, d.id))
    before = metric(operator, "loqua_operator_duplicate_dispatches_removed_total")
    create(custom, namespace, "a", room)
    obj = wait_phase(custom, namespace, "a", "Dispatched")
    assert obj["status"]["dispatchId"] == newest.id and obj["status"]["reused"] is True
    assert [d.id for d in await live_dispatches(lk, room, "tutor")] == [newest.id]
    assert [d.id for d in await live_dispatches(lk, room, "grammar")] == [other.id]  # never touched
    assert metric(operator, "loqua_operator_duplicate_dispatches_removed_total") - before == 2
    wait_for(
        lambda: "DuplicatesRemoved" in {e.reason for e in events_for(core, namespace, "a")},
        "DuplicatesRemoved event",
        10,
    )


async def test_refresh_storm_of_reapplies_never_adds_a_dispatch(stack_env, custom, namespace, lk) -> None:
    room = room_name()
    manifest = yaml.safe_dump(ad_manifest("storm", room))
    for _ in range(15):
        kubectl(stack_env, "apply", "-n", namespace, "-f", "-", input_=manifest)
    obj = wait_phase(custom, namespace, "storm", "Dispatched")
    for _ in range(15):
        kubectl(stack_env, "apply", "-n", namespace, "-f", "-", input_=manifest)
    found = await live_dispatches(lk, room)
    assert [d.id for d in found] == [obj["status"]["dispatchId"]]


async def test_two_objects_share_one_dispatch(custom, core, namespace, lk) -> None:
    room = room_name()
    create(custom, namespace, "first", room)
    first = wait_phase(custom, namespace, "first", "Dispatched")
    create(custom, namespace, "second", room)
    second = wait_phase(custom, namespace, "second", "Dispatched")
    assert first["status"]["dispatchId"] == second["status"]["dispatchId"]
    assert second["status"]["reused"] is True
    delete(custom, namespace, "first")
    wait_gone(custom, namespace, "first")
    assert [d.id for d in await live_dispatches(lk, room)] == [first["status"]["dispatchId"]]
    delete(custom, namespace, "second")
    wait_gone(custom, namespace, "second")
    assert await live_dispatches(lk, room) == []


async def test_finalizer_tolerates_a_dispatch_livekit_already_lost(custom, namespace, lk) -> None:
    room = room_name()
    create(custom, namespace, "a", room)
    obj = wait_phase(custom, namespace, "a", "Dispatched")
    await lk.agent_dispatch.delete_dispatch(obj["status"]["dispatchId"], room)
    delete(custom, namespace, "a")
    wait_gone(custom, namespace, "a")
    assert await live_dispatches(lk, room) == []


def test_invalid_objects_are_refused_with_clear_messages(stack_env, crd) -> None:
    def apply(spec: dict) -> str:
        bad = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentDispatch",
            "metadata": {"name": "bad"},
            "spec": spec,
        }
        out = kubectl(stack_env, "apply", "-n", "default", "-f", "-", input_=yaml.safe_dump(bad), check=False)
        assert "is invalid" in out, out
        return out

    out = apply({"room": "has space", "agentName": "Not_A_Label"})
    assert "room must start with a letter or digit" in out
    assert "agentName must be a DNS label" in out
    # Schema errors (lengths, ranges, required fields) are reported first, by the API server itself.
    out = apply({"room": "r", "agentName": "a", "ttlSeconds": 90000, "metadata": "x" * 16385})
    assert "spec.ttlSeconds" in out and "86400" in out
    assert "spec.metadata" in out and "16384" in out
    out = apply({"room": "r" * 129, "agentName": "a" * 64})
    assert "spec.room: Too long" in out and "spec.agentName: Too long" in out
    assert "spec.agentName: Required value" in apply({"room": "r"})
    assert get_ad_default_missing(stack_env)


def get_ad_default_missing(stack_env) -> bool:
    out = kubectl(stack_env, "get", "ad", "bad", "-n", "default", check=False)
    return "NotFound" in out


def test_room_and_agent_are_immutable(stack_env, custom, namespace) -> None:
    create(custom, namespace, "a", room_name())
    wait_phase(custom, namespace, "a", "Dispatched")
    for field, value in (("room", "elsewhere"), ("agentName", "other")):
        patch = json.dumps({"spec": {field: value}})
        out = kubectl(stack_env, "patch", "-n", namespace, "ad", "a", "--type=merge", "-p", patch, check=False)
        assert f"{field} is immutable" in out


def test_printer_columns(stack_env, custom, namespace) -> None:
    room = room_name()
    create(custom, namespace, "a", room)
    obj = wait_phase(custom, namespace, "a", "Dispatched")
    out = kubectl(stack_env, "get", "ad", "-n", namespace)
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "ROOM",
        "AGENT",
        "PHASE",
        "DISPATCH",
        "REUSED",
        "LEARNERS",
        "EXPIRES",
        "AGE",
    ]
    assert row.split()[:6] == ["a", room, "tutor", "Dispatched", obj["status"]["dispatchId"], "false"]


def test_metrics_and_liveness(operator, custom, namespace) -> None:
    create(custom, namespace, "a", room_name())
    wait_phase(custom, namespace, "a", "Dispatched")
    code, body = operator.health()
    assert code == 200 and body == "ok"
    for name in (
        "loqua_operator_dispatches_created_total",
        "loqua_operator_livekit_request_duration_seconds_count",
        "loqua_operator_reconcile_duration_seconds_count",
    ):
        assert metric(operator, name) >= 1, name
    assert metric(operator, "loqua_operator_objects") >= 1
    assert get_ad(custom, namespace, "a") is not None
