"""The values file of `make cluster` sets what a user sets and never loosens the chart's defaults."""

from __future__ import annotations

import yaml

from loqua_devstack import cluster
from tests.chart.chartlib import CHART, KUBE_VERSION, Helm, container, deployment, of_kind

LOCAL_NODE = CHART / "examples" / "local-node.yaml"
URLS = {"livekit": {"url": "ws://10.244.0.1:7880"}, "loqua": {"apiBaseUrl": "http://10.244.0.1:8088"}}


def test_sets_only_user_level_values() -> None:
    values = yaml.safe_load(LOCAL_NODE.read_text())
    assert set(values) <= {"region", "image", "livekit", "loqua", "logging", "operator", "workers"}
    for loosened in ("podSecurityContext", "containerSecurityContext", "tmpSizeLimit", "workerDefaults"):
        assert loosened not in values
    assert set(values["operator"]) <= {"managedAgentNames", "resources"}
    assert [w["agentName"] for w in values["workers"]] == ["spanish-tutor"]


def test_renders_with_the_chart_defaults_kept(helm: Helm) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    objs = helm.render({**URLS, "image": {"tag": "abc"}}, files=[LOCAL_NODE])
    assert not of_kind(objs, "Secret")  # made from .devstack/env by `make cluster`, not the chart
    for component in ("operator", "worker"):
        dep = deployment(objs, component)
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        assert pod["securityContext"] == defaults["podSecurityContext"]
        assert c["securityContext"] == defaults["containerSecurityContext"]
        assert c["livenessProbe"] and c["readinessProbe"]
        assert c["image"] == "localhost/loqua-agents:abc" and c["imagePullPolicy"] == "Never"
    assert deployment(objs, "worker")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_make_clusters_values_take_an_all_digit_image_tag(helm: Helm) -> None:
    """The image's tag is its id's first 12 hex digits, which can be all digits (or read as a float,
    1e340000): `make cluster`'s own helm arguments must hand it to the chart as a string."""
    env = {"NODE_LIVEKIT_URL": "ws://10.244.0.1:7880", "NODE_LOQUA_API_URL": "http://10.244.0.1:8088"}
    for tag in ("123456789012", "1e3400000000", "0123abcdef01"):
        args = cluster.values_args(f"localhost/loqua-agents:{tag}", env)
        out = helm.run("template", "loqua", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
        assert out.returncode == 0, f"tag {tag}: {out.stderr}"
        objs = [d for d in yaml.safe_load_all(out.stdout) if d]
        for component in ("operator", "worker"):
            assert container(deployment(objs, component))["image"] == f"localhost/loqua-agents:{tag}"
