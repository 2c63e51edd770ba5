"""The chart's pods on the real local node, under the chart's own defaults."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cluster.conftest import NS, Cluster

# The first test also builds the image and brings the node up (minutes on a fresh machine).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def test_node_is_ready_and_the_release_runs_the_local_image(cluster: Cluster) -> None:
    node = cluster.json("get", "node", "loqua-node")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    for component in ("operator", "worker"):
        pods = cluster.pods(component)
        assert pods, f"no {component} pod"
        for pod in pods:
            assert pod["status"]["phase"] == "Running"
            statuses = pod["status"]["containerStatuses"]
            assert all(s["ready"] for s in statuses), statuses
            assert all(s["image"].endswith(cluster.image.rsplit("/", 1)[-1]) for s in statuses), statuses
            assert pod["spec"]["nodeName"] == "loqua-node"


@pytest.mark.parametrize("component", ["operator", "worker"])
def test_pods_run_as_10001_on_a_read_only_root_filesystem(cluster: Cluster, component: str) -> None:
    pod = cluster.pods(component)[0]["metadata"]["name"]
    ids = cluster.exec(pod, "python", "-c", "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert ids == ["10001", "10001"]
    denied = cluster.exec(pod, "python", "-c", "open('/probe', 'w')", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # /tmp is the chart's emptyDir: writable (livekit-agents' job processes and caches live there).
    cluster.exec(pod, "python", "-c", "open('/tmp/probe', 'w').write('ok')")
    caps = cluster.exec(pod, "python", "-c", "print([l for l in open('/proc/self/status') if l.startswith('CapEff')])")
    assert "0000000000000000" in caps.stdout


def test_worker_pods_have_no_service_account_token_and_the_operator_has_its_own(cluster: Cluster) -> None:
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    check = f"import os; print(os.path.exists('{token_dir}/token'))"
    for pod in cluster.pods("worker"):
        assert cluster.exec(pod["metadata"]["name"], "python", "-c", check).stdout.strip() == "False"
    operator = cluster.pods("operator")[0]["metadata"]["name"]
    assert cluster.exec(operator, "python", "-c", check).stdout.strip() == "True"
    # ...and it uses it: the in-cluster client took the leader Lease as the pod itself.
    leases = cluster.json("-n", NS, "get", "lease")["items"]
    assert [lease["spec"]["holderIdentity"] for lease in leases] == [operator]


def test_the_restricted_namespace_admits_the_pods_and_rejects_a_privileged_one(cluster: Cluster) -> None:
    labels = cluster.json("get", "namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged-probe", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": cluster.image, "securityContext": {"privileged": True}}]},
    }
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.stack.kubeconfig}", "apply", "--dry-run=server", "-f", "-"],
        input=json.dumps(privileged),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "violates PodSecurity" in result.stderr, result.stderr


def test_pods_have_no_route_off_the_machine(cluster: Cluster) -> None:
    """Only the node's /24 and the Service range: no default route, so nothing leaves the machine."""
    pod = cluster.pods("operator")[0]["metadata"]["name"]
    routes = cluster.exec(pod, "python", "-c", "print(open('/proc/net/route').read())").stdout.splitlines()[1:]
    destinations = {line.split()[1] for line in routes if line.strip()}
    assert "00000000" not in destinations, routes  # no default route
    assert len(destinations) == 2, routes  # the node's subnet and the Service range
