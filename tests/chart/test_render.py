"""`helm lint` and `helm template` of helm/loqua-agents: tiers, toggles, security, secrets, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loqua_operator.settings import OperatorSettings
from loqua_tutor.settings import TutorSettings
from tests.chart.chartlib import (
    ALERTS,
    CHART,
    DASHBOARD,
    EXAMPLES,
    KUBE_VERSION,
    MONITORING_API,
    NAMESPACE,
    ROOT,
    TIERS,
    Helm,
    container,
    deployment,
    env_of,
    env_values,
    of_kind,
    one,
    worker_values,
)

ALL_ON = {
    "workerDefaults": {"pdb": {"enabled": True}, "hpa": {"enabled": True}},
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
}


def test_chart_crd_has_the_same_bytes_as_deploy_crds() -> None:
    source = ROOT / "deploy" / "crds"
    shipped = CHART / "crds"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in source.iterdir())
    for path in source.iterdir():
        assert (shipped / path.name).read_bytes() == path.read_bytes(), f"copy {path} to {shipped}/"


@pytest.mark.parametrize("values_file", [None, *EXAMPLES], ids=lambda p: p.name if p else "defaults")
def test_lint_strict(helm: Helm, values_file: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    if values_file:
        args += ["-f", str(values_file)]
    out = helm.run(*args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


@pytest.mark.parametrize("values_file", EXAMPLES, ids=lambda p: p.name)
def test_examples_render_with_monitoring(helm: Helm, values_file: Path) -> None:
    objs = helm.render(files=[values_file], api_versions=[MONITORING_API])
    region = yaml.safe_load(values_file.read_text())["region"]
    assert {o["metadata"]["labels"]["loqua.app/region"] for o in objs} == {region}
    assert of_kind(objs, "ServiceMonitor") and of_kind(objs, "PrometheusRule")
    assert not of_kind(objs, "Secret")


def test_defaults_render_the_operator_and_one_worker(helm: Helm) -> None:
    objs = helm.render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ServiceAccount",  # operator
            "ServiceAccount",  # workers (no token)
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",  # operator: metrics + webhook
            "Service",  # workers' metrics (headless)
            "Deployment",
            "Deployment",
        ]
    )
    assert all(o["metadata"].get("namespace") in (None, NAMESPACE) for o in objs)
    worker = deployment(objs, "worker", "tutor")
    assert env_values(worker)["AGENT_NAME"] == "tutor"
    assert container(deployment(objs, "operator"))["image"] == "ghcr.io/loqua/loqua-agents:0.1.0"


# ---- tiers and sizing ---------------------------------------------------------------------------


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_tier_sizes_the_worker(helm: Helm, tier: str) -> None:
    objs = helm.render(worker_values({"name": "w", "tier": tier, "agentName": "spanish-tutor"}))
    dep = deployment(objs, "worker", "w")
    expected = TIERS[tier]
    resources = container(dep)["resources"]
    assert resources["limits"] == {"cpu": expected["cpu"], "memory": expected["memory"]}
    assert resources["requests"] == {"cpu": expected["req_cpu"], "memory": expected["req_mem"]}
    env = env_values(dep)
    assert env["TIER"] == tier
    assert env["MAX_CONCURRENT_SESSIONS"] == str(expected["sessions"])
    assert env["AGENT_NAME"] == "spanish-tutor"
    assert dep["metadata"]["labels"]["loqua.app/tier"] == tier
    assert dep["spec"]["template"]["metadata"]["labels"]["loqua.app/tier"] == tier


def test_tier_table_matches_the_worker_code(helm: Helm) -> None:
    from loqua_tutor.tiers import TIERS

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    code = {t.value: {"cpu": s.cpu, "memory": s.memory, "sessions": s.sessions} for t, s in TIERS.items()}
    chart = {k: {key: v[key] for key in ("cpu", "memory", "sessions")} for k, v in values["tiers"].items()}
    assert code == chart


@pytest.mark.parametrize(
    ("limits", "requests"),
    [
        ({"cpu": "3", "memory": "6Gi"}, {"cpu": "1500m", "memory": "3Gi"}),
        ({"cpu": "500m", "memory": "3Gi"}, {"cpu": "250m", "memory": "1536Mi"}),
        ({"cpu": "1.5", "memory": "1G"}, {"cpu": "750m", "memory": "500000000"}),
        ({"cpu": "2", "memory": "1000Mi"}, {"cpu": "1000m", "memory": "500Mi"}),
    ],
)
def test_requests_are_half_of_overridden_limits(
    helm: Helm, limits: dict[str, str], requests: dict[str, str]
) -> None:
    objs = helm.render(
        worker_values({"name": "w", "tier": "basic-conversation", "resources": {"limits": limits}})
    )
    resources = container(deployment(objs, "worker", "w"))["resources"]
    assert resources == {"limits": limits, "requests": requests}


def test_explicit_requests_and_tier_overrides_win(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            {"name": "a", "tier": "ai-processing", "resources": {"requests": {"cpu": "3", "memory": "7Gi"}}},
            {"name": "b", "tier": "specialized-tutor", "sessions": 2},
            tiers={
                "specialized-tutor": {"cpu": "1", "memory": "2Gi", "sessions": 2, "requests": {"cpu": "800m"}}
            },
        )
    )
    a = container(deployment(objs, "worker", "a"))["resources"]
    assert a == {"limits": {"cpu": "4", "memory": "8Gi"}, "requests": {"cpu": "3", "memory": "7Gi"}}
    b = deployment(objs, "worker", "b")
    assert container(b)["resources"] == {
        "limits": {"cpu": "1", "memory": "2Gi"},
        "requests": {"cpu": "800m", "memory": "1Gi"},
    }
    assert env_values(b)["MAX_CONCURRENT_SESSIONS"] == "2"


def test_worker_overrides_merge_over_worker_defaults(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            {"name": "zero", "tier": "basic-conversation", "replicas": 0, "podAnnotations": {"b": "2"}},
            {
                "name": "auto",
                "tier": "basic-conversation",
                "agentName": "",
                "sessions": 7,
                "agentId": "loqua-auto",
            },
            workerDefaults={"replicas": 3, "podAnnotations": {"a": "1"}},
        )
    )
    zero = deployment(objs, "worker", "zero")
    assert zero["spec"]["replicas"] == 0
    assert zero["spec"]["template"]["metadata"]["annotations"] == {"a": "1", "b": "2"}
    auto = deployment(objs, "worker", "auto")
    assert auto["spec"]["replicas"] == 3
    env = env_values(auto)
    assert env["AGENT_NAME"] == ""  # automatic dispatch
    assert env["MAX_CONCURRENT_SESSIONS"] == "7"
    assert env["AGENT_ID"] == "loqua-auto"


@pytest.mark.parametrize(("drain", "finalize", "grace"), [(600, 30, 660), (1800, 30, 1860), (60, 10, 100)])
def test_termination_grace_outlasts_the_drain(helm: Helm, drain: int, finalize: int, grace: int) -> None:
    objs = helm.render(
        worker_values(
            {
                "name": "w",
                "tier": "basic-conversation",
                "drainTimeoutSeconds": drain,
                "finalizeTimeoutSeconds": finalize,
            }
        )
    )
    dep = deployment(objs, "worker", "w")
    env = env_values(dep)
    assert env["DRAIN_TIMEOUT_SECONDS"] == str(drain)
    assert env["FINALIZE_TIMEOUT_SECONDS"] == str(finalize)
    period = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period == grace
    assert period > int(env["DRAIN_TIMEOUT_SECONDS"]) + int(env["FINALIZE_TIMEOUT_SECONDS"])


def test_termination_grace_below_the_drain_is_refused(helm: Helm) -> None:
    err = helm.render_error(
        worker_values({"name": "w", "tier": "basic-conversation", "terminationGracePeriodSeconds": 600})
    )
    assert (
        "terminationGracePeriodSeconds (600) must exceed drainTimeoutSeconds + finalizeTimeoutSeconds (630)"
        in err
    )
    objs = helm.render(
        worker_values({"name": "w", "tier": "basic-conversation", "terminationGracePeriodSeconds": 631})
    )
    assert deployment(objs, "worker", "w")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 631


# ---- containers: commands, env, probes, security ----------------------------------------------


def test_operator_container(helm: Helm) -> None:
    objs = helm.render(
        {"operator": {"managedAgentNames": ["spanish-tutor", "french-tutor"]}, "region": "eu-west"}
    )
    dep = deployment(objs, "operator")
    c = container(dep)
    assert c["command"] == ["loqua-operator", "run"]
    assert "args" not in c  # all namespaces
    env = env_of(dep)
    values = env_values(dep)
    assert values == {
        "LIVEKIT_URL": "ws://livekit-server:7880",
        "AGENT_TTL_SECONDS": "300",
        "CLEANUP_INTERVAL_MS": "60000",
        "ORPHAN_GRACE_SECONDS": "120",
        "AGENT_PRESENCE_GRACE_SECONDS": "15",
        "MAX_REDISPATCHES": "10",
        "ORPHAN_ROOMS_PER_SWEEP": "200",
        "LIVENESS_LOOP_STALL_SECONDS": "10",
        "LIVENESS_WATCH_STALL_SECONDS": "150",
        "MANAGED_AGENT_NAMES": "spanish-tutor,french-tutor",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "LOG_RATE_LIMIT": "400",
        "METRICS_PORT": "9100",
        "WEBHOOK_ENABLED": "true",
        "WEBHOOK_PORT": "8090",
        "REGION": "eu-west",
        "LEADER_ELECTION": "true",
        "LEASE_NAME": "rel-loqua-agents-operator-leader",
    }
    assert env["LIVEKIT_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "loqua-livekit", "key": "api-key"}
    }
    assert env["LIVEKIT_API_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "loqua-livekit", "key": "api-secret"}
    }
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9100, "webhook": 8090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Only one operator acts; a rolling update would wait forever for a standby to turn ready.
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_env_names_are_operator_settings(helm: Helm) -> None:
    fields = set(OperatorSettings.model_fields)
    for name in env_of(deployment(helm.render(), "operator")):
        assert name.lower() in fields, f"{name} is not a setting of loqua_operator.settings.OperatorSettings"


def test_worker_env_names_are_tutor_settings(helm: Helm) -> None:
    fields = set(TutorSettings.model_fields)
    process_env = {"XDG_CACHE_HOME"}  # for libraries, not a worker setting
    objs = helm.render(worker_values({"name": "w", "tier": "ai-processing", "numIdleProcesses": 1}))
    for name in env_of(deployment(objs, "worker", "w")):
        assert name.lower() in fields or name in process_env, f"{name} is not a setting of TutorSettings"


def test_worker_container(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            {
                "name": "spanish",
                "tier": "ai-processing",
                "agentName": "spanish-tutor",
                "env": [{"name": "STT_PROVIDER", "value": "deepgram"}],
                "envFrom": [{"secretRef": {"name": "voice-keys"}}],
            },
            region="us-east",
            loqua={"apiBaseUrl": "https://api.us-east.loqua.app", "agentId": "loqua-us"},
        )
    )
    dep = deployment(objs, "worker", "spanish")
    assert dep["metadata"]["name"] == "rel-loqua-agents-spanish"
    c = container(dep)
    assert c["command"] == ["loqua-tutor", "start"]
    env = env_of(dep)
    values = env_values(dep)
    for name, value in {
        "AGENT_NAME": "spanish-tutor",
        "TIER": "ai-processing",
        "MAX_CONCURRENT_SESSIONS": "5",
        "DRAIN_TIMEOUT_SECONDS": "600",
        "METRICS_PORT": "9101",
        "HEALTH_PORT": "8081",
        "LOG_FORMAT": "json",
        "LOG_RATE_LIMIT": "400",
        "REGION": "us-east",
        "API_BASE_URL": "https://api.us-east.loqua.app",
        "AGENT_ID": "loqua-us",
        "LIVEKIT_URL": "ws://livekit-server:7880",
        "STT_PROVIDER": "deepgram",
    }.items():
        assert values[name] == value, name
    secrets = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert secrets == {
        "LIVEKIT_API_KEY": {"name": "loqua-livekit", "key": "api-key"},
        "LIVEKIT_API_SECRET": {"name": "loqua-livekit", "key": "api-secret"},
        "AGENT_JWT_TOKEN": {"name": "loqua-agent", "key": "agent-jwt-token"},
        "SHARED_SECRET": {"name": "loqua-agent", "key": "shared-secret"},
    }
    assert c["envFrom"] == [{"secretRef": {"name": "voice-keys"}}]
    # Probes on livekit-agents' worker HTTP server (HEALTH_PORT, GET /).
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9101, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/", "port": "health"}
    assert ports["health"] == int(values["HEALTH_PORT"])
    spec = dep["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_worker_ports_follow_the_values(helm: Helm) -> None:
    objs = helm.render(
        worker_values({"name": "w", "tier": "basic-conversation"}, workerDefaults={"healthPort": 8181})
    )
    dep = deployment(objs, "worker", "w")
    assert env_values(dep)["HEALTH_PORT"] == "8181"
    assert {p["name"]: p["containerPort"] for p in container(dep)["ports"]}["health"] == 8181


def test_worker_defaults_match_the_worker_code(helm: Helm) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["workerDefaults"]
    fields = TutorSettings.model_fields
    for key, setting in {
        "drainTimeoutSeconds": "drain_timeout_seconds",
        "metricsPort": "metrics_port",
        "healthPort": "health_port",
        "jobExecutor": "job_executor",
    }.items():
        assert values[key] == fields[setting].default, key
    assert values["finalizeTimeoutSeconds"] == int(fields["finalize_timeout_seconds"].default)


@pytest.mark.parametrize("component", ["operator", "worker"])
def test_restricted_security_context(helm: Helm, component: str) -> None:
    dep = deployment(helm.render(), component)
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(dep)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(dep)["volumeMounts"]
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp


def test_leader_election_and_replicas(helm: Helm) -> None:
    objs = helm.render({"operator": {"replicas": 3}})
    dep = deployment(objs, "operator")
    assert dep["spec"]["replicas"] == 3
    assert env_values(dep)["LEADER_ELECTION"] == "true"
    err = helm.render_error({"operator": {"replicas": 2, "leaderElection": False}})
    assert "needs operator.leaderElection: true" in err
    single = deployment(helm.render({"operator": {"leaderElection": False}}), "operator")
    assert env_values(single)["LEADER_ELECTION"] == "false"


def test_watch_namespaces_become_arguments(helm: Helm) -> None:
    dep = deployment(helm.render({"operator": {"watchNamespaces": ["lessons", "lq-*"]}}), "operator")
    assert container(dep)["args"] == ["--namespace=lessons", "--namespace=lq-*"]


def test_image_tag_and_digest(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = container(deployment(helm.render(), "worker"))["image"]
    assert image == f"ghcr.io/loqua/loqua-agents:{chart['appVersion']}"
    digest = "sha256:" + "a" * 64
    objs = helm.render({"image": {"repository": "registry.example/loqua", "tag": "1.2.3", "digest": digest}})
    for dep in of_kind(objs, "Deployment"):
        assert container(dep)["image"] == f"registry.example/loqua:1.2.3@{digest}"


# ---- RBAC, Services --------------------------------------------------------------------------


def _rules(role: dict) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_rbac_is_least_privilege(helm: Helm) -> None:
    objs = helm.render()
    cluster = _rules(one(objs, "ClusterRole"))
    expected = {
        *(
            ("agents.loqua.app", "agentdispatches", v, ())
            for v in ("get", "list", "watch", "patch", "delete")
        ),
        *(("agents.loqua.app", "agentdispatches/status", v, ()) for v in ("get", "patch", "update")),
        *((g, "events", v, ()) for g in ("", "events.k8s.io") for v in ("create", "patch")),
        ("", "namespaces", "list", ()),
        ("", "namespaces", "watch", ()),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list", ()),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch", ()),
    }
    assert cluster == expected
    lease = "rel-loqua-agents-operator-leader"
    role = one(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", (lease,)),
        ("coordination.k8s.io", "leases", "update", (lease,)),
    }
    assert env_values(deployment(objs, "operator"))["LEASE_NAME"] == lease
    sa = one(objs, "ServiceAccount", "rel-loqua-agents-operator")
    for binding in (one(objs, "ClusterRoleBinding"), one(objs, "RoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
        ]
    assert (
        deployment(objs, "operator")["spec"]["template"]["spec"]["serviceAccountName"]
        == sa["metadata"]["name"]
    )


def test_services(helm: Helm) -> None:
    objs = helm.render()
    op = one(objs, "Service", "rel-loqua-agents-operator")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in op["spec"]["ports"]} == {
        "metrics": (9100, "metrics"),
        "webhook": (8090, "webhook"),
    }
    assert op["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    workers = one(objs, "Service", "rel-loqua-agents-workers")
    assert workers["spec"]["clusterIP"] == "None"
    assert workers["spec"]["ports"] == [
        {"name": "metrics", "port": 9101, "targetPort": "metrics", "protocol": "TCP"}
    ]
    no_webhook = helm.render({"operator": {"webhook": {"enabled": False}}})
    op = one(no_webhook, "Service", "rel-loqua-agents-operator")
    assert [p["name"] for p in op["spec"]["ports"]] == ["metrics"]
    assert env_values(deployment(no_webhook, "operator"))["WEBHOOK_ENABLED"] == "false"


def test_selectors_match_pod_labels(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            {"name": "a", "tier": "basic-conversation"},
            {"name": "b", "tier": "ai-processing"},
            workerDefaults={"pdb": {"enabled": True}},
        )
    )
    for dep in of_kind(objs, "Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Each worker Deployment selects only its own pods.
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in of_kind(objs, "Deployment")
    ]
    assert len(set(selectors)) == 3
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        worker = pdb["metadata"]["labels"]["loqua.app/worker"]
        assert (
            pdb["spec"]["selector"]["matchLabels"]
            == deployment(objs, "worker", worker)["spec"]["selector"]["matchLabels"]
        )


# ---- toggles ------------------------------------------------------------------------------------


def test_pdb_and_hpa_are_off_by_default(helm: Helm) -> None:
    objs = helm.render()
    assert not of_kind(objs, "PodDisruptionBudget")
    assert not of_kind(objs, "HorizontalPodAutoscaler")
    assert deployment(objs, "worker")["spec"]["replicas"] == 1


def test_pdb_and_hpa_per_worker(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            {"name": "a", "tier": "basic-conversation", "pdb": {"enabled": True}, "hpa": {"enabled": True}},
            {"name": "b", "tier": "ai-processing", "pdb": {"enabled": True, "minAvailable": 2}},
            {
                "name": "c",
                "tier": "specialized-tutor",
                "hpa": {"enabled": True, "maxReplicas": 9},
                "replicas": 4,
            },
        )
    )
    pdbs = {p["metadata"]["name"]: p for p in of_kind(objs, "PodDisruptionBudget")}
    assert set(pdbs) == {"rel-loqua-agents-a", "rel-loqua-agents-b"}
    assert pdbs["rel-loqua-agents-a"]["apiVersion"] == "policy/v1"
    assert pdbs["rel-loqua-agents-a"]["spec"]["maxUnavailable"] == 1
    assert pdbs["rel-loqua-agents-b"]["spec"] == {
        "minAvailable": 2,
        "selector": deployment(objs, "worker", "b")["spec"]["selector"],
    }
    hpas = {h["metadata"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"rel-loqua-agents-a", "rel-loqua-agents-c"}
    a = hpas["rel-loqua-agents-a"]
    assert a["apiVersion"] == "autoscaling/v2"
    assert a["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rel-loqua-agents-a",
    }
    assert (a["spec"]["minReplicas"], a["spec"]["maxReplicas"]) == (1, 5)
    assert a["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    assert hpas["rel-loqua-agents-c"]["spec"]["maxReplicas"] == 9
    # The HPA owns the replica count of the Deployments it scales.
    assert "replicas" not in deployment(objs, "worker", "a")["spec"]
    assert "replicas" not in deployment(objs, "worker", "c")["spec"]
    assert deployment(objs, "worker", "b")["spec"]["replicas"] == 1


@pytest.mark.parametrize("api", [False, True], ids=["no-monitoring-api", "monitoring-api"])
@pytest.mark.parametrize("enabled", [False, True], ids=["off", "on"])
def test_monitoring_needs_the_api_and_the_toggle(helm: Helm, api: bool, enabled: bool) -> None:
    values = {"monitoring": {"serviceMonitor": {"enabled": enabled}, "prometheusRule": {"enabled": enabled}}}
    objs = helm.render(values, api_versions=[MONITORING_API] if api else [])
    rendered = bool(of_kind(objs, "ServiceMonitor")), bool(of_kind(objs, "PrometheusRule"))
    assert rendered == (api and enabled, api and enabled)


def test_monitoring_toggles_are_independent(helm: Helm) -> None:
    only_sm = helm.render(
        {"monitoring": {"serviceMonitor": {"enabled": True}}}, api_versions=[MONITORING_API]
    )
    assert of_kind(only_sm, "ServiceMonitor") and not of_kind(only_sm, "PrometheusRule")
    only_pr = helm.render(
        {"monitoring": {"prometheusRule": {"enabled": True}}}, api_versions=[MONITORING_API]
    )
    assert of_kind(only_pr, "PrometheusRule") and not of_kind(only_pr, "ServiceMonitor")


def test_service_monitor(helm: Helm) -> None:
    objs = helm.render(ALL_ON, api_versions=[MONITORING_API])
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects both metrics Services and nothing else.
    selected = [
        s
        for s in of_kind(objs, "Service")
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"]["app.kubernetes.io/component"]
        in sm["spec"]["selector"]["matchExpressions"][0]["values"]
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [
        "rel-loqua-agents-operator",
        "rel-loqua-agents-workers",
    ]
    for svc in selected:
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
    custom = helm.render(
        {**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "release": "prom"}}, api_versions=[MONITORING_API]
    )
    assert one(custom, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"
    assert one(custom, "PrometheusRule")["metadata"]["labels"]["release"] == "prom"


def test_prometheus_rule_embeds_alerts_yaml(helm: Helm) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    rule = one(helm.render(ALL_ON, api_versions=[MONITORING_API]), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == rules
    base = "https://runbooks.example/loqua.md"
    values = {"monitoring": {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}}}
    moved = one(helm.render(values, api_versions=[MONITORING_API]), "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in moved["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u.startswith(base + "#") for u in urls)


def test_dashboard_configmap(helm: Helm) -> None:
    assert not of_kind(helm.render(), "ConfigMap")
    objs = helm.render({"monitoring": {"dashboard": {"enabled": True}}})  # no monitoring API needed
    cm = one(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["loqua-agents.json"]) == json.loads(DASHBOARD.read_text())
    elsewhere = one(
        helm.render({"monitoring": {"dashboard": {"enabled": True, "namespace": "grafana"}}}), "ConfigMap"
    )
    assert elsewhere["metadata"]["namespace"] == "grafana"


# ---- secrets and region -------------------------------------------------------------------------

SECRET_VALUES = {
    "livekitApiKey": "lk-key-do-not-render",
    "livekitApiSecret": "lk-secret-do-not-render",
    "agentJwtToken": "aaa.bbb.do-not-render",
    "sharedSecret": "shared-do-not-render",
}


@pytest.mark.parametrize(
    "values",
    [None, ALL_ON, {"secrets": SECRET_VALUES}, *(yaml.safe_load(p.read_text()) for p in EXAMPLES)],
    ids=["defaults", "all-toggles", "secret-values-without-opt-in", *(p.stem for p in EXAMPLES)],
)
def test_secrets_are_never_rendered_by_default(helm: Helm, values: dict | None) -> None:
    out = helm.template(values, api_versions=[MONITORING_API])
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert not of_kind(objs, "Secret")
    for secret in SECRET_VALUES.values():
        assert secret not in out.stdout


def test_secrets_opt_in(helm: Helm) -> None:
    objs = helm.render({"createSecrets": True, "secrets": SECRET_VALUES})
    secrets = {s["metadata"]["name"]: s for s in of_kind(objs, "Secret")}
    assert secrets["rel-loqua-agents-livekit"]["stringData"] == {
        "api-key": SECRET_VALUES["livekitApiKey"],
        "api-secret": SECRET_VALUES["livekitApiSecret"],
    }
    assert secrets["rel-loqua-agents-loqua"]["stringData"] == {
        "agent-jwt-token": SECRET_VALUES["agentJwtToken"],
        "shared-secret": SECRET_VALUES["sharedSecret"],
    }
    env = env_of(deployment(objs, "worker"))
    assert env["LIVEKIT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "rel-loqua-agents-livekit"
    assert env["SHARED_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "rel-loqua-agents-loqua"
    assert "secrets.sharedSecret is required" in helm.render_error(
        {"createSecrets": True, "secrets": {**SECRET_VALUES, "sharedSecret": ""}}
    )


def test_existing_secret_names(helm: Helm) -> None:
    objs = helm.render(
        worker_values(
            {"name": "a", "tier": "basic-conversation"},
            {"name": "b", "tier": "basic-conversation", "existingSecret": "agent-b"},
            livekit={"existingSecret": "lk", "secretKeys": {"apiKey": "key", "apiSecret": "secret"}},
            loqua={"existingSecret": "agents", "secretKeys": {"agentJwtToken": "jwt", "sharedSecret": "aes"}},
        )
    )
    a, b = env_of(deployment(objs, "worker", "a")), env_of(deployment(objs, "worker", "b"))
    assert a["LIVEKIT_API_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "lk", "key": "secret"}
    assert a["AGENT_JWT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "agents", "key": "jwt"}
    assert b["AGENT_JWT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "agent-b", "key": "jwt"}
    assert "livekit.existingSecret" in helm.render_error({"livekit": {"existingSecret": ""}})


def test_region_labels_every_object_and_reaches_the_processes(helm: Helm) -> None:
    objs = helm.render({**ALL_ON, "region": "ap-south"}, api_versions=[MONITORING_API])
    assert len(objs) >= 15
    for obj in objs:
        assert obj["metadata"]["labels"]["loqua.app/region"] == "ap-south", obj["kind"]
    for dep in of_kind(objs, "Deployment"):
        assert dep["spec"]["template"]["metadata"]["labels"]["loqua.app/region"] == "ap-south"
        assert env_values(dep)["REGION"] == "ap-south"


def test_common_labels(helm: Helm) -> None:
    objs = helm.render({**ALL_ON, "commonLabels": {"team": "voice"}}, api_versions=[MONITORING_API])
    assert all(o["metadata"]["labels"]["team"] == "voice" for o in objs)


# ---- schema and guards ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (worker_values({"name": "w", "tier": "premium"}), "tier"),
        (worker_values({"name": "w", "tier": "Basic-Conversation"}), "tier"),
        (worker_values({"name": "w"}), "tier"),
        ({"tiers": {"premium": {"cpu": "8", "memory": "16Gi", "sessions": 20}}}, "premium"),
        ({"replicas": 2}, "replicas"),  # unknown top-level key (belongs under operator)
        ({"operator": {"replica": 2}}, "replica"),
        (worker_values({"name": "w", "tier": "ai-processing", "replica": 2}), "replica"),
        ({"operator": {"replicas": "two"}}, "replicas"),
        ({"operator": {"agentTtlSeconds": 1.5}}, "agentTtlSeconds"),
        ({"operator": {"agentTtlSeconds": 90000}}, "agentTtlSeconds"),
        ({"workers": {"name": "w", "tier": "ai-processing"}}, "workers"),
        (worker_values({"name": "W_1", "tier": "ai-processing"}), "name"),
        (worker_values({"name": "w", "tier": "ai-processing", "agentName": "Spanish Tutor"}), "agentName"),
        (worker_values({"name": "w", "tier": "ai-processing", "sessions": 0}), "sessions"),
        (
            worker_values({"name": "w", "tier": "ai-processing", "drainTimeoutSeconds": "600"}),
            "drainTimeoutSeconds",
        ),
        ({"tiers": {"ai-processing": {"cpu": "4 cores", "memory": "8Gi", "sessions": 5}}}, "cpu"),
        ({"tiers": {"ai-processing": {"cpu": "4", "memory": "8GB", "sessions": 5}}}, "memory"),
        ({"tiers": {"ai-processing": {"cpu": "4", "memory": 8589934592, "sessions": 5}}}, "memory"),
        ({"region": ""}, "region"),
        ({"region": "EU West"}, "region"),
        ({"livekit": {"url": "livekit:7880"}}, "url"),
        ({"logging": {"level": "TRACE"}}, "level"),
        ({"createSecrets": "yes"}, "createSecrets"),
        ({"monitoring": {"serviceMonitor": {"enabled": "true"}}}, "enabled"),
        ({"image": {"digest": "latest"}}, "digest"),
    ],
)
def test_schema_rejects(helm: Helm, values: dict, message: str) -> None:
    err = helm.render_error(values)
    assert "schema" in err.lower() and message in err, err


def test_duplicate_worker_names_are_refused(helm: Helm) -> None:
    err = helm.render_error(
        worker_values({"name": "w", "tier": "ai-processing"}, {"name": "w", "tier": "basic-conversation"})
    )
    assert 'the name "w" is used twice' in err


def test_no_workers(helm: Helm) -> None:
    objs = helm.render({"workers": []})
    assert [d["metadata"]["labels"]["app.kubernetes.io/component"] for d in of_kind(objs, "Deployment")] == [
        "operator"
    ]
    assert not [o for o in objs if o["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def test_other_resources_pass_through(helm: Helm) -> None:
    worker = {
        "name": "w",
        "tier": "ai-processing",
        "resources": {"limits": {"ephemeral-storage": "2Gi"}, "requests": {"ephemeral-storage": "1Gi"}},
    }
    resources = container(deployment(helm.render(worker_values(worker)), "worker", "w"))["resources"]
    assert resources == {
        "limits": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "2Gi"},
        "requests": {"cpu": "2000m", "memory": "4Gi", "ephemeral-storage": "1Gi"},
    }


def test_hpa_needs_a_metric(helm: Helm) -> None:
    hpa = {"enabled": True, "targetCPUUtilizationPercentage": None}
    err = helm.render_error(worker_values({"name": "w", "tier": "ai-processing", "hpa": hpa}))
    assert "workers[w].hpa: set targetCPUUtilizationPercentage" in err
    custom = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "loqua_tutor_worker_jobs"},
                "target": {"type": "AverageValue", "averageValue": "3"},
            },
        }
    ]
    objs = helm.render(
        worker_values({"name": "w", "tier": "ai-processing", "hpa": {**hpa, "metrics": custom}})
    )
    assert one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"] == custom


def test_worker_names_stay_unique_after_truncation(helm: Helm) -> None:
    # <40 f's>-<40 x's> and <40 f's>-<39 x's>y are both cut to the same 63 characters.
    workers = [{"name": "x" * 40, "tier": "ai-processing"}, {"name": "x" * 39 + "y", "tier": "ai-processing"}]
    err = helm.render_error({"workers": workers, "fullnameOverride": "f" * 40})
    assert "names are cut at 63 characters" in err
