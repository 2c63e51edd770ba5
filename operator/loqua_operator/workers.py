"""Demand scaling, the I/O part: read worker Deployments, set replicas through their ``scale``
subresource, mark pods with their deletion cost, read each pod's running jobs from its /metrics.

Decisions live in ``scaling.py``; this module only observes and applies. Every call has a timeout;
every write asks ``write_timeout(what)`` first (the leader's write gate: it raises when this replica
may not write, and returns how long the write may take).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import kubernetes

from loqua_operator.metrics import OperatorMetrics
from loqua_operator.scaling import (
    DELETION_COST,
    ScaleDecider,
    WorkerScaling,
    cost_patches,
    demand_by_agent,
    desired_workers,
    parse_worker_jobs,
)

log = logging.getLogger(__name__)
CALL_TIMEOUT = 5.0
SCRAPE_TIMEOUT = 2.0


@dataclass(frozen=True)
class DeploymentState:
    replicas: int
    ready: int


class WorkerClient:
    """The Kubernetes and HTTP calls of the scaler, for Deployments in one namespace."""

    def __init__(
        self,
        namespace: str,
        write_timeout: Callable[[str], float],
        api_client: kubernetes.client.ApiClient | None = None,
    ) -> None:
        self.namespace = namespace
        self._write_timeout = write_timeout
        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._http = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT, trust_env=False)

    async def _run(self, fn: Callable[..., Any], timeout: float, *args: Any, **kwargs: Any) -> Any:
        timeout = max(0.1, min(CALL_TIMEOUT, timeout))
        kwargs["_request_timeout"] = (timeout, timeout)
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout + 1.0)

    async def deployment(self, name: str) -> DeploymentState:
        dep = await self._run(self._apps.read_namespaced_deployment, CALL_TIMEOUT, name, self.namespace)
        return DeploymentState(replicas=int(dep.spec.replicas or 0), ready=int(dep.status.ready_replicas or 0))

    async def set_replicas(self, name: str, replicas: int) -> None:
        timeout = self._write_timeout(f"scale {name}")
        body = {"spec": {"replicas": replicas}}
        await self._run(self._apps.patch_namespaced_deployment_scale, timeout, name, self.namespace, body)

    async def pods(self, selector: str) -> list[Any]:
        result = await self._run(self._core.list_namespaced_pod, CALL_TIMEOUT, self.namespace, label_selector=selector)
        return [p for p in result.items if not p.metadata.deletion_timestamp]

    async def running_jobs(self, pod: Any, port: int) -> int | None:
        """The pod's ``loqua_tutor_worker_jobs``; None when it cannot be read (counted as busy)."""
        ip = pod.status.pod_ip if pod.status else None
        if not ip or not port:
            return None
        host = f"[{ip}]" if ":" in ip else ip
        try:
            response = await self._http.get(f"http://{host}:{port}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.debug("worker pod %s: /metrics not readable: %s", pod.metadata.name, type(exc).__name__)
            return None
        return parse_worker_jobs(response.text)

    async def annotate_cost(self, pod: str, cost: str) -> None:
        timeout = self._write_timeout(f"annotate pod {pod}")
        body = {"metadata": {"annotations": {DELETION_COST: cost}}}
        await self._run(self._core.patch_namespaced_pod, timeout, pod, self.namespace, body)

    async def close(self) -> None:
        await self._http.aclose()


class DemandScaler:
    """Every ``interval`` seconds: demand from the live objects → metrics → each Deployment's replicas."""

    def __init__(
        self,
        workers: Iterable[WorkerScaling],
        objects: Callable[[], Iterable[Any]],
        client: WorkerClient | None,
        metrics: OperatorMetrics,
        interval: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.workers = list(workers)
        self._objects = objects
        self._client = client
        self._metrics = metrics
        self._interval = interval
        self._clock = clock or asyncio.get_running_loop().time
        self._deciders = {w.deployment: ScaleDecider(w.scale_down_delay_seconds) for w in self.workers}
        self._known_agents: set[str] = set()
        for worker in self.workers:  # the series exist at 0 before the first change or error
            if worker.scale:
                self._metrics.scale_changes.labels(worker.agent_name, "up")
                self._metrics.scale_changes.labels(worker.agent_name, "down")
                self._metrics.scale_errors.labels(worker.agent_name)

    def observe_demand(self) -> dict[str, int]:
        demand = demand_by_agent(self._objects())
        agents = set(demand) | {w.agent_name for w in self.workers}
        for gone in self._known_agents - agents:
            self._metrics.agent_demand.remove(gone)
        self._known_agents = agents
        for agent in agents:
            self._metrics.agent_demand.labels(agent).set(demand.get(agent, 0))
        return demand

    async def tick(self) -> None:
        demand = self.observe_demand()
        for worker in self.workers:
            desired = desired_workers(demand.get(worker.agent_name, 0), worker)
            self._metrics.desired_workers.labels(worker.agent_name).set(desired)
            if self._client is None or not worker.scale:
                continue
            try:
                await self._apply(worker, desired)
            except Exception as exc:  # never fatal: the next tick tries again
                self._metrics.scale_errors.labels(worker.agent_name).inc()
                log.warning("demand scaling of %s failed: %s", worker.deployment, exc)

    async def _apply(self, worker: WorkerScaling, desired: int) -> None:
        assert self._client is not None
        state = await self._client.deployment(worker.deployment)
        self._metrics.ready_workers.labels(worker.agent_name).set(state.ready)
        target = self._deciders[worker.deployment].decide(state.replicas, desired, self._clock())
        if target == state.replicas:
            return
        if target < state.replicas:
            await self._mark_idle_pods_first(worker)
        await self._client.set_replicas(worker.deployment, target)
        direction = "up" if target > state.replicas else "down"
        self._metrics.scale_changes.labels(worker.agent_name, direction).inc()
        log.info(
            "scaled %s from %d to %d workers (demand-desired %d)", worker.deployment, state.replicas, target, desired
        )

    async def _mark_idle_pods_first(self, worker: WorkerScaling) -> None:
        """Before a scale-down: deletion cost = running sessions, so the ReplicaSet removes idle pods."""
        assert self._client is not None
        if not worker.selector:
            return
        pods = await self._client.pods(worker.selector)
        jobs = await asyncio.gather(*(self._client.running_jobs(p, worker.metrics_port) for p in pods))
        load = {p.metadata.name: j for p, j in zip(pods, jobs, strict=True)}
        current = {p.metadata.name: (p.metadata.annotations or {}).get(DELETION_COST) for p in pods}
        for pod, cost in cost_patches(load, current).items():
            await self._client.annotate_cost(pod, cost)

    async def run(self, synced: asyncio.Event | None = None) -> None:
        if synced is not None:  # demand from a half-listed index would be too low
            await synced.wait()
        while True:
            try:
                await self.tick()
            except Exception:  # pragma: no cover - a bug in a tick must not stop scaling for good
                log.exception("demand scaling tick failed")
            await asyncio.sleep(self._interval)


def start(
    settings: Any,
    metrics: OperatorMetrics,
    objects: Callable[[], Iterable[Any]],
    write_timeout: Callable[[str], float],
    synced: asyncio.Event | None = None,
) -> tuple[asyncio.Task[None], WorkerClient | None]:
    """The scaler task the operator runs while it acts. Demand is exported even with no worker configured."""
    namespace = settings.demand_scaling_namespace or settings.pod_namespace or "default"
    client = WorkerClient(namespace, write_timeout) if any(w.scale for w in settings.demand_scaling) else None
    scaler = DemandScaler(settings.demand_scaling, objects, client, metrics, settings.demand_scaling_interval_seconds)
    return asyncio.create_task(scaler.run(synced), name="demand-scaler"), client
