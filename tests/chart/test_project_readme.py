"""The README's configuration reference, metrics and alerts stay true to the code and the chart."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from loqua_operator.settings import OperatorSettings
from loqua_tutor.settings import TutorSettings
from tests.chart.chartlib import CHART, ROOT
from tests.chart.test_metric_names import SERIES, alert_rules

README = (ROOT / "README.md").read_text()


def section(heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = README.index(f"\n{heading}\n")
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", README[start + 1 :])]
    return README[start : start + 1 + ends[0]] if ends else README[start:]


def first_column(text: str) -> set[str]:
    """Backticked names in the first cell of each table row (``A``, ``B`` cells count twice)."""
    names: set[str] = set()
    for cell in re.findall(r"^\| ([^|]+) \|", text, re.M):
        names |= set(re.findall(r"`([^`]+)`", cell))
    return names


@pytest.mark.parametrize(
    ("model", "heading"),
    [(OperatorSettings, "### Operator (environment)"), (TutorSettings, "### Tutor worker (environment)")],
)
def test_every_setting_has_a_row_and_every_row_is_a_setting(model: Any, heading: str) -> None:
    rows = first_column(section(heading))
    variables = {name.upper() for name in model.model_fields}
    missing = variables - rows
    assert not missing, f"settings without a row under {heading!r}: {sorted(missing)}"
    stale = rows - variables
    assert not stale, f"rows under {heading!r} that are no setting: {sorted(stale)}"


def test_helm_values_in_the_readme_exist() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    named = first_column(section("### Helm chart (values)")) - {"tiers.<tier>"}
    assert len(named) >= 15
    for path in named:
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"README names {path!r}; values.yaml has none"
            node = node[part]


def test_alerts_table_lists_exactly_the_chart_alerts() -> None:
    listed = {name for name in first_column(section("## Metrics and alerts")) if name.startswith("Loqua")}
    assert listed == {rule["alert"] for rule in alert_rules()}


def test_metrics_named_in_the_readme_are_exported() -> None:
    named = set(re.findall(r"`(loqua_[a-z_]+)", section("## Metrics and alerts")))
    assert len(named) >= 15
    unknown = sorted(
        name for name in named if name not in SERIES and f"{name}_count" not in SERIES
    )  # histograms
    assert not unknown, f"README names series the code does not export: {unknown}"
