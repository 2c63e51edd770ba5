"""The operator's labelled counters exist at 0 from the start, for the label values it knows, so a
dashboard panel or an alert's increase() has a series before the first error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from loqua_operator import livekit_gateway
from loqua_operator.livekit_gateway import METHODS, LiveKitGateway
from loqua_operator.metrics import RECONCILE_HANDLERS, OperatorMetrics
from loqua_operator.settings import OperatorSettings

HANDLERS_SOURCE = Path(livekit_gateway.__file__).with_name("handlers") / "dispatch.py"


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
    monkeypatch.setenv("LIVEKIT_API_KEY", "k")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s")
    return OperatorSettings()


def test_reconcile_errors_exist_at_zero_for_every_handler() -> None:
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    samples = _samples(registry)
    for handler in RECONCILE_HANDLERS:
        assert samples[f'loqua_operator_reconcile_errors_total{{handler="{handler}"}}'] == 0
    # ... and those are the names the handlers count under.
    counted = set(re.findall(r'reconcile_errors\.labels\("(\w+)"\)', HANDLERS_SOURCE.read_text()))
    assert counted == set(RECONCILE_HANDLERS)


def test_livekit_series_exist_at_zero_for_every_method(settings: OperatorSettings) -> None:
    registry = CollectorRegistry()
    LiveKitGateway(settings, OperatorMetrics(registry))
    samples = _samples(registry)
    for method in METHODS:
        assert samples[f'loqua_operator_livekit_requests_total{{method="{method}"}}'] == 0
        assert samples[f'loqua_operator_livekit_errors_total{{code="unavailable",method="{method}"}}'] == 0
    # Every method the gateway calls is one of them.
    called = set(re.findall(r'_call\(\s*"(\w+)"', Path(livekit_gateway.__file__).read_text()))
    assert called == set(METHODS)
