"""Shared fixtures: the local stack of real components, and clients for its parts.

`stack_env` uses a stack that is already running (``.devstack/env`` and every part up) or starts
one for the test session and stops it afterwards. Integration tests never mock the parts.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loqua_devstack.services import ServiceProcess, kubectl, operator_process, wait_for
from loqua_devstack.stack import Stack, devstack_dir

LEARNERS_TTL_SECONDS = 15  # TTL of AgentDispatch objects made by /rooms/join in tests


def _needs_stack(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in ("integration", "e2e", "chart", "cluster"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Unit tests first: they fail fast and need no servers. The cluster tests last: they add the
    # node to the session's stack (and its bridge address to livekit-server and the API server).
    items.sort(key=lambda item: (_needs_stack(item), item.get_closest_marker("cluster") is not None))


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    stack = Stack(devstack_dir())
    started_here = not stack.any_running()  # only then is the stack ours to stop
    env = stack.up()  # reuses running parts, starts missing ones
    try:
        yield env
    finally:
        if started_here and not os.environ.get("LOQUA_KEEP_STACK"):
            stack.down()


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Stack:
    """The running stack, for tests that stop and start one part (fault tests)."""
    return Stack(devstack_dir())


@pytest.fixture(scope="session")
def logs_dir(stack_env: dict[str, str]) -> Path:
    """Where processes a test starts write their logs: .devstack/logs/tests/."""
    path = Path(stack_env["DEVSTACK_DIR"]) / "logs" / "tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def unique_name() -> str:
    """A short name unique to one test, usable for rooms and namespaces."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def learners_operator(stack_env: dict[str, str], logs_dir: Path) -> Iterator[ServiceProcess]:
    """An operator for the namespace where the reference API's /rooms/join puts AgentDispatch
    objects (DISPATCH_NAMESPACE), with a short TTL, for one test module. Webhooks off: the
    integration session's operator may hold the stack's webhook port; the 2 s sweep observes the
    rooms instead. Before it stops it lets the objects being deleted go (their finalizers)."""
    namespace = stack_env["DISPATCH_NAMESPACE"]
    proc = operator_process(
        stack_env,
        logs_dir / "operator-learners.log",
        namespaces=[namespace],
        extra_env={
            "LEASE_NAME": f"learners-operator-{uuid.uuid4().hex[:6]}",
            "LEASE_NAMESPACE": "default",
            "WEBHOOK_ENABLED": "false",
            "CLEANUP_INTERVAL_MS": "2000",
            "AGENT_TTL_SECONDS": str(LEARNERS_TTL_SECONDS),
            "LOG_LEVEL": "DEBUG",
        },
    ).start()
    try:
        proc.wait_healthy(timeout=60, body="ok")
        yield proc

        def released() -> bool:
            items = json.loads(kubectl(stack_env, "get", "ad", "-n", namespace, "-o", "json"))["items"]
            return not any(i["metadata"].get("deletionTimestamp") for i in items)

        wait_for(released, f"objects being deleted in {namespace} to be released", 60, 0.5)
    finally:
        proc.stop()
