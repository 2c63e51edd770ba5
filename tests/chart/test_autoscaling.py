"""Worker replicas from declared demand: the built-in scaler's settings and RBAC, the KEDA
ScaledObject, and the rule that exactly one mechanism owns a Deployment's replicas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loqua_operator.scaling import WorkerScaling
from tests.chart.chartlib import Helm, deployment, env_values, of_kind, one, worker_values

KEDA_API = "keda.sh/v1alpha1"
PROMETHEUS = "http://prometheus-operated.monitoring:9090"


def tutor(**autoscaling: Any) -> dict[str, Any]:
    return {
        "name": "spanish",
        "tier": "basic-conversation",
        "agentName": "spanish-tutor",
        "sessions": 2,
        "autoscaling": autoscaling,
    }


def demand_settings(objs: list[dict[str, Any]]) -> list[WorkerScaling]:
    raw = env_values(deployment(objs, "operator"))["DEMAND_SCALING"]
    return [WorkerScaling.model_validate(w) for w in json.loads(raw)]


def test_off_by_default(helm: Helm) -> None:
    objs = helm.render()
    assert "DEMAND_SCALING" not in env_values(deployment(objs, "operator"))
    assert not [r for r in of_kind(objs, "Role") if r["metadata"]["name"].endswith("-scaler")]
    assert not of_kind(objs, "ScaledObject")


def test_demand_mode_configures_the_operator_and_leaves_replicas_to_it(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            tutor(mode="demand", min=1, max=4, spareSessions=1, scaleDownDelaySeconds=20),
            {"name": "other", "tier": "ai-processing", "agentName": "other", "replicas": 2},
        )
    )
    scaled = deployment(objs, "worker", "spanish")
    assert "replicas" not in scaled["spec"]  # a helm upgrade never resets what the scaler set
    assert deployment(objs, "worker", "other")["spec"]["replicas"] == 2
    (cfg,) = demand_settings(objs)
    assert cfg.deployment == scaled["metadata"]["name"] == "rel-loqua-agents-spanish"
    assert (cfg.agent_name, cfg.sessions, cfg.min, cfg.max) == ("spanish-tutor", 2, 1, 4)
    assert (cfg.spare_sessions, cfg.scale_down_delay_seconds, cfg.scale) == (1, 20, True)
    # the selector the scaler lists pods with is exactly the Deployment's
    labels = scaled["spec"]["selector"]["matchLabels"]
    assert dict(p.split("=", 1) for p in cfg.selector.split(",")) == labels
    assert cfg.metrics_port == 9101


def test_demand_mode_takes_the_tiers_sessions(helm: Helm) -> None:
    objs = helm.render(worker_values({**tutor(mode="demand"), "sessions": None, "tier": "ai-processing"}))
    assert demand_settings(objs)[0].sessions == 5


def test_scaler_rbac_names_only_the_charts_own_worker_deployments(helm: Helm) -> None:
    objs = helm.render(
        worker_values(tutor(mode="demand"), {"name": "fixed", "tier": "ai-processing", "agentName": "f"})
    )
    role = one(objs, "Role", "rel-loqua-agents-operator-scaler")
    rules = {tuple(r["resources"]): r for r in role["rules"]}
    assert rules[("deployments",)] == {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "resourceNames": ["rel-loqua-agents-spanish"],
        "verbs": ["get"],
    }
    assert rules[("deployments/scale",)]["resourceNames"] == ["rel-loqua-agents-spanish"]
    assert set(rules[("deployments/scale",)]["verbs"]) == {"get", "patch", "update"}
    assert set(rules[("pods",)]["verbs"]) == {"list", "patch"}  # deletion-cost annotations only
    assert role["metadata"]["namespace"] == "loqua-test"
    binding = one(objs, "RoleBinding", "rel-loqua-agents-operator-scaler")
    assert (
        binding["subjects"][0]["name"]
        == deployment(objs, "operator")["spec"]["template"]["spec"]["serviceAccountName"]
    )
    # the cluster-wide role did not grow
    cluster_role = one(objs, "ClusterRole")
    assert not [r for r in cluster_role["rules"] if "apps" in r["apiGroups"] or "pods" in r["resources"]]


def test_keda_mode_renders_a_scaled_object_on_the_desired_workers(helm: Helm) -> None:
    values = worker_values(
        tutor(mode="keda", min=1, max=4, scaleDownDelaySeconds=20, keda={"serverAddress": PROMETHEUS})
    )
    objs = helm.render(values, api_versions=[KEDA_API])
    so = one(objs, "ScaledObject", "rel-loqua-agents-spanish")
    assert so["apiVersion"] == KEDA_API
    assert so["spec"]["scaleTargetRef"] == {"name": "rel-loqua-agents-spanish"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 4)
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 20
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == PROMETHEUS
    assert (
        trigger["metadata"]["query"]
        == 'max(loqua_operator_desired_workers{agent_name="spanish-tutor",namespace="loqua-test"})'
    )
    assert trigger["metadata"]["threshold"] == "1"
    assert "replicas" not in deployment(objs, "worker", "spanish")["spec"]
    # the operator still computes the desired workers, but does not scale: no scaler RBAC
    (cfg,) = demand_settings(objs)
    assert cfg.scale is False
    assert not [r for r in of_kind(objs, "Role") if r["metadata"]["name"].endswith("-scaler")]
    assert not of_kind(objs, "HorizontalPodAutoscaler")


def test_keda_mode_without_the_keda_api_is_refused(helm: Helm) -> None:
    err = helm.render_error(worker_values(tutor(mode="keda", keda={"serverAddress": PROMETHEUS})))
    assert "workers[spanish]: autoscaling.mode keda needs the keda.sh/v1alpha1 API" in err


def test_keda_mode_needs_a_prometheus_address(helm: Helm) -> None:
    err = helm.render_error(worker_values(tutor(mode="keda")), api_versions=[KEDA_API])
    assert "workers[spanish].autoscaling.keda.serverAddress" in err


@pytest.mark.parametrize("mode", ["demand", "keda"])
def test_two_mechanisms_on_one_deployment_are_refused(helm: Helm, mode: str) -> None:
    entry = {**tutor(mode=mode, keda={"serverAddress": PROMETHEUS}), "hpa": {"enabled": True}}
    err = helm.render_error(worker_values(entry), api_versions=[KEDA_API])
    assert (
        f"workers[spanish]: autoscaling.mode {mode} and hpa.enabled would both set the Deployment's replicas"
        in err
    )


def test_cpu_hpa_stays_available(helm: Helm) -> None:
    objs = helm.render(
        worker_values({"name": "w", "tier": "ai-processing", "agentName": "w", "hpa": {"enabled": True}})
    )
    assert one(objs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "rel-loqua-agents-w"


def test_demand_needs_an_agent_name(helm: Helm) -> None:
    err = helm.render_error(worker_values({**tutor(mode="demand"), "agentName": ""}))
    assert "workers[spanish]: autoscaling.mode demand counts AgentDispatch objects by agent name" in err


def test_bounds_and_mode_are_validated(helm: Helm) -> None:
    assert "autoscaling.max (1) must be >= min (3)" in helm.render_error(
        worker_values(tutor(mode="demand", min=3, max=1))
    )
    assert "mode" in helm.render_error(worker_values(tutor(mode="cpu")))
