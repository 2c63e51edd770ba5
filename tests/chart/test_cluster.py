"""The chart against the local stack's kube-apiserver (v1.33, RBAC, PodSecurity admission):
`helm install`, the operator's RBAC both ways, and the pod templates under the restricted profile.

No kubelet or scheduler runs, so pods stay Pending; the controller manager still creates them from
the Deployments, which goes through the same admission as `kubectl create --dry-run=server`.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from loqua_devstack.services import kubectl
from tests.chart.chartlib import CHART, EXAMPLES, Helm, binary, container, of_kind

pytestmark = pytest.mark.chart

EU_WEST = next(p for p in EXAMPLES if p.name == "values-eu-west.yaml")
CRD = "agentdispatches.agents.loqua.app"


@dataclass
class Installed:
    env: dict[str, str]
    namespace: str
    release: str
    install_output: str
    install_errors: str
    manifest: list[dict[str, Any]]

    @property
    def fullname(self) -> str:
        return f"{self.release}-loqua-agents"

    def sa(self, name: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}-{name}"


@pytest.fixture(scope="module")
def installed(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    helm = Helm(binary("helm", "HELM_BIN", stack_env))
    home = tmp_path_factory.mktemp("helm")
    env = {
        "KUBECONFIG": stack_env["KUBECONFIG"],
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    suffix = uuid.uuid4().hex[:8]
    namespace, release = f"chart-{suffix}", f"ch-{suffix}"
    kubectl(
        stack_env,
        "apply",
        "-f",
        "-",
        input_=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {
                        f"pod-security.kubernetes.io/{mode}": "restricted"
                        for mode in ("enforce", "warn", "audit")
                    }
                    | {"pod-security.kubernetes.io/enforce-version": "latest"},
                },
            }
        ),
    )
    try:
        out = helm.run(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--wait=false",
            "-f",
            str(EU_WEST),
            "--set",
            "webBackend.enabled=true",
            env=env,
        )
        manifest = helm.run("get", "manifest", release, "--namespace", namespace, env=env).stdout
        yield Installed(
            env=stack_env,
            namespace=namespace,
            release=release,
            install_output=out.stdout,
            install_errors=out.stderr,
            manifest=[d for d in yaml.safe_load_all(manifest) if d],
        )
    finally:
        helm.run("uninstall", release, "--namespace", namespace, "--wait=false", env=env, check=False)
        kubectl(stack_env, "delete", "namespace", namespace, "--wait=false", check=False)


def test_install_succeeds_without_pod_security_warnings(installed: Installed) -> None:
    assert "STATUS: deployed" in installed.install_output
    assert "PodSecurity" not in installed.install_errors, installed.install_errors
    status = json.loads(kubectl(installed.env, "get", "deploy", "-n", installed.namespace, "-o", "json"))
    names = sorted(d["metadata"]["name"] for d in status["items"])
    assert names == sorted(
        f"{installed.fullname}-{n}" for n in ("operator", "spanish", "french", "pronunciation", "exam")
    )
    for dep in status["items"]:
        assert dep["metadata"]["labels"]["loqua.app/region"] == "eu-west"


def test_notes_tell_how_to_wire_livekit(installed: Installed) -> None:
    url = f"http://{installed.fullname}-operator.{installed.namespace}.svc:8090/webhooks/livekit"
    assert url in installed.install_output
    # Monitoring is enabled in the example, but this API server has no monitoring.coreos.com/v1.
    assert "monitoring.coreos.com/v1 API" in installed.install_output
    assert not of_kind(installed.manifest, "ServiceMonitor")
    assert of_kind(installed.manifest, "ConfigMap")  # the dashboard needs no CRD


def test_crd_is_established(installed: Installed) -> None:
    out = kubectl(
        installed.env,
        "get",
        "crd",
        CRD,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Established')].status}",
    )
    assert out == "True"


def test_the_controller_manager_creates_the_pods(installed: Installed) -> None:
    """Pods created by the ReplicaSet controller passed the namespace's restricted PodSecurity."""
    deployments = [d["metadata"]["name"] for d in of_kind(installed.manifest, "Deployment")]
    deadline = time.monotonic() + 90
    missing = deployments
    while time.monotonic() < deadline:
        pods = json.loads(kubectl(installed.env, "get", "pods", "-n", installed.namespace, "-o", "json"))[
            "items"
        ]
        owners = {p["metadata"]["name"].rsplit("-", 2)[0] for p in pods}
        missing = [d for d in deployments if d not in owners]
        if not missing:
            break
        time.sleep(1)
    events = kubectl(
        installed.env, "get", "events", "-n", installed.namespace, "--field-selector", "reason=FailedCreate"
    )
    assert not missing, f"no pods for {missing}; FailedCreate events:\n{events}"
    assert "PodSecurity" not in events


