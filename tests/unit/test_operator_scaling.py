"""Demand scaling: demand per agent name, desired workers, the scale-down delay, which pod goes first.

Pure decisions on fixed clocks; the scaler's loop is driven with an in-memory stand-in for the
Kubernetes calls (the real calls are exercised on the local node in tests/cluster/test_scaling.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from loqua_operator.leader import NotLeader, WriteGate
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import DispatchKey
from loqua_operator.scaling import (
    DELETION_COST,
    UNKNOWN_LOAD_COST,
    ScaleDecider,
    WorkerScaling,
    cost_patches,
    demand_by_agent,
    desired_workers,
    parse_worker_jobs,
)
from loqua_operator.settings import OperatorSettings
from loqua_operator.workers import DemandScaler, DeploymentState, WorkerClient


@dataclass
class Obj:
    key: DispatchKey
    deleting: bool = False


def obj(room: str, agent: str = "spanish-tutor", deleting: bool = False) -> Obj:
    return Obj(DispatchKey(room, agent), deleting)


def cfg(**kw: object) -> WorkerScaling:
    base: dict[str, object] = {"deployment": "loqua-spanish-tutor", "agentName": "spanish-tutor", "sessions": 2}
    base.update({"min": 1, "max": 4})
    base.update(kw)
    return WorkerScaling.model_validate(base)


class TestDemand:
    def test_one_job_per_room_and_agent_name(self) -> None:
        objects = [obj("a"), obj("a"), obj("b"), obj("a", "french-tutor"), obj("c", deleting=True)]
        # two objects in room a share one dispatch (one job); an object being deleted holds none
        assert demand_by_agent(objects) == {"spanish-tutor": 2, "french-tutor": 1}

    def test_no_objects_no_demand(self) -> None:
        assert demand_by_agent([]) == {}


class TestDesired:
    @pytest.mark.parametrize(
        ("demand", "spare", "expected"),
        [(0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 0, 2), (6, 0, 3), (7, 0, 4), (100, 0, 4), (2, 1, 2), (0, 2, 1)],
    )
    def test_clamped_ceiling(self, demand: int, spare: int, expected: int) -> None:
        assert desired_workers(demand, cfg(spareSessions=spare)) == expected

    def test_min_zero_scales_to_zero_without_demand(self) -> None:
        assert desired_workers(0, cfg(min=0)) == 0
        assert desired_workers(1, cfg(min=0)) == 1

    def test_bad_bounds_name_the_deployment(self) -> None:
        with pytest.raises(ValidationError, match="loqua-spanish-tutor: max \\(1\\) must be >= min \\(2\\)"):
            cfg(min=2, max=1)

    def test_settings_read_the_charts_json(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
        monkeypatch.setenv("LIVEKIT_API_KEY", "k")
        monkeypatch.setenv("LIVEKIT_API_SECRET", "s")
        monkeypatch.setenv(
            "DEMAND_SCALING",
            '[{"deployment": "d", "agentName": "spanish-tutor", "sessions": 2, "min": 1, "max": 4,'
            ' "spareSessions": 0, "scaleDownDelaySeconds": 20, "selector": "a=b", "metricsPort": 9101}]',
        )
        settings = OperatorSettings()
        assert settings.demand_scaling[0].scale_down_delay_seconds == 20
        monkeypatch.setenv("DEMAND_SCALING", '[{"deployment": "d", "agentName": "x", "sessions": 0, "max": 1}]')
        with pytest.raises(ValidationError, match="sessions"):
            OperatorSettings()


class TestScaleDecider:
    def test_up_at_once(self) -> None:
        d = ScaleDecider(delay=30)
        assert d.decide(current=1, recommended=3, now=0.0) == 3

    def test_down_only_after_the_delay(self) -> None:
        d = ScaleDecider(delay=30)
        assert d.decide(3, 3, now=0.0) == 3
        assert d.decide(3, 1, now=10.0) == 3  # the 3 of t=0 is still within the window
        assert d.decide(3, 1, now=29.0) == 3
        assert d.decide(3, 1, now=31.0) == 1  # the window holds only 1s now

    def test_a_dip_shorter_than_the_delay_changes_nothing(self) -> None:
        d = ScaleDecider(delay=30)
        for t, rec in [(0, 3), (10, 1), (20, 3), (40, 1), (49, 1)]:
            assert d.decide(3, rec, now=float(t)) == 3
        assert d.decide(3, 1, now=51.0) == 1

    def test_down_stepwise_to_the_highest_recent_recommendation(self) -> None:
        d = ScaleDecider(delay=30)
        d.decide(4, 4, now=0.0)
        d.decide(4, 2, now=20.0)
        assert d.decide(4, 1, now=31.0) == 2  # 2 (t=20) is still within the window
        assert d.decide(2, 1, now=51.0) == 1

    def test_a_fresh_decider_waits_the_delay_before_going_down(self) -> None:
        # operator restart or fail-over: the new leader has not watched the window yet
        d = ScaleDecider(delay=30)
        assert d.decide(current=4, recommended=1, now=100.0) == 4
        assert d.decide(current=4, recommended=1, now=131.0) == 1

    def test_zero_delay_goes_down_at_once(self) -> None:
        d = ScaleDecider(delay=0)
        assert d.decide(4, 1, now=0.0) == 4  # first observation: current counts once
        assert d.decide(4, 1, now=0.5) == 1


class TestDeletionCost:
    def test_idle_pods_cost_least_unknown_load_counts_busy(self) -> None:
        patches = cost_patches({"idle": 0, "busy": 2, "dark": None}, {})
        assert patches == {"idle": "0", "busy": "2", "dark": str(UNKNOWN_LOAD_COST)}
        assert int(patches["idle"]) < int(patches["busy"]) < int(patches["dark"])

    def test_written_only_on_change(self) -> None:
        assert cost_patches({"a": 1, "b": 0}, {"a": "1", "b": "2"}) == {"b": "0"}

    def test_parse_worker_jobs(self) -> None:
        text = (
            "# HELP loqua_tutor_worker_jobs Jobs running on this worker\n"
            "# TYPE loqua_tutor_worker_jobs gauge\n"
            "loqua_tutor_worker_jobs_other 7.0\n"
            "loqua_tutor_worker_jobs 2.0\n"
        )
        assert parse_worker_jobs(text) == 2
        assert parse_worker_jobs("loqua_tutor_worker_jobs_other 7.0\n") is None


class FakeClient:
    """In-memory stand-in for WorkerClient (the Kubernetes I/O) to drive the loop's logic."""

    def __init__(self, replicas: int, pods: dict[str, int | None]) -> None:
        self.replicas = replicas
        self.pod_jobs = pods
        self.annotations: dict[str, str] = {}
        self.calls: list[tuple[str, object]] = []

    async def deployment(self, name: str) -> DeploymentState:
        return DeploymentState(self.replicas, self.replicas)

    async def set_replicas(self, name: str, replicas: int) -> None:
        self.calls.append(("scale", replicas))
        self.replicas = replicas

    async def pods(self, selector: str) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                metadata=SimpleNamespace(
                    name=n, annotations=dict({DELETION_COST: a} if (a := self.annotations.get(n)) else {})
                )
            )
            for n in self.pod_jobs
        ]

    async def running_jobs(self, pod: SimpleNamespace, port: int) -> int | None:
        return self.pod_jobs[pod.metadata.name]

    async def annotate_cost(self, pod: str, cost: str) -> None:
        self.calls.append(("cost", (pod, cost)))
        self.annotations[pod] = cost


