"""The demand scaler's RBAC against the local stack's kube-apiserver: the operator may read and
scale its own demand-mode worker Deployment (by name) and annotate pods in the release namespace,
nothing more (not other Deployments, not the Deployment itself, not pods elsewhere)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml

from loqua_devstack.services import kubectl
from tests.chart.chartlib import CHART, Helm, binary
from tests.chart.test_cluster import Installed, _can_i

pytestmark = pytest.mark.chart


@pytest.fixture(scope="module")
def scaled(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    helm = Helm(binary("helm", "HELM_BIN", stack_env))
    home = tmp_path_factory.mktemp("helm")
    env = {
        "KUBECONFIG": stack_env["KUBECONFIG"],
        **{f"HELM_{k}_HOME": str(home / k) for k in ("CACHE", "CONFIG", "DATA")},
    }
    suffix = uuid.uuid4().hex[:8]
    namespace, release = f"chart-scale-{suffix}", f"cs-{suffix}"
    values = home / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "workers": [
                    {
                        "name": "scaled",
                        "tier": "basic-conversation",
                        "agentName": "scaled",
                        "sessions": 2,
                        "autoscaling": {"mode": "demand", "min": 1, "max": 4},
                    },
                    {"name": "fixed", "tier": "basic-conversation", "agentName": "fixed"},
                ]
            }
        )
    )
    kubectl(stack_env, "create", "namespace", namespace)
    try:
        helm.run(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--wait=false",
            "-f",
            str(values),
            env=env,
        )
        yield Installed(stack_env, namespace, release, "", "", [])
    finally:
        helm.run("uninstall", release, "--namespace", namespace, "--wait=false", env=env, check=False)
        kubectl(stack_env, "delete", "namespace", namespace, "--wait=false", check=False)


MAY = [
    ("get", "deployments.apps/SCALED", "own", ""),
    ("get", "deployments.apps/SCALED", "own", "scale"),
    ("patch", "deployments.apps/SCALED", "own", "scale"),
    ("update", "deployments.apps/SCALED", "own", "scale"),
    ("list", "pods", "own", ""),
    ("patch", "pods", "own", ""),
]
MAY_NOT = [
    ("patch", "deployments.apps/FIXED", "own", "scale"),
    ("get", "deployments.apps/FIXED", "own", ""),
    ("patch", "deployments.apps/SCALED", "own", ""),
    ("update", "deployments.apps/SCALED", "own", ""),
    ("delete", "deployments.apps/SCALED", "own", ""),
    ("list", "deployments.apps", "own", ""),
    ("patch", "deployments.apps/SCALED", "default", "scale"),
    ("create", "pods", "own", ""),
    ("delete", "pods", "own", ""),
    ("list", "pods", "cluster", ""),
    ("patch", "pods", "default", ""),
    ("get", "secrets", "own", ""),
]


def _resolve(installed: Installed, resource: str) -> str:
    return resource.replace("SCALED", f"{installed.fullname}-scaled").replace(
        "FIXED", f"{installed.fullname}-fixed"
    )


@pytest.mark.parametrize(("verb", "resource", "scope", "sub"), MAY, ids=lambda v: str(v))
def test_scaler_may(scaled: Installed, verb: str, resource: str, scope: str, sub: str) -> None:
    assert _can_i(scaled, scaled.sa("operator"), verb, _resolve(scaled, resource), scope, sub)


@pytest.mark.parametrize(("verb", "resource", "scope", "sub"), MAY_NOT, ids=lambda v: str(v))
def test_scaler_may_not(scaled: Installed, verb: str, resource: str, scope: str, sub: str) -> None:
    assert not _can_i(scaled, scaled.sa("operator"), verb, _resolve(scaled, resource), scope, sub)


def test_the_scaled_deployment_starts_at_the_api_default_of_one_replica(scaled: Installed) -> None:
    dep = yaml.safe_load(
        kubectl(
            scaled.env, "get", "deploy", f"{scaled.fullname}-scaled", "-n", scaled.namespace, "-o", "yaml"
        )
    )
    assert dep["spec"]["replicas"] == 1  # the API's default until the operator scales it
