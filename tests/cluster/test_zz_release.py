"""helm upgrade rolls the pods; helm uninstall removes them and leaves no finalizer stuck.
(Named to run last: it removes the release.)"""

from __future__ import annotations

import pytest

from loqua_devstack import cluster as local_cluster
from tests.cluster.conftest import NS, Cluster, ad_manifest, until

# The first test also builds the image and brings the node up (minutes on a fresh machine).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


async def test_helm_upgrade_with_a_changed_value_rolls_the_pods(cluster: Cluster) -> None:
    before = {c: {p["metadata"]["name"] for p in cluster.pods(c)} for c in ("operator", "worker")}
    local_cluster.install(cluster.stack, cluster.image, ("--set", "logging.level=DEBUG"))
    local_cluster.wait_ready(cluster.stack)
    for component in ("operator", "worker"):
        await until(
            lambda c=component: (
                {p["metadata"]["name"] for p in cluster.pods(c)}.isdisjoint(before[c])
                and all(s["ready"] for p in cluster.pods(c) for s in p["status"].get("containerStatuses", [{}]))
            ),
            f"{component} pods replaced and Ready",
            300,
        )
        env = cluster.pods(component)[0]["spec"]["containers"][0]["env"]
        assert {"name": "LOG_LEVEL", "value": "DEBUG"} in env


async def test_helm_uninstall_removes_the_pods_and_leaves_no_finalizer_stuck(cluster: Cluster, namespace: str) -> None:
    cluster.apply(ad_manifest(namespace, "last", f"{namespace}-last", ttl=600))
    await until(lambda: (cluster.ad(namespace, "last") or {}).get("status", {}).get("dispatchId"), "bound", 90)
    # Objects are deleted while the operator runs (its finalizer removes the LiveKit dispatch) ...
    cluster.kubectl("-n", namespace, "delete", "agentdispatch", "last", "--wait=true", timeout=120)
    local_cluster.helm(cluster.stack, "uninstall", local_cluster.RELEASE, "--namespace", NS, "--wait")
    await until(lambda: not cluster.json("-n", NS, "get", "pods")["items"], "the release's pods gone", 300)
    assert (
        cluster.json("-n", NS, "get", "deploy,rs,svc,secret,cm", "-l", "app.kubernetes.io/instance=loqua")["items"]
        == []
    )
    stuck = [
        o["metadata"]["name"]
        for o in cluster.json("get", "agentdispatch", "-A")["items"]
        if o["metadata"].get("deletionTimestamp")
    ]
    assert stuck == []
    # ... and the release namespace itself goes away without waiting on anything.
    cluster.kubectl("delete", "namespace", NS, "--wait=true", timeout=180)
