"""The dashboard and the alert rules use only series the code exports, and every alert has a runbook.

The series come from the code itself: the operator's and the tutor's metric classes instantiated on a
fresh registry. Every metric name in a PromQL expression of files/dashboard.json or files/alerts.yaml
must be one of them (with its _total/_bucket/_count/_sum/_info suffix) or one of a few Kubernetes
series; label matchers and by/on lists must name labels those series carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from loqua_operator.metrics import OperatorMetrics
from loqua_tutor.metrics import JobMetrics, WorkerMetrics
from tests.chart.chartlib import ALERTS, DASHBOARD, RUNBOOKS

# Series from Kubernetes itself (cAdvisor, kube-state-metrics), with the labels the rules use.
EXTERNAL_SERIES = {
    "container_memory_working_set_bytes": {"namespace", "pod", "container"},
    "container_cpu_usage_seconds_total": {"namespace", "pod", "container"},
    "kube_pod_container_resource_limits": {"namespace", "pod", "container", "resource", "unit"},
}
# Labels Prometheus adds to every scraped series (ServiceMonitor target labels).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "endpoint", "container"}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


@dataclass
class Series:
    labels: set[str] = field(default_factory=set)
    any_label: bool = False  # info series: their labels are the info dict's keys


def exported_series() -> dict[str, Series]:
    """Every series name the code can export, with its label names."""
    registry = CollectorRegistry()
    objects = [OperatorMetrics(registry), WorkerMetrics(registry), JobMetrics(registry)]
    labels: dict[str, set[str]] = {}
    for obj in objects:
        for value in vars(obj).values():
            if isinstance(value, MetricWrapperBase):
                labels[value._name] = set(value._labelnames)
    series: dict[str, Series] = {}
    for family in registry.collect():
        names = [family.name + s for s in SUFFIXES.get(family.type, ("",))]
        known = labels.get(family.name, set()) | {k for s in family.samples for k in s.labels}
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            series[name] = Series(known | extra, any_label=family.type == "info")
    return series


SERIES = exported_series()


def dashboard_queries() -> Iterator[tuple[str, str]]:
    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            for key, value in node.items():
                if (key in ("expr", "definition") and isinstance(value, str)) or (
                    key == "query" and isinstance(value, str) and node.get("type") != "datasource"
                ):
                    yield title, value
                else:
                    yield from walk(value, title)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    return walk(json.loads(DASHBOARD.read_text()), "dashboard")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@dataclass
class Parsed:
    metrics: set[str]
    matchers: list[tuple[str, set[str]]]  # (metric, label names in its {...})
    grouping: set[str]  # labels of by/without/on/ignoring/group_* lists


def parse_promql(expr: str) -> Parsed:
    """A small PromQL reader: enough to find metric names and the label names next to them."""
    text = re.sub(r"\$\{?\w+\}?", "x", expr)  # Grafana variables ($namespace, $__rate_interval)
    grouping: set[str] = set()
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text, re.S)
    if match:  # Grafana's label_values(series, label)
        text, label = match.group(1), match.group(2)
        grouping.add(label)
    matchers = []
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", text):
        names = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', m.group(2))))
        matchers.append((m.group(1), names))
    text = re.sub(r"\{[^}]*\}", " ", text)
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping |= {label.strip() for label in m.group(1).split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)
    metrics = {
        m.group(1)
        for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
        if m.group(1) not in KEYWORDS and m.group(1) != "x"
    }
    metrics |= {name for name, _ in matchers}
    return Parsed(metrics, matchers, grouping)


def check_expression(expr: str) -> list[str]:
    parsed = parse_promql(expr)
    problems = []
    available = set(TARGET_LABELS)
    any_label = False
    for metric in parsed.metrics:
        if metric in SERIES:
            available |= SERIES[metric].labels
            any_label |= SERIES[metric].any_label
        elif metric in EXTERNAL_SERIES:
            available |= EXTERNAL_SERIES[metric]
        elif metric.startswith("loqua_"):
            problems.append(f"{metric} is not exported by the code")
        else:
            problems.append(
                f"{metric} is neither a loqua series nor in the allow-list {sorted(EXTERNAL_SERIES)}"
            )
    for metric, labels in parsed.matchers:
        own = SERIES[metric] if metric in SERIES else Series(EXTERNAL_SERIES.get(metric, set()))
        unknown = labels - own.labels - TARGET_LABELS
        if unknown and not own.any_label:
            problems.append(f"{metric} has no label(s) {sorted(unknown)}")
    unknown = parsed.grouping - available
    if unknown and not any_label:
        problems.append(f"grouping by label(s) {sorted(unknown)} that no series here carries")
    return problems


def test_the_code_exports_the_expected_families() -> None:
    # A guard for the reader below: the registry really holds both processes' series.
    for name in (
        "loqua_operator_dispatches_created_total",
        "loqua_operator_livekit_up",
        "loqua_operator_objects",
        "loqua_operator_reconcile_duration_seconds_bucket",
        "loqua_operator_build_info",
        "loqua_tutor_sessions_completed_total",
        "loqua_tutor_api_request_duration_seconds_bucket",
    ):
        assert name in SERIES, name
    assert SERIES["loqua_operator_objects"].labels == {"phase"}
    assert SERIES["loqua_tutor_token_refresh_total"].labels == {"result"}


def test_the_reader_finds_names_and_labels() -> None:
    parsed = parse_promql(
        'histogram_quantile(0.95, sum by (method, le) (rate(loqua_x_bucket{namespace=~"$namespace",'
        ' code!="a,b"}[$__rate_interval]))) / on (pod) group_left max(up) > 2 and bool absent(foo)'
    )
    assert parsed.metrics == {"loqua_x_bucket", "up", "foo"}
    assert parsed.matchers == [("loqua_x_bucket", {"namespace", "code"})]
    assert parsed.grouping == {"method", "le", "pod"}
    assert check_expression("sum(loqua_nope_total)") == ["loqua_nope_total is not exported by the code"]
    assert check_expression('sum(loqua_operator_objects{phasee="Failed"})') == [
        "loqua_operator_objects has no label(s) ['phasee']"
    ]
    assert check_expression("sum by (phase) (loqua_operator_leader)")


@pytest.mark.parametrize(("title", "expr"), list(dashboard_queries()), ids=lambda v: v[:60])
def test_dashboard_uses_exported_series(title: str, expr: str) -> None:
    assert check_expression(expr) == [], f"panel {title!r}: {expr}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alerts_use_exported_series(rule: dict[str, Any]) -> None:
    assert check_expression(rule["expr"]) == [], rule["expr"]


def test_dashboard_covers_the_alerted_series() -> None:
    shown = set()
    for _, expr in dashboard_queries():
        shown |= parse_promql(expr).metrics
    alerted = set()
    for rule in alert_rules():
        alerted |= parse_promql(rule["expr"]).metrics
    assert alerted <= shown, f"alerted but not on the dashboard: {sorted(alerted - shown)}"


def _anchor(heading: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_complete_and_has_a_runbook_section() -> None:
    sections = {_anchor(h) for h in re.findall(r"^## (.+)$", RUNBOOKS.read_text(), re.M)}
    names = []
    for rule in alert_rules():
        names.append(rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        url = annotations["runbook_url"]
        assert url.startswith("https://github.com/loqua/loqua-agents/blob/main/docs/runbooks.md#")
        assert url.split("#", 1)[1] in sections, f"docs/runbooks.md has no section for {rule['alert']}"
        assert url.split("#", 1)[1] == rule["alert"].lower()
    assert len(names) == len(set(names))
    assert {n.lower() for n in names} == sections, "one runbook section per alert, no more"


def test_runbook_sections_say_meaning_impact_diagnosis_fix() -> None:
    text = RUNBOOKS.read_text()
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0]
        for part in ("**Meaning.**", "**Impact.**", "**Diagnosis.**", "**Fix.**"):
            assert part in section, f"{title}: missing {part}"
        assert "kubectl " in section, f"{title}: no kubectl command"
