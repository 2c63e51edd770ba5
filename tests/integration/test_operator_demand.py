"""The operator process exports the declared demand per agent name from its live objects
(real kube-apiserver, real livekit-server): one job per (room, agent name), gone with the objects."""

from __future__ import annotations

import urllib.request
import uuid

import kubernetes
import pytest

from loqua_devstack.services import ServiceProcess, wait_for
from tests.integration.conftest import GROUP, PLURAL, VERSION, ad_manifest, wait_gone

pytestmark = pytest.mark.integration


def sample(operator: ServiceProcess, name: str, agent: str) -> float | None:
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{agent_name="{agent}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_demand_counts_one_job_per_room_and_leaves_with_the_objects(
    custom: kubernetes.client.CustomObjectsApi, namespace: str, operator: ServiceProcess
) -> None:
    agent = f"demand-{uuid.uuid4().hex[:6]}"  # no one else's objects carry it
    shared, alone = f"room-{uuid.uuid4().hex[:8]}", f"room-{uuid.uuid4().hex[:8]}"
    for name, room in (("a", shared), ("b", shared), ("c", alone)):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ad_manifest(name, room, agent))
    # two rooms -> two jobs (a and b share one dispatch)
    wait_for(lambda: sample(operator, "loqua_operator_agent_demand", agent) == 2, "demand 2", 30)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c")
    wait_for(lambda: sample(operator, "loqua_operator_agent_demand", agent) == 1, "demand 1", 30)
    for name in ("a", "b"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    for name in ("a", "b", "c"):
        wait_gone(custom, namespace, name)
    # an agent name without objects leaves the series (no stale label)
    wait_for(lambda: sample(operator, "loqua_operator_agent_demand", agent) is None, "the series gone", 30)