def _pods_from_templates(installed: Installed) -> list[dict[str, Any]]:
    pods = []
    for dep in of_kind(installed.manifest, "Deployment"):
        template = dep["spec"]["template"]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"dry-{dep['metadata']['name']}"[:63],
                    "namespace": installed.namespace,
                    "labels": template["metadata"]["labels"],
                },
                "spec": template["spec"],
            }
        )
    return pods


def _dry_run(installed: Installed, pod: dict[str, Any]) -> str:
    return kubectl(
        installed.env,
        "create",
        "--dry-run=server",
        "-o",
        "name",
        "-f",
        "-",
        input_=json.dumps(pod),
        check=False,
    )


def test_pod_templates_pass_the_restricted_profile(installed: Installed) -> None:
    pods = _pods_from_templates(installed)
    assert len(pods) == 5
    for pod in pods:
        out = _dry_run(installed, pod)
        assert out.strip() == f"pod/{pod['metadata']['name']}", out


def test_restricted_profile_is_enforced_here(installed: Installed) -> None:
    """Control: the same pod without its hardening is refused, so the test above means something."""
    pod = copy.deepcopy(_pods_from_templates(installed)[0])
    del pod["spec"]["securityContext"]
    del container({"spec": {"template": pod}})["securityContext"]
    out = _dry_run(installed, pod)
    assert "violates PodSecurity" in out and "restricted" in out, out


# ---- RBAC -----------------------------------------------------------------------------------------


