"""The chart's pods on the local node (`make cluster` as a fixture).

`cluster` adds the node to the session's stack (`loqua-dev up --node`), builds the image from
deploy/Dockerfile (layers cached), loads it into the node and installs the chart as release `loqua`
in `loqua-system` with the repository's values file, exactly as `make cluster` does. It reuses a
cluster that `make cluster` already runs. The session's `stack_env` stops it all (node included)
when the session started the stack.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import api

from loqua_devstack import cluster as local_cluster
from loqua_devstack import serving
from loqua_devstack.stack import Stack, devstack_dir, quiet_dev_secret_warning
from tests.integration import conftest as integration

NS = local_cluster.NAMESPACE
AGENT = local_cluster.AGENT_NAME


@dataclass
class Cluster:
    stack: Stack
    env: dict[str, str]
    image: str

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return self.stack.kubectl(*args, check=check, timeout=timeout).stdout

    def json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def pods(self, component: str) -> list[dict[str, Any]]:
        """Pods of the release for ``component`` (operator or worker), not yet being deleted."""
        items = self.json("-n", NS, "get", "pods", "-l", f"app.kubernetes.io/component={component}")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def exec(self, pod: str, *cmd: str, check: bool = True) -> Any:
        return self.stack.kubectl("-n", NS, "exec", pod, "--", *cmd, check=check, timeout=60)

    def deployment(self, component: str) -> str:
        items = self.json("-n", NS, "get", "deploy", "-l", f"app.kubernetes.io/component={component}")["items"]
        assert len(items) == 1, [i["metadata"]["name"] for i in items]
        return items[0]["metadata"]["name"]

    def apply(self, manifest: dict[str, Any]) -> None:
        subprocess.run(
            ["kubectl", f"--kubeconfig={self.stack.kubeconfig}", "apply", "-f", "-"],
            input=json.dumps(manifest),
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def ad(self, ns: str, name: str) -> dict[str, Any] | None:
        out = self.stack.kubectl("-n", ns, "get", "agentdispatch", name, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="session")
def cluster(stack_env: dict[str, str]) -> Cluster:
    quiet_dev_secret_warning()
    stack = Stack(devstack_dir())
    installed = local_cluster.up(stack)
    return Cluster(stack, stack.env(), installed.image)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of its own for a test's AgentDispatch objects (removed afterwards)."""
    name = f"cl-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.stack.kubectl("delete", "agentdispatch", "--all", "-n", name, "--wait=true", check=False, timeout=120)
    cluster.stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
async def lk(cluster: Cluster) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(
        cluster.env["LIVEKIT_URL"], cluster.env["LIVEKIT_API_KEY"], cluster.env["LIVEKIT_API_SECRET"]
    )
    yield client
    await client.aclose()


def ad_manifest(ns: str, name: str, room: str, ttl: int = 20) -> dict[str, Any]:
    return serving.ad_manifest(ns, name, room, AGENT, ttl)


async def until(check: Any, what: str, timeout: float, interval: float = 0.5) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


async def live_dispatches(lk: api.LiveKitAPI, room: str) -> list[api.AgentDispatch]:
    """The room's dispatches of our agent name, read from LiveKit itself."""
    return await integration.live_dispatches(lk, room, AGENT)
