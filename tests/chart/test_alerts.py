"""promtool on the chart's alert rules (files/alerts.yaml): syntax, and firing just above each
threshold while staying silent just below (cases in alerts_test.yaml)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.chart.chartlib import ALERTS

TESTS = Path(__file__).with_name("alerts_test.yaml")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(promtool: str) -> None:
    out = _promtool(promtool, "check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    rules = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    assert f"SUCCESS: {rules} rules found" in out.stdout


def test_promtool_test_rules(promtool: str) -> None:
    out = _promtool(promtool, "test", "rules", str(TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    spec = yaml.safe_load(TESTS.read_text())
    assert [ALERTS.resolve()] == [(TESTS.parent / f).resolve() for f in spec["rule_files"]]
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    fired: set[str] = set()
    for case in spec["tests"]:
        namespaces = {s["series"].split('namespace="')[1].split('"')[0] for s in case["input_series"]}
        for check in case["alert_rule_test"]:
            got = {a["exp_labels"].get("namespace") for a in check.get("exp_alerts", [])}
            if got:
                fired.add(check["alertname"])
                # In the same evaluation another namespace (or label set) stays silent.
                assert len(namespaces) > 1 or len(case["input_series"]) > len(got), case["name"]
    assert fired == alerts, f"alerts without a firing case: {sorted(alerts - fired)}"