def _can_i(
    installed: Installed, user: str, verb: str, resource: str, scope: str, subresource: str = ""
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args += (
        ["--all-namespaces"]
        if scope == "cluster"
        else ["-n", installed.namespace if scope == "own" else scope]
    )
    if subresource:
        args.append(f"--subresource={subresource}")
    out = kubectl(installed.env, *args, check=False).strip().splitlines()
    answer = out[-1] if out else ""
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {out}"
    return answer == "yes"


AD = "agentdispatches.agents.loqua.app"
# (verb, resource, scope, subresource): "cluster" = every namespace, "own" = the release namespace.
OPERATOR_MAY = [
    *((v, AD, "cluster", "") for v in ("get", "list", "watch", "patch", "delete")),
    *((v, AD, "cluster", "status") for v in ("get", "patch", "update")),
    ("create", "events", "cluster", ""),
    ("patch", "events", "cluster", ""),
    ("create", "events.events.k8s.io", "cluster", ""),
    ("patch", "events.events.k8s.io", "cluster", ""),
    ("list", "namespaces", "cluster", ""),
    ("watch", "namespaces", "cluster", ""),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "cluster", ""),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "cluster", ""),
    ("create", "leases.coordination.k8s.io", "own", ""),
    ("get", "leases.coordination.k8s.io/LEASE", "own", ""),
    ("update", "leases.coordination.k8s.io/LEASE", "own", ""),
]
OPERATOR_MAY_NOT = [
    ("create", AD, "cluster", ""),
    ("create", AD, "own", ""),
    ("update", AD, "cluster", ""),
    ("deletecollection", AD, "cluster", ""),
    ("delete", AD, "cluster", "status"),
    ("get", "secrets", "own", ""),
    ("list", "secrets", "cluster", ""),
    ("get", "configmaps", "own", ""),
    ("create", "pods", "own", ""),
    ("list", "pods", "cluster", ""),
    ("create", "pods/exec", "own", ""),
    ("create", "deployments.apps", "own", ""),
    ("patch", "deployments.apps", "own", ""),
    ("create", "serviceaccounts/token", "own", ""),
    ("get", "namespaces", "cluster", ""),
    ("create", "namespaces", "cluster", ""),
    ("delete", "namespaces", "cluster", ""),
    ("get", "customresourcedefinitions.apiextensions.k8s.io", "cluster", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", "cluster", ""),
    ("delete", "events", "cluster", ""),
    ("list", "leases.coordination.k8s.io", "own", ""),
    ("get", "leases.coordination.k8s.io/someone-else", "own", ""),
    ("update", "leases.coordination.k8s.io/LEASE", "default", ""),
    ("create", "leases.coordination.k8s.io", "default", ""),
    ("delete", "leases.coordination.k8s.io/LEASE", "own", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", "own", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", "cluster", ""),
    ("impersonate", "serviceaccounts", "own", ""),
    ("*", "*", "cluster", ""),
]


def _resolve(installed: Installed, resource: str) -> str:
    return resource.replace("LEASE", f"{installed.fullname}-operator-leader")


@pytest.mark.parametrize(("verb", "resource", "scope", "sub"), OPERATOR_MAY, ids=lambda v: str(v))
def test_operator_may(installed: Installed, verb: str, resource: str, scope: str, sub: str) -> None:
    assert _can_i(installed, installed.sa("operator"), verb, _resolve(installed, resource), scope, sub)


@pytest.mark.parametrize(("verb", "resource", "scope", "sub"), OPERATOR_MAY_NOT, ids=lambda v: str(v))
def test_operator_may_not(installed: Installed, verb: str, resource: str, scope: str, sub: str) -> None:
    assert not _can_i(installed, installed.sa("operator"), verb, _resolve(installed, resource), scope, sub)


@pytest.mark.parametrize(
    ("verb", "resource", "scope"),
    [
        ("get", AD, "own"),
        ("list", AD, "cluster"),
        ("get", "secrets", "own"),
        ("create", "leases.coordination.k8s.io", "own"),
        ("create", "events", "own"),
        ("list", "namespaces", "cluster"),
    ],
)
def test_workers_may_do_nothing(installed: Installed, verb: str, resource: str, scope: str) -> None:
    assert not _can_i(installed, installed.sa("worker"), verb, resource, scope)
    sa = json.loads(
        kubectl(
            installed.env,
            "get",
            "sa",
            f"{installed.fullname}-worker",
            "-n",
            installed.namespace,
            "-o",
            "json",
        )
    )
    assert sa["automountServiceAccountToken"] is False


WEB_BACKEND_MAY = [("create", AD), ("get", AD), ("patch", AD), ("watch", AD)]
WEB_BACKEND_MAY_NOT = [
    ("list", AD, "own", ""),
    ("delete", AD, "own", ""),
    ("update", AD, "own", ""),
    ("deletecollection", AD, "own", ""),
    ("patch", AD, "own", "status"),
    ("update", AD, "own", "status"),
    ("create", AD, "default", ""),
    ("get", AD, "cluster", ""),
    ("get", "secrets", "own", ""),
    ("create", "pods", "own", ""),
    ("create", "serviceaccounts/token", "own", ""),
    ("list", "namespaces", "cluster", ""),
    ("create", "leases.coordination.k8s.io", "own", ""),
    ("*", "*", "cluster", ""),
]


@pytest.mark.parametrize(("verb", "resource"), WEB_BACKEND_MAY, ids=lambda v: str(v))
def test_web_backend_may_ensure_and_watch_dispatches(installed: Installed, verb: str, resource: str) -> None:
    assert _can_i(installed, installed.sa("web-backend"), verb, resource, "own")


@pytest.mark.parametrize(("verb", "resource", "scope", "sub"), WEB_BACKEND_MAY_NOT, ids=lambda v: str(v))
def test_web_backend_may_not(installed: Installed, verb: str, resource: str, scope: str, sub: str) -> None:
    assert not _can_i(installed, installed.sa("web-backend"), verb, resource, scope, sub)


def test_operator_role_bindings_are_the_charts_only(installed: Installed) -> None:
    bindings = json.loads(
        kubectl(installed.env, "get", "clusterrolebindings,rolebindings", "-A", "-o", "json")
    )
    user = installed.sa("operator").split(":")
    mine = [
        b["metadata"]["name"]
        for b in bindings["items"]
        if any(
            s.get("kind") == "ServiceAccount" and s.get("name") == user[3] and s.get("namespace") == user[2]
            for s in b.get("subjects") or []
        )
    ]
    assert sorted(mine) == sorted([f"{installed.fullname}-operator", f"{installed.fullname}-operator-leader"])


def test_pdbs_hpas_and_dashboard_were_accepted(installed: Installed) -> None:
    out = kubectl(installed.env, "get", "pdb,hpa,configmap", "-n", installed.namespace, "-o", "name")
    names = set(out.split())
    f = installed.fullname
    for worker in ("spanish", "french", "pronunciation", "exam"):
        assert f"poddisruptionbudget.policy/{f}-{worker}" in names
        assert f"horizontalpodautoscaler.autoscaling/{f}-{worker}" in names
    assert f"configmap/{f}-dashboard" in names
