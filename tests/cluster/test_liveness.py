"""The operator's event loop hangs inside its pod: its /healthz answers 503, the kubelet's liveness
probe fails and the container is restarted; the operator comes back and takes the Lease again.

The hang is real: the test (root on the machine) stops only the operator's main thread — the one
running the asyncio loop — with ptrace(PTRACE_SEIZE, PTRACE_INTERRUPT), as a stuck call would; the
health server's thread keeps answering and reports the stalled loop."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from loqua_devstack import node
from tests.cluster.conftest import NS, Cluster, until

# The first test also builds the image and brings the node up (minutes on a fresh machine).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207


def _host_pid(cluster: Cluster, container_id: str) -> int:
    nodecfg = cluster.stack.node_config(cluster.stack.load())
    for line in node.ctr(nodecfg, "tasks", "ls").stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == container_id:
            return int(pid)
    raise AssertionError(f"container {container_id} has no running task")


def _ptrace(request: int, tid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(request, tid, None, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


async def test_a_hung_event_loop_fails_liveness_and_the_kubelet_restarts_the_operator(cluster: Cluster) -> None:
    pod = cluster.pods("operator")[0]
    name = pod["metadata"]["name"]
    status = pod["status"]["containerStatuses"][0]
    restarts = status["restartCount"]
    pid = _host_pid(cluster, status["containerID"].split("://", 1)[1])
    started = time.monotonic()
    _ptrace(PTRACE_SEIZE, pid)  # the thread-group leader: the thread that runs the event loop
    try:
        _ptrace(PTRACE_INTERRUPT, pid)

        def killed_for_liveness() -> str | None:
            events = cluster.json("-n", NS, "get", "events", "--field-selector", f"involvedObject.name={name}")
            for event in events["items"]:
                if event["reason"] == "Killing" and "liveness" in event["message"]:
                    return event["message"]
            return None

        await until(killed_for_liveness, "the kubelet to kill the container for failed liveness", 240, interval=2)
        events = cluster.json("-n", NS, "get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
        unhealthy = [e["message"] for e in events if e["reason"] == "Unhealthy" and "Liveness" in e["message"]]
        # The health thread answered and said no (a 503), rather than the whole process hanging.
        assert any("503" in m for m in unhealthy), unhealthy
    finally:
        _ptrace(PTRACE_DETACH, pid)  # the kubelet's SIGTERM, pending meanwhile, now ends the process
    hung_for = time.monotonic() - started

    def restarted_and_ready() -> bool:
        pods = [p for p in cluster.pods("operator") if p["metadata"]["name"] == name]
        st = pods[0]["status"]["containerStatuses"][0] if pods else {}
        return st.get("restartCount", 0) > restarts and st.get("ready", False)

    await until(restarted_and_ready, "the restarted operator Ready (holding the Lease)", 240, interval=2)
    lease = cluster.json("-n", NS, "get", "lease")["items"][0]
    assert lease["spec"]["holderIdentity"] == name
    assert hung_for < 240
