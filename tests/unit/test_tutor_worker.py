"""The concurrency cap (load function, threshold, request rejection) and job-process metrics."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from loqua_tutor.agent import RECORDING_TOOLS
from loqua_tutor.metrics import JOB_METRIC_NAMES, JobMetrics, WorkerMetrics
from loqua_tutor.multiproc import ENV_VAR, MultiprocStore, exposition_registry
from loqua_tutor.settings import TutorSettings
from loqua_tutor.tiers import TIERS, Tier
from loqua_tutor.worker import CapacityGate, _Admission, _Load, _zero_job_metrics


@pytest.fixture(autouse=True)
def _no_multiproc_dir_left_behind() -> Iterator[None]:
    """MultiprocStore.prepare points child processes at its directory through the environment; a
    test's directory must not outlive the test there (later tests start operators and workers whose
    prometheus_client would open files in a removed directory)."""
    before = os.environ.get(ENV_VAR)
    yield
    if before is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = before


@pytest.mark.parametrize("tier", list(Tier))
def test_load_reports_full_exactly_at_the_tier_cap(tier: Tier) -> None:
    cap = TIERS[tier].sessions
    gate = CapacityGate(cap)
    assert [gate.is_full(n) for n in range(cap + 2)] == [False] * cap + [True, True]
    # livekit-server weights workers by 1 - load: a full worker has weight 0.
    assert gate.load(cap) == 1.0 and gate.load(cap + 3) == 1.0 and gate.load(0) == 0.0
    assert gate.load(1) == pytest.approx(1 / cap)


def test_livekit_threshold_is_disabled_so_concurrent_requests_are_not_refused() -> None:
    # livekit-agents 1.8.9 refuses a request when load + reserved * estimate >= threshold, with
    # estimate = threshold / num_idle_processes while nothing runs yet: a finite threshold would
    # turn away the 2nd of two simultaneous requests on an idle worker with one warm process.
    gate = CapacityGate(10)
    assert math.isinf(gate.load_threshold)
    assert gate.admit(running=0, accepting=1, draining=False) is None


def test_admission_decisions() -> None:
    gate = CapacityGate(3)
    assert gate.admit(0, 0, False) is None
    assert gate.admit(2, 0, False) is None
    assert gate.admit(2, 1, False) == "capacity"  # one accepted, not running yet: counts
    assert gate.admit(3, 0, False) == "capacity"
    assert gate.admit(0, 0, True) == "draining"


class FakeRequest:
    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self.room = SimpleNamespace(name=f"room-{job_id}")
        self.rejected: list[bool] = []
        self.accepted: list[dict] = []

    async def reject(self, *, terminate: bool = True) -> None:
        self.rejected.append(terminate)

    async def accept(self, **kwargs: object) -> None:
        self.accepted.append(kwargs)


def _settings() -> TutorSettings:
    return TutorSettings(
        agent_jwt_token="a.b.c",
        agent_id="tutor-1",
        api_base_url="http://x",
        shared_secret="secret-1",
        livekit_url="ws://x",
        livekit_api_key="k",
        livekit_api_secret="s",
        tier="specialized-tutor",
    )


async def test_request_fnc_rejects_beyond_the_cap_without_terminating() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    admission = _Admission(CapacityGate(3), metrics, _settings())
    server = SimpleNamespace(active_jobs=[object(), object()], draining=False)
    admission.server = server  # type: ignore[assignment]
    ok = FakeRequest("j1")
    await admission(ok)  # type: ignore[arg-type]
    assert ok.accepted and ok.accepted[0]["attributes"]["loqua.tier"] == "specialized-tutor"
    server.active_jobs.append(object())
    full = FakeRequest("j2")
    await admission(full)  # type: ignore[arg-type]
    assert full.rejected == [False] and not full.accepted  # terminate=False: another worker may take it
    server.draining = True
    server.active_jobs.clear()
    late = FakeRequest("j3")
    await admission(late)  # type: ignore[arg-type]
    assert late.rejected == [False]
    assert metrics.jobs_rejected.labels("capacity")._value.get() == 1
    assert metrics.jobs_rejected.labels("draining")._value.get() == 1
    assert metrics.jobs_accepted._value.get() == 1


def test_load_fnc_uses_running_jobs() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    load = _Load(CapacityGate(5), metrics)
    assert load(SimpleNamespace(active_jobs=[1, 2])) == pytest.approx(0.4)  # type: ignore[arg-type]
    assert metrics.worker_jobs._value.get() == 2


def _run_job_process(directory: Path, code: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    script = "from loqua_tutor.metrics import job_metrics\nm = job_metrics()\n" + code
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


def _value(text: str, prefix: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, lines
    return float(lines[0].rsplit(" ", 1)[1])


def test_job_process_metrics_are_merged_and_compacted(tmp_path: Path) -> None:
    zeros = CollectorRegistry()
    JobMetrics(zeros)
    store = MultiprocStore.prepare(str(tmp_path / "prom"), JOB_METRIC_NAMES, zeros=zeros)
    assert (
        _value(
            generate_latest(exposition_registry(CollectorRegistry(), store)).decode(),
            "loqua_tutor_sessions_started_total ",
        )
        == 0
    )  # before any job: 0, not absent
    try:
        main = CollectorRegistry()
        WorkerMetrics(main).jobs_rejected.labels("capacity").inc()
        code = textwrap.dedent(
            """
            m.sessions_started.inc()
            m.active_sessions.inc()
            m.api_request_duration.labels("/api/v1/agent/progress", "POST", "200").observe(0.2)
            """
        )
        _run_job_process(tmp_path / "prom", code)
        _run_job_process(tmp_path / "prom", code + "m.active_sessions.dec()\n")
        registry = exposition_registry(main, store)

        def scrape() -> str:
            return generate_latest(registry).decode()

        before = scrape()
        assert _value(before, "loqua_tutor_sessions_started_total ") == 2
        assert _value(before, 'loqua_tutor_jobs_rejected_total{reason="capacity"}') == 1
        assert _value(before, 'loqua_tutor_api_request_duration_seconds_count{endpoint="/api/v1/agent/progress"') == 2
        assert "lk_agents" not in "".join(line for line in before.splitlines() if "multiproc" in line)
        files_before = len(list((tmp_path / "prom").glob("*.db")))
        assert store.compact() == 2  # both processes have exited
        after = scrape()
        assert _value(after, "loqua_tutor_sessions_started_total ") == 2  # nothing lost or doubled
        assert (
            _value(
                after,
                'loqua_tutor_api_request_duration_seconds_bucket{endpoint="/api/v1/agent/progress",le="0.25"',
            )
            == 2
        )
        assert _value(after, "loqua_tutor_active_sessions ") == 0  # gauges of dead processes are gone
        assert len(list((tmp_path / "prom").glob("*.db"))) < files_before
        _run_job_process(tmp_path / "prom", "m.sessions_started.inc()\n")
        store.compact()
        assert _value(scrape(), "loqua_tutor_sessions_started_total ") == 3
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        store.remove()


def test_tool_calls_exist_at_zero_for_every_recording_tool_before_any_call(tmp_path: Path) -> None:
    """A dashboard panel on tool calls has data from the start: every (tool, result) is exported at
    0 by the worker's zero twins, and a job's calls add to exactly those series."""
    store = MultiprocStore.prepare(str(tmp_path / "prom"), JOB_METRIC_NAMES, zeros=_zero_job_metrics())
    try:
        registry = exposition_registry(CollectorRegistry(), store)
        before = generate_latest(registry).decode()
        assert set(RECORDING_TOOLS) == {"new_word", "phrase_practised", "pronunciation_score", "grammar_point", "topic"}
        for tool in RECORDING_TOOLS:
            for result in ("ok", "invalid"):
                assert _value(before, f'loqua_tutor_tool_calls_total{{result="{result}",tool="{tool}"}}') == 0
        assert 'tool="state"' not in before  # read-only: never counted
        _run_job_process(tmp_path / "prom", 'm.tool_calls.labels("new_word", "ok").inc()\n')
        after = generate_latest(registry).decode()
        assert _value(after, 'loqua_tutor_tool_calls_total{result="ok",tool="new_word"}') == 1
        assert _value(after, 'loqua_tutor_tool_calls_total{result="invalid",tool="new_word"}') == 0
    finally:
        store.remove()
