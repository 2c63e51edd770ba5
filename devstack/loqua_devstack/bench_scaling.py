"""The bench's cluster part: six learners arrive together on the local node; how long until all are
served, and the worker pod-seconds it cost, with the built-in demand scaler against one and four fixed
replicas (same node, same run, same scenario). Needs `make cluster` (root, the local node).

Scenario per configuration: the release is set to the configuration and settles (scaler: one pod at
rest); six AgentDispatch objects (ttl 20 s) and six real learners arrive at once; learners stay
HOLD seconds after all were served (or after SERVE_CAP if they never all were), then leave. Pod-seconds
are integrated over the same WINDOW from the arrival for every configuration (long enough for the
slowest to serve, hold, and for the scaler to be back at one pod after the objects expired), so the
figures compare: a configuration that is done early keeps paying for its pods until the window ends.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from loqua_devstack import cluster as local_cluster
from loqua_devstack.serving import PodSeconds, arrive_together, worker_pods
from loqua_devstack.stack import Stack

LEARNERS = 6
SERVE_CAP = 150.0
HOLD = 20.0
TAIL = 75.0  # ttl 20 s + scale-down delay 30 s + a sweep and a pod's exit
WINDOW = SERVE_CAP + HOLD + TAIL  # pod-seconds of every configuration over this many seconds


def _values_with(replicas: int | None) -> dict:
    """local-node.yaml's workers with the scaler (None) or fixed replicas."""
    values = yaml.safe_load(local_cluster.VALUES.read_text())
    for worker in values["workers"]:
        if replicas is not None:
            worker["autoscaling"] = {"mode": ""}
            worker["replicas"] = replicas
    return {"workers": values["workers"]}


def _apply(stack: Stack):  # type: ignore[no-untyped-def]
    def apply(manifest: dict) -> None:
        local_cluster._apply(stack, manifest)

    return apply


async def _settle(stack: Stack, expected: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = await asyncio.to_thread(worker_pods, stack.kubectl, local_cluster.NAMESPACE)
        if len(pods) == expected and all(not p["metadata"].get("deletionTimestamp") for p in pods):
            await asyncio.to_thread(local_cluster.wait_ready, stack)
            return
        await asyncio.sleep(2)
    raise RuntimeError(f"worker pods did not settle at {expected} within {timeout:.0f} s")


async def one_run(stack: Stack, image: str, replicas: int | None, say) -> tuple[float | None, int, float, float]:  # type: ignore[no-untyped-def]
    """(seconds until all served or None, most served at once, pod-seconds, window seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "values.yaml"
        path.write_text(yaml.safe_dump(_values_with(replicas)))
        await asyncio.to_thread(local_cluster.install, stack, image, ("-f", str(path)))
    await _settle(stack, 1 if replicas is None else replicas)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", ns)
    env = stack.env()
    pods = PodSeconds(stack.kubectl, local_cluster.NAMESPACE).start()
    started = time.monotonic()
    arrival = await arrive_together(env, _apply(stack), ns, LEARNERS, local_cluster.AGENT_NAME, ttl=20)
    try:
        served = await arrival.wait_all_served(SERVE_CAP)
        most = max(len(arrival.served_at), len(arrival.served()))
        say(f"  {'scaler' if replicas is None else f'{replicas} fixed'}: served={served} most={most}")
        await asyncio.sleep(HOLD)
    finally:
        await arrival.leave()
    await asyncio.sleep(max(0.0, started + WINDOW - time.monotonic()))
    total = await pods.stop()
    window = time.monotonic() - started
    stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return served, most, total, window


async def scaling_figure(stack: Stack, say) -> list[tuple[str, str, float, float]]:  # type: ignore[no-untyped-def]
    """Per configuration (label, time until all six served, pod-seconds, window seconds); the
    release restored afterwards."""
    installed = await asyncio.to_thread(local_cluster.up, stack)
    rows = []
    try:
        for label, replicas in (("built-in scaler (1..4)", None), ("1 fixed replica", 1), ("4 fixed replicas", 4)):
            served, most, total, window = await one_run(stack, installed.image, replicas, say)
            when = f"{served:.1f} s" if served is not None else f"not all within {SERVE_CAP:.0f} s ({most}/{LEARNERS})"
            rows.append((label, when, total, window))
    finally:
        await asyncio.to_thread(local_cluster.install, stack, installed.image)
    say(json.dumps(rows))
    return rows
