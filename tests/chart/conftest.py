"""Fixtures of the chart tests. Rendering tests need only the helm binary; `chart`-marked ones
also use the local stack's API server (the shared `stack_env` fixture)."""

from __future__ import annotations

import pytest

from tests.chart.chartlib import Helm, binary


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(binary("helm", "HELM_BIN"))


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool", "PROMTOOL_BIN")
