"""The values file of `make cluster` sets what a user sets and never loosens the chart's defaults."""

from __future__ import annotations

import yaml

from tests.chart.chartlib import CHART, Helm, container, deployment, of_kind

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
