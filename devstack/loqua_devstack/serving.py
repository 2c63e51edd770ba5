"""Learners who arrive together on the local node: objects + real learners, who is served, pod-seconds.

Shared by tests/cluster/test_scaling.py (the proof) and the bench's cluster figure (the numbers).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loqua_devstack.learner import Learner, create_user

Kubectl = Callable[..., Any]  # Stack.kubectl(*args, check=..., timeout=...) -> CompletedProcess


def ad_manifest(ns: str, name: str, room: str, agent: str, ttl: int) -> dict[str, Any]:
    return {
        "apiVersion": "agents.loqua.app/v1alpha1",
        "kind": "AgentDispatch",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"room": room, "agentName": agent, "ttlSeconds": ttl},
    }


def worker_pods(kubectl: Kubectl, ns: str, deleting: bool = True) -> list[dict[str, Any]]:
    out = kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=worker", "-o", "json", timeout=60)
    items = json.loads(out.stdout)["items"]
    return [p for p in items if deleting or not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


@dataclass
class PodSeconds:
    """Integrates the worker pods that exist (terminating ones too: they hold a node's resources)."""

    kubectl: Kubectl
    namespace: str
    interval: float = 1.0
    total: float = 0.0
    peak_ready: int = 0
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            pods = await asyncio.to_thread(worker_pods, self.kubectl, self.namespace)
            now = time.monotonic()
            self.total += len(pods) * (now - last)
            self.peak_ready = max(self.peak_ready, sum(1 for p in pods if ready(p)))
            last = now
            await asyncio.sleep(self.interval)

    def start(self) -> PodSeconds:
        self._task = asyncio.create_task(self._run(), name="pod-seconds")
        return self

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.total


@dataclass
class Arrival:
    rooms: list[str]
    learners: list[Learner]
    users: list[dict[str, Any]]
    started: float
    served_at: dict[int, float] = field(default_factory=dict)

    def served(self) -> list[int]:
        """Learners whose room holds exactly one agent, in session (``loqua.status`` active)."""
        done = []
        for i, learner in enumerate(self.learners):
            agents = learner.agents_in_room()
            if len(agents) == 1 and agents[0].attributes.get("loqua.status") == "active":
                done.append(i)
        return done

    async def wait_all_served(self, timeout: float) -> float | None:
        """Seconds from arrival until every learner was served at once; None if not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            for i in self.served():
                self.served_at.setdefault(i, now - self.started)
            if len(self.served()) == len(self.learners):
                return now - self.started
            await asyncio.sleep(0.25)
        return None

    async def leave(self) -> None:
        await asyncio.gather(*(learner.leave() for learner in self.learners), return_exceptions=True)


async def arrive_together(
    env: dict[str, str], apply: Callable[[dict[str, Any]], None], ns: str, n: int, agent: str, ttl: int
) -> Arrival:
    """``n`` AgentDispatch objects and ``n`` real learners (one per room), all at once."""
    users = [await asyncio.to_thread(create_user, env, f"Learner {i}") for i in range(n)]
    rooms = [f"{ns}-lesson{i}" for i in range(n)]
    stamp = int(time.time() * 1000)
    learners = [
        Learner(env, room, user_id=u["user_id"], sessionId=f"sess_{stamp}_{i}", display_name=f"Learner {i}")
        for i, (room, u) in enumerate(zip(rooms, users, strict=True))
    ]
    started = time.monotonic()
    await asyncio.gather(
        *(asyncio.to_thread(apply, ad_manifest(ns, f"lesson{i}", room, agent, ttl)) for i, room in enumerate(rooms)),
        *(learner.join() for learner in learners),
    )
    return Arrival(rooms, learners, users, started)
