"""The built-in demand scaler against the real kube-apiserver and kube-controller-manager: the
Deployment's scale subresource, the pod annotations, and the real ReplicaSet controller choosing
which pods go on a scale-down (no node: the pods stay Pending, which the ReplicaSet ranks alike, so
the deletion cost decides). The one stand-in is the per-pod load (a Pending pod has no IP to scrape);
the scrape itself runs on the local node in tests/cluster/test_scaling.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import kubernetes
import pytest
from prometheus_client import CollectorRegistry

from loqua_operator.leader import WriteGate
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import DispatchKey
from loqua_operator.scaling import DELETION_COST, WorkerScaling
from loqua_operator.workers import DemandScaler, WorkerClient

pytestmark = pytest.mark.integration
LABELS = {"app": "demand-worker"}


@dataclass
class Obj:
    key: DispatchKey
    deleting: bool = False


class LoadFromTable(WorkerClient):
    """The real client; only a pod's running jobs come from a table (Pending pods have no IP)."""

    load: dict[str, int] = {}

    async def running_jobs(self, pod: Any, port: int) -> int | None:
        return self.load.get(pod.metadata.name)


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"containers": [{"name": "w", "image": "localhost/never-pulled:1"}]},
            },
        },
    }


async def until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def test_scale_up_at_once_down_after_the_delay_and_the_busy_pod_stays(
    kube_client: kubernetes.client.ApiClient, core: kubernetes.client.CoreV1Api, unique_name: str
) -> None:
    ns = f"scale-{unique_name}"[:63]
    apps = kubernetes.client.AppsV1Api(kube_client)
    core.create_namespace({"metadata": {"name": ns}})
    try:
        apps.create_namespaced_deployment(ns, deployment("w"))

        def pods() -> list[Any]:
            items = core.list_namespaced_pod(ns, label_selector="app=demand-worker").items
            return [p for p in items if not p.metadata.deletion_timestamp]

        await until(lambda: len(pods()) == 1, "the first pod")
        registry = CollectorRegistry()
        now = [0.0]
        objects = [Obj(DispatchKey(f"room-{i}", "spanish-tutor")) for i in range(6)]
        worker = WorkerScaling.model_validate(
            {
                "deployment": "w",
                "agentName": "spanish-tutor",
                "sessions": 2,
                "min": 1,
                "max": 4,
                "scaleDownDelaySeconds": 30,
                "selector": "app=demand-worker",
                "metricsPort": 9101,
            }
        )
        client = LoadFromTable(ns, WriteGate(elected=False).check, kube_client)
        scaler = DemandScaler([worker], lambda: objects, client, OperatorMetrics(registry), 1.0, clock=lambda: now[0])
        try:
            await scaler.tick()  # demand 6, 2 sessions per pod -> 3 at once
            assert apps.read_namespaced_deployment_scale("w", ns).spec.replicas == 3
            three = await until(lambda: (p := pods()) and len(p) == 3 and p, "three pods")
            busy, idle, half = sorted(p.metadata.name for p in three)
            LoadFromTable.load = {busy: 2, idle: 0, half: 1}

            objects.clear()  # learners gone, objects expired: desired 1
            now[0] = 10.0
            await scaler.tick()
            assert apps.read_namespaced_deployment_scale("w", ns).spec.replicas == 3  # within the delay
            now[0] = 31.0
            await scaler.tick()
            assert apps.read_namespaced_deployment_scale("w", ns).spec.replicas == 1
            costs = {p.metadata.name: (p.metadata.annotations or {}).get(DELETION_COST) for p in pods()}
            (kept,) = await until(lambda: (p := pods()) and len(p) == 1 and p, "the scale-down to one pod")
            # The real ReplicaSet controller removed the idle and the half-busy pod, kept the busiest.
            assert kept.metadata.name == busy, (kept.metadata.name, costs)
            assert kept.metadata.annotations[DELETION_COST] == "2"
            assert (
                registry.get_sample_value(
                    "loqua_operator_worker_scale_changes_total", {"agent_name": "spanish-tutor", "direction": "down"}
                )
                == 1
            )
        finally:
            await client.close()
    finally:
        core.delete_namespace(ns)
