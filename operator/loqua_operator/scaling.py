"""Demand scaling, the pure part: demand per agent name, desired workers, when to scale, which pod goes.

Every live AgentDispatch object is a room that holds, or is about to hold, one agent job of its agent
name; objects that share a (room, agent name) share one dispatch and so one job. A worker holds its
tier's ``sessions`` jobs. Desired workers = clamp(ceil((demand + spareSessions) / sessions), min, max).
Up at once; down only to the highest recommendation of the last ``scaleDownDelaySeconds`` (the HPA's
scale-down stabilization window), so a short dip never removes a pod. No I/O here; clocks are passed in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Kubernetes' ReplicaSet controller removes pods with a lower cost first (beta since 1.22).
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# A pod whose load we could not read is treated as busy: it must not be removed before a known idle one.
UNKNOWN_LOAD_COST = 1_000_000


class WorkerScaling(BaseModel):
    """One worker Deployment under the built-in scaler (``DEMAND_SCALING``, written by the chart)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    deployment: str = Field(min_length=1, max_length=253)
    agent_name: str = Field(alias="agentName", min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    sessions: int = Field(ge=1, le=1000, description="jobs one worker pod holds (its tier's sessions)")
    min: int = Field(1, ge=0, le=10000)
    max: int = Field(ge=1, le=10000)
    spare_sessions: int = Field(0, alias="spareSessions", ge=0, le=100000)
    scale_down_delay_seconds: float = Field(300.0, alias="scaleDownDelaySeconds", ge=0, le=86400)
    selector: str = Field("", description="label selector of the Deployment's pods (for deletion costs)")
    metrics_port: int = Field(0, alias="metricsPort", ge=0, le=65535, description="worker /metrics port; 0 = none")
    scale: bool = Field(True, description="False: only export desired workers (KEDA owns the replicas)")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerScaling:
        if self.max < self.min:
            raise ValueError(f"{self.deployment}: max ({self.max}) must be >= min ({self.min})")
        return self


class _Keyed(Protocol):
    @property
    def key(self) -> tuple[str, str]: ...  # (room, agent name)

    deleting: bool


def demand_by_agent(objects: Iterable[_Keyed]) -> dict[str, int]:
    """Agent jobs the live objects hold or are about to hold, per agent name (one per room)."""
    keys = {tuple(o.key) for o in objects if not getattr(o, "deleting", False)}
    return dict(Counter(agent for _room, agent in keys))


def desired_workers(demand: int, cfg: WorkerScaling) -> int:
    wanted = math.ceil((max(0, demand) + cfg.spare_sessions) / cfg.sessions)
    return max(cfg.min, min(cfg.max, wanted))


@dataclass
class ScaleDecider:
    """Per Deployment: the replicas to set now, given the recommendation history (HPA-style window)."""

    delay: float
    _history: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, recommendation)

    def decide(self, current: int, recommended: int, now: float) -> int:
        """Replicas the Deployment should have now; ``current`` when nothing is to change."""
        if not self._history:
            # A fresh decider (operator start, fail-over) has not watched the delay yet: what the
            # Deployment runs now counts as a recommendation of that window.
            self._history.append((now, current))
        self._history.append((now, recommended))
        self._history = [(t, r) for t, r in self._history if now - t <= self.delay]
        if recommended >= current:
            return recommended  # up (or equal) at once
        # Down only as far as the highest recommendation within the delay: a dip shorter than the
        # delay changes nothing.
        stable = max(r for _, r in self._history)
        return min(current, stable)

    def reset(self) -> None:
        self._history.clear()


def deletion_costs(load: Mapping[str, int | None]) -> dict[str, int]:
    """Pod -> deletion cost: its running sessions, so idle pods go first; unknown load counts as busy."""
    return {pod: (UNKNOWN_LOAD_COST if jobs is None else max(0, int(jobs))) for pod, jobs in load.items()}


def cost_patches(load: Mapping[str, int | None], current: Mapping[str, str | None]) -> dict[str, str]:
    """Only the pods whose deletion-cost annotation differs from what it should be (writes on change)."""
    return {pod: str(cost) for pod, cost in deletion_costs(load).items() if current.get(pod) != str(cost)}


def parse_worker_jobs(metrics_text: str, name: str = "loqua_tutor_worker_jobs") -> int | None:
    """The worker's running jobs from its Prometheus text exposition; None if the series is absent."""
    for line in metrics_text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            try:
                return int(float(line.rsplit(" ", 1)[1]))
            except (IndexError, ValueError):
                return None
    return None
