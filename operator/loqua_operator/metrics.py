"""Prometheus metrics of the operator (prefix ``loqua_operator_``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loqua_common.metrics import duration_buckets
from loqua_operator.status import Phase

PREFIX = "loqua_operator"
# The kopf handlers timed and counted by handler name (handlers/dispatch.py).
RECONCILE_HANDLERS = ("bind", "release")


class PhaseCollector(Collector):
    """``loqua_operator_objects{phase}``: objects by phase, from what the operator last wrote."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = {p.value: 0 for p in Phase}
            for phase in self._phases.values():
                counts[phase] = counts.get(phase, 0) + 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(f"{PREFIX}_objects", "AgentDispatch objects by phase", labels=["phase"])
        for phase, count in sorted(self.counts().items()):
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    """All operator series in one place, registered on one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        buckets = duration_buckets()
        self.info = Info(f"{PREFIX}_build", "Operator build and deployment information", registry=registry)
        self.dispatches_created = Counter(
            f"{PREFIX}_dispatches_created_total", "LiveKit dispatches created", registry=registry
        )
        self.dispatches_reused = Counter(
            f"{PREFIX}_dispatches_reused_total",
            "Objects bound to a LiveKit dispatch that already existed",
            registry=registry,
        )
        self.duplicates_removed = Counter(
            f"{PREFIX}_duplicate_dispatches_removed_total",
            "Extra dispatches for one (room, agent name) deleted",
            registry=registry,
        )
        self.dispatches_deleted = Counter(
            f"{PREFIX}_dispatches_deleted_total",
            "LiveKit dispatches deleted, by reason",
            ["reason"],
            registry=registry,
        )
        self.dispatch_failures = Counter(
            f"{PREFIX}_dispatch_failures_total",
            "Reconciles that ended Failed after the in-call retries",
            registry=registry,
        )
        self.livekit_errors = Counter(
            f"{PREFIX}_livekit_errors_total",
            "Failed LiveKit API calls by method and error code",
            ["method", "code"],
            registry=registry,
        )
        self.livekit_requests = Counter(
            f"{PREFIX}_livekit_requests_total", "LiveKit API calls by method", ["method"], registry=registry
        )
        self.livekit_duration = Histogram(
            f"{PREFIX}_livekit_request_duration_seconds",
            "LiveKit API call duration by method",
            ["method"],
            buckets=buckets,
            registry=registry,
        )
        self.livekit_up = Gauge(
            f"{PREFIX}_livekit_up", "1 when the last LiveKit call reached the server", registry=registry
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Duration of one reconcile by handler",
            ["handler"],
            buckets=buckets,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors_total",
            "Reconciles that raised, by handler",
            ["handler"],
            registry=registry,
        )
        self.is_leader = Gauge(
            f"{PREFIX}_leader",
            "1 while this replica acts: it holds the leader Lease, or leader election is off",
            registry=registry,
        )
        self.expired = Counter(
            f"{PREFIX}_expired_total", "Objects deleted because their TTL ran out", registry=registry
        )
        self.redispatches = Counter(
            f"{PREFIX}_redispatches_total",
            "Dead dispatches replaced because no agent answered",
            registry=registry,
        )
        self.orphans_found = Counter(
            f"{PREFIX}_orphans_found_total",
            "Unreferenced dispatches of managed agent names found",
            registry=registry,
        )
        self.orphans_removed = Counter(
            f"{PREFIX}_orphans_removed_total",
            "Unreferenced dispatches deleted by the sweep",
            registry=registry,
        )
        self.sweep_duration = Histogram(
            f"{PREFIX}_sweep_duration_seconds",
            "Duration of one lifecycle sweep",
            buckets=buckets,
            registry=registry,
        )
        self.sweep_errors = Counter(
            f"{PREFIX}_sweep_errors_total", "Errors during sweeps (never fatal)", registry=registry
        )
        self.sweep_livekit_calls = Gauge(
            f"{PREFIX}_sweep_livekit_calls", "LiveKit calls made by the last sweep", registry=registry
        )
        self.sweep_api_writes = Gauge(
            f"{PREFIX}_sweep_api_writes",
            "Kubernetes API writes (status patches, deletions) made by the last sweep; 0 at steady state",
            registry=registry,
        )
        self.webhook_events = Counter(
            f"{PREFIX}_webhook_events_total",
            "LiveKit webhooks received, by event and verdict",
            ["event", "verdict"],
            registry=registry,
        )
        self.status_updates = Counter(
            f"{PREFIX}_status_updates_total",
            "Status writes, by source (bind, sweep, webhook); only when something in the status changed",
            ["source"],
            registry=registry,
        )
        self.agent_demand = Gauge(
            f"{PREFIX}_agent_demand",
            "Agent jobs the live AgentDispatch objects hold or are about to hold (one per room), by agent name",
            ["agent_name"],
            registry=registry,
        )
        self.desired_workers = Gauge(
            f"{PREFIX}_desired_workers",
            "Worker pods the demand asks for: clamp(ceil((demand + spareSessions) / sessions), min, max)",
            ["agent_name"],
            registry=registry,
        )
        self.ready_workers = Gauge(
            f"{PREFIX}_ready_workers",
            "Ready pods of a worker Deployment under the built-in scaler, by agent name",
            ["agent_name"],
            registry=registry,
        )
        self.scale_changes = Counter(
            f"{PREFIX}_worker_scale_changes_total",
            "Replica changes the built-in scaler made, by agent name and direction",
            ["agent_name", "direction"],
            registry=registry,
        )
        self.scale_errors = Counter(
            f"{PREFIX}_worker_scale_errors_total",
            "Failed attempts of the built-in scaler (retried next tick), by agent name",
            ["agent_name"],
            registry=registry,
        )
        # Labelled series exist at 0 from the start (prometheus-client's advice), so a dashboard
        # panel or an increase() has data before the first error.
        for handler in RECONCILE_HANDLERS:
            self.reconcile_errors.labels(handler)
        self.phases = PhaseCollector()
        registry.register(self.phases)
