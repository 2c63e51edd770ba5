"""The chart README documents every value, and the runbooks every alert (see test_metric_names)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.chart.chartlib import CHART

README = CHART / "README.md"
# Values documented as one row (their sub-keys are Kubernetes structures or a table).
GROUPS = re.compile(
    r"^(podSecurityContext|containerSecurityContext|workers|tiers\.[^.]+|"
    r"(operator|workerDefaults)\.(resources|strategy|livenessProbe|readinessProbe)|workerDefaults\.hpa\.behavior)$"
)


def value_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and not GROUPS.match(path):
            yield from value_paths(value, path)
        else:
            yield path


def test_readme_has_a_row_for_every_value() -> None:
    rows = set(re.findall(r"^\| `([^`]+)` \|", README.read_text(), re.M))
    paths = list(value_paths(yaml.safe_load((CHART / "values.yaml").read_text())))
    assert len(paths) > 100
    missing = [p for p in paths if p not in rows]
    assert not missing, f"values without a row in {README.name}: {missing}"
    stale = {r for r in rows if "." in r} - set(paths)  # (the tier and alert tables have no dots)
    assert not stale, f"rows for values that do not exist: {sorted(stale)}"


def test_readme_defaults_match_values_for_scalars() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = README.read_text()
    for path in value_paths(values):
        node: Any = values
        for part in path.split("."):
            node = node[part]
        if isinstance(node, bool | int | float | str) and not isinstance(node, dict):
            shown = {True: "true", False: "false"}.get(node, node) if isinstance(node, bool) else node
            expected = f"| `{path}` | `{shown}` |" if shown != "" else f'| `{path}` | `""` |'
            assert expected in text, f"README default of {path} should read {expected}"
