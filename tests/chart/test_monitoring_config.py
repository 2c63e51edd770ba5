"""The devstack's Prometheus configuration made from the chart's own ServiceMonitor and
PrometheusRule (loqua_devstack.monitoring): promtool accepts it, and the rule file holds the
rendered PrometheusRule's rules unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from loqua_devstack import monitoring
from tests.chart.chartlib import ALERTS, MONITORING_API, Helm, one

MONITORED = {
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}, "release": "x"}
}


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def test_scrape_jobs_from_the_charts_servicemonitor(helm: Helm, promtool: str, tmp_path: Path) -> None:
    objs = helm.render(MONITORED, api_versions=[MONITORING_API])
    sm, pr = one(objs, "ServiceMonitor"), one(objs, "PrometheusRule")
    (ca := tmp_path / "ca.crt").write_text("")
    sd = {"api_server": "https://127.0.0.1:6443", "tls_config": {"ca_file": str(ca)}}
    rules = tmp_path / monitoring.rule_file_name(pr)
    rules.write_text(monitoring.rule_file_text(pr))
    config = monitoring.prometheus_config([sm], [rules], sd, "127.0.0.1:9093")
    (path := tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = _promtool(promtool, "check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    (job,) = config["scrape_configs"]
    assert job["scrape_interval"] == sm["spec"]["endpoints"][0]["interval"]
    assert job["kubernetes_sd_configs"][0]["namespaces"] == {"names": [sm["metadata"]["namespace"]]}
    keeps = {
        tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"
    }
    assert keeps[("__meta_kubernetes_endpoint_port_name",)] == "metrics"
    component = (
        "__meta_kubernetes_service_label_app_kubernetes_io_component",
        "__meta_kubernetes_service_labelpresent_app_kubernetes_io_component",
    )
    assert keeps[component] == "(operator|worker);true"
    targets = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
    assert {
        "namespace",
        "pod",
        "service",
        "container",
        "job",
        "loqua_app_tier",
        "loqua_app_region",
    } <= targets


def test_rule_file_is_the_rendered_prometheusrule(helm: Helm, promtool: str, tmp_path: Path) -> None:
    pr = one(helm.render(MONITORED, api_versions=[MONITORING_API]), "PrometheusRule")
    path = tmp_path / monitoring.rule_file_name(pr)
    path.write_text(monitoring.rule_file_text(pr))
    assert yaml.safe_load(path.read_text()) == pr["spec"] == yaml.safe_load(ALERTS.read_text())
    checked = _promtool(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alertmanager_sends_everything_to_the_pager_resolved_too() -> None:
    cfg = monitoring.alertmanager_config("http://127.0.0.1:1/alerts")
    (receiver,) = cfg["receivers"]
    assert cfg["route"]["receiver"] == receiver["name"]
    assert receiver["webhook_configs"] == [{"url": "http://127.0.0.1:1/alerts", "send_resolved": True}]


def _for_of(pr: dict) -> dict:
    return {r["alert"]: r.get("for") for g in pr["spec"]["groups"] for r in g["rules"]}


def test_an_alerts_for_is_a_chart_value(helm: Helm) -> None:
    default = _for_of(one(helm.render(MONITORED, api_versions=[MONITORING_API]), "PrometheusRule"))
    values = {
        "monitoring": {
            **MONITORED["monitoring"],
            "prometheusRule": {
                "enabled": True,
                "for": {"LoquaLiveKitUnreachable": "1m", "LoquaAgentAuthFailureRateHigh": "30s"},
            },
        }
    }
    moved = _for_of(one(helm.render(values, api_versions=[MONITORING_API]), "PrometheusRule"))
    assert moved == {**default, "LoquaLiveKitUnreachable": "1m", "LoquaAgentAuthFailureRateHigh": "30s"}
    for wrong in ("NoSuchAlert", "LoquaOrphanDispatchesFound"):  # unknown, and an alert without `for`
        values["monitoring"]["prometheusRule"]["for"] = {wrong: "1m"}
        assert f"monitoring.prometheusRule.for.{wrong}" in helm.render_error(
            values, api_versions=[MONITORING_API]
        )
    values["monitoring"]["prometheusRule"]["for"] = {"LoquaLiveKitUnreachable": "soon"}
    assert "for" in helm.render_error(values, api_versions=[MONITORING_API])


def _exprs_of(pr: dict) -> dict:
    return {r["alert"]: r["expr"] for g in pr["spec"]["groups"] for r in g["rules"]}


def test_an_alerts_range_windows_are_a_chart_value(helm: Helm, promtool: str, tmp_path: Path) -> None:
    default = one(helm.render(MONITORED, api_versions=[MONITORING_API]), "PrometheusRule")
    values = {
        "monitoring": {
            **MONITORED["monitoring"],
            "prometheusRule": {"enabled": True, "windows": {"LoquaSessionCompletionRateLow": "5m"}},
        }
    }
    pr = one(helm.render(values, api_versions=[MONITORING_API]), "PrometheusRule")
    before, after = _exprs_of(default), _exprs_of(pr)
    name = "LoquaSessionCompletionRateLow"
    assert "[1h]" in before[name] and "[1h]" not in after[name]
    assert after[name] == before[name].replace("[1h]", "[5m]")
    assert {k: v for k, v in after.items() if k != name} == {k: v for k, v in before.items() if k != name}
    path = tmp_path / monitoring.rule_file_name(pr)
    path.write_text(monitoring.rule_file_text(pr))
    checked = _promtool(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for wrong in ("NoSuchAlert", "LoquaLiveKitUnreachable"):  # unknown, and an alert without a window
        values["monitoring"]["prometheusRule"]["windows"] = {wrong: "5m"}
        assert f"monitoring.prometheusRule.windows.{wrong}" in helm.render_error(
            values, api_versions=[MONITORING_API]
        )
    values["monitoring"]["prometheusRule"]["windows"] = {name: "a while"}
    assert "windows" in helm.render_error(values, api_versions=[MONITORING_API])