async def test_scaler_loop_up_at_once_down_after_delay_idle_pods_marked_first() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    now = [0.0]
    objects = [obj(f"room-{i}") for i in range(6)]
    client = FakeClient(replicas=1, pods={"p1": 2, "p2": 0, "p3": 1})
    worker = cfg(scaleDownDelaySeconds=20, selector="app=w", metricsPort=9101)
    scaler = DemandScaler([worker], lambda: objects, client, metrics, 1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    await scaler.tick()
    assert client.replicas == 3
    assert registry.get_sample_value("loqua_operator_agent_demand", {"agent_name": "spanish-tutor"}) == 6
    assert registry.get_sample_value("loqua_operator_desired_workers", {"agent_name": "spanish-tutor"}) == 3
    objects.clear()  # the learners left, the objects expired
    now[0] = 10.0
    await scaler.tick()
    assert client.replicas == 3  # within the delay
    assert registry.get_sample_value("loqua_operator_desired_workers", {"agent_name": "spanish-tutor"}) == 1
    now[0] = 21.0
    await scaler.tick()
    assert client.replicas == 1
    # the deletion costs were written before the scale-down: the idle pod goes first
    assert client.calls[1:] == [("cost", ("p1", "2")), ("cost", ("p2", "0")), ("cost", ("p3", "1")), ("scale", 1)]
    assert (
        registry.get_sample_value(
            "loqua_operator_worker_scale_changes_total", {"agent_name": "spanish-tutor", "direction": "down"}
        )
        == 1
    )


async def test_scale_counters_exist_at_zero_for_scaled_workers_before_any_change() -> None:
    registry = CollectorRegistry()
    DemandScaler([cfg()], lambda: [], None, OperatorMetrics(registry), 1.0, clock=lambda: 0.0)
    for direction in ("up", "down"):
        labels = {"agent_name": "spanish-tutor", "direction": direction}
        assert registry.get_sample_value("loqua_operator_worker_scale_changes_total", labels) == 0
    assert registry.get_sample_value("loqua_operator_worker_scale_errors_total", {"agent_name": "spanish-tutor"}) == 0


async def test_demand_of_unconfigured_agent_names_is_exported_and_forgotten() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    objects = [obj("a", "french-tutor")]
    scaler = DemandScaler([], lambda: objects, None, metrics, 1.0, clock=lambda: 0.0)
    await scaler.tick()
    assert registry.get_sample_value("loqua_operator_agent_demand", {"agent_name": "french-tutor"}) == 1
    objects.clear()
    await scaler.tick()
    assert registry.get_sample_value("loqua_operator_agent_demand", {"agent_name": "french-tutor"}) is None


async def test_writes_go_through_the_leaders_write_gate() -> None:
    now = [0.0]
    gate = WriteGate(elected=True, clock=lambda: now[0])
    client = WorkerClient("loqua-system", gate.check)
    try:
        with pytest.raises(NotLeader, match="scale loqua-spanish-tutor refused"):
            await client.set_replicas("loqua-spanish-tutor", 3)
        with pytest.raises(NotLeader, match="annotate pod p1 refused"):
            await client.annotate_cost("p1", "0")
        gate.confirm(0.0)
        now[0] = 10.5  # past the renew deadline without a renewal: closed again
        with pytest.raises(NotLeader):
            await client.set_replicas("loqua-spanish-tutor", 3)
        assert gate.refused == 3
    finally:
        await client.close()
