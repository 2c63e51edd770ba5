"""Prometheus metrics of the tutor worker (prefix ``loqua_tutor_``).

Two groups, never registered in the same process twice:

- :class:`WorkerMetrics` live in the worker's main process (capacity, rejected jobs, build info);
- :class:`JobMetrics` are updated where jobs run. With ``JOB_EXECUTOR=thread`` that is the main
  process too. With ``JOB_EXECUTOR=process`` every job is a child process: prometheus_client's
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set before the children start) writes their
  values to files that the main process merges into ``/metrics`` (see :mod:`loqua_tutor.multiproc`).

Label values are bounded: endpoints are templates (``/api/v1/agent/user/{user_id}/context``), never
a raw user id, and no token or secret is ever a label.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from loqua_common.metrics import duration_buckets

PREFIX = "loqua_tutor"
_job_metrics_lock = threading.Lock()


class WorkerMetrics:
    """Main-process series."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.build_info = Info(
            f"{PREFIX}_build",
            "Tutor worker build and deployment (region, tier, agent_name)",
            registry=registry,
        )
        self.jobs_rejected = Counter(
            f"{PREFIX}_jobs_rejected_total",
            "Job requests this worker declined (capacity, draining)",
            ["reason"],
            registry=registry,
        )
        self.jobs_accepted = Counter(
            f"{PREFIX}_jobs_accepted_total", "Job requests this worker accepted", registry=registry
        )
        self.worker_jobs = Gauge(f"{PREFIX}_worker_jobs", "Jobs running on this worker", registry=registry)
        self.worker_capacity = Gauge(
            f"{PREFIX}_worker_capacity",
            "Concurrent sessions this worker accepts (from its tier)",
            registry=registry,
        )
        self.worker_draining = Gauge(
            f"{PREFIX}_worker_draining", "1 while the worker drains after SIGTERM", registry=registry
        )
        for reason in ("capacity", "draining"):
            self.jobs_rejected.labels(reason)


_worker_metrics: dict[int, WorkerMetrics] = {}


def worker_metrics(registry: CollectorRegistry = REGISTRY) -> WorkerMetrics:
    """One set per registry: ``run_worker`` may run more than once in a process (tests)."""
    with _job_metrics_lock:
        if id(registry) not in _worker_metrics:
            _worker_metrics[id(registry)] = WorkerMetrics(registry)
        return _worker_metrics[id(registry)]


# Results of a recording tool call (loqua_tutor_tool_calls_total{result}).
TOOL_RESULTS = ("ok", "invalid")


class JobMetrics:
    """Series updated by the jobs. Gauges carry a multiprocess mode for process executors."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        buckets = duration_buckets()
        self.sessions_started = Counter(
            f"{PREFIX}_sessions_started_total", "Learner sessions started", registry=registry
        )
        self.sessions_completed = Counter(
            f"{PREFIX}_sessions_completed_total", "Learner sessions that ended normally", registry=registry
        )
        self.sessions_failed = Counter(
            f"{PREFIX}_sessions_failed_total", "Learner sessions that ended with an error", registry=registry
        )
        self.active_sessions = Gauge(
            f"{PREFIX}_active_sessions",
            "Learner sessions in progress",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.participant_wait_timeouts = Counter(
            f"{PREFIX}_participant_wait_timeouts_total",
            "Jobs ended because no learner joined in time",
            registry=registry,
        )
        self.missing_user_id = Counter(
            f"{PREFIX}_missing_user_id_total",
            "Jobs ended because the learner had no user_id attribute",
            registry=registry,
        )
        self.invalid_attributes = Counter(
            f"{PREFIX}_invalid_attributes_total",
            "Jobs ended because a learner attribute was invalid (user_id, sessionId)",
            ["attribute"],
            registry=registry,
        )
        self.rpc_rejected = Counter(
            f"{PREFIX}_rpc_rejected_total",
            "tutor.tool RPC calls refused (reason: not_learner)",
            ["reason"],
            registry=registry,
        )
        self.api_request_duration = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "Loqua API request duration per attempt",
            ["endpoint", "method", "status"],
            buckets=buckets,
            registry=registry,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests_total",
            "Loqua API request attempts (status: HTTP code, error, circuit_open)",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.token_refresh = Counter(
            f"{PREFIX}_token_refresh_total", "User token refreshes", ["result"], registry=registry
        )
        self.token_exchange = Counter(
            f"{PREFIX}_token_exchange_total",
            "User token exchanges (initial and refresh): success, auth_failed, decrypt_failed, error",
            ["result"],
            registry=registry,
        )
        self.auth_failures = Counter(
            f"{PREFIX}_auth_failures_total",
            "Loqua API answers 401/403 (agent or user token refused)",
            registry=registry,
        )
        self.circuit_breaker_state = Gauge(
            f"{PREFIX}_circuit_breaker_state",
            "Loqua API circuit breaker: 0 closed, 1 half-open, 2 open (worst across sessions)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.progress_updates_queued = Gauge(
            f"{PREFIX}_progress_updates_queued",
            "Progress updates waiting for the API to come back",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.progress_updates = Counter(
            f"{PREFIX}_progress_updates_total", "Progress updates by result", ["result"], registry=registry
        )
        self.session_records = Counter(
            f"{PREFIX}_session_records_total",
            "Learning session records: delivered, lost, invalid",
            ["result"],
            registry=registry,
        )
        self.tool_calls = Counter(
            f"{PREFIX}_tool_calls_total", "Tutor function tool calls", ["tool", "result"], registry=registry
        )
        for result in ("success", "failure"):
            self.token_refresh.labels(result)
        for result in ("success", "auth_failed", "decrypt_failed", "error"):
            self.token_exchange.labels(result)
        for result in ("delivered", "lost"):
            self.session_records.labels(result)
        for attribute in ("user_id", "sessionId"):
            self.invalid_attributes.labels(attribute)
        self.rpc_rejected.labels("not_learner")
        self._breakers: dict[int, int] = {}
        self._breaker_lock = threading.Lock()

    def know_tools(self, tools: Iterable[str]) -> None:
        """Create ``tool_calls_total`` at 0 for every (tool, result), so its series exist before the
        first call (prometheus-client: initialise labelled metrics with their known label values)."""
        for tool in tools:
            for result in TOOL_RESULTS:
                self.tool_calls.labels(tool, result)

    def set_breaker_state(self, key: int, state: int | None) -> None:
        """Record one breaker's state (``None``: it is gone); the gauge shows the worst."""
        with self._breaker_lock:
            if state is None:
                self._breakers.pop(key, None)
            else:
                self._breakers[key] = state
            self.circuit_breaker_state.set(max(self._breakers.values(), default=0))


# One set per process, created on first use: in the main process of a process-executor worker
# JobMetrics must never exist (their files would be merged twice).
JOB_METRIC_NAMES = frozenset(
    f"{PREFIX}_{n}"
    for n in (
        "sessions_started",
        "sessions_completed",
        "sessions_failed",
        "active_sessions",
        "participant_wait_timeouts",
        "missing_user_id",
        "invalid_attributes",
        "rpc_rejected",
        "api_request_duration_seconds",
        "api_requests",
        "token_refresh",
        "token_exchange",
        "auth_failures",
        "circuit_breaker_state",
        "progress_updates_queued",
        "progress_updates",
        "session_records",
        "tool_calls",
    )
)
_job_metrics: JobMetrics | None = None


def job_metrics() -> JobMetrics:
    global _job_metrics
    with _job_metrics_lock:
        if _job_metrics is None:
            _job_metrics = JobMetrics()
        return _job_metrics
