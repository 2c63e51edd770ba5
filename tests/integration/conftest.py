"""Fixtures for tests against the real kube-apiserver and livekit-server of the local stack."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from livekit import api

from loqua_devstack.services import ServiceProcess, kubectl, operator_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
GROUP, VERSION, PLURAL = "agents.loqua.app", "v1alpha1", "agentdispatches"
SESSION_NS_PATTERN = "lq-*"  # the session operator's namespaces; solo tests use others
# Agent names whose unreferenced dispatches the session operator's sweep removes. Tests with their
# own operators use other names (solo-tutor) so this sweep never touches their rooms.
SESSION_MANAGED_NAMES = "tutor,ghost"


@pytest.fixture(scope="session")
def crd(stack_env: dict[str, str]) -> None:
    kubectl(stack_env, "apply", "-f", str(CRD_DIR))
    kubectl(
        stack_env,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/agentdispatches.agents.loqua.app",
    )


@pytest.fixture(scope="session")
def kube_client(stack_env: dict[str, str]) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=stack_env["KUBECONFIG"])


@pytest.fixture(scope="session")
def custom(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_client)


@pytest.fixture(scope="session")
def core(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_client)


@pytest.fixture(scope="session")
def operator(stack_env: dict[str, str], crd: None, logs_dir: Path) -> Iterator[ServiceProcess]:
    """One operator for the session, watching the ``lq-*`` namespaces."""
    proc = operator_process(
        stack_env,
        logs_dir / "operator-session.log",
        namespaces=[SESSION_NS_PATTERN],
        extra_env={
            "LEASE_NAME": "it-session-operator",
            "LEASE_NAMESPACE": "default",
            "LOG_LEVEL": "DEBUG",
            # Fast lifecycle for tests: sweep every 2 s, short grace periods.
            "CLEANUP_INTERVAL_MS": "2000",
            "AGENT_PRESENCE_GRACE_SECONDS": "4",
            "ORPHAN_GRACE_SECONDS": "3",
            "MANAGED_AGENT_NAMES": SESSION_MANAGED_NAMES,
        },
    ).start()
    proc.wait_healthy(timeout=60, body="ok")
    yield proc
    proc.stop()


def make_namespace(core: kubernetes.client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def namespace(core: kubernetes.client.CoreV1Api, operator: ServiceProcess) -> Iterator[str]:
    """A fresh namespace the session operator watches; deleted (with its objects) afterwards."""
    name = make_namespace(core, "lq")
    yield name
    release_namespace(core, custom_api(core), name)


def custom_api(core: kubernetes.client.CoreV1Api) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(core.api_client)


def release_namespace(
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    name: str,
    timeout: float = 90,
) -> None:
    """Delete a test namespace after its objects are released by a still-running operator.

    (kopf does not watch namespaces that are already terminating when it starts, so objects left
    there by a stopped operator would keep their finalizers.)
    """
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, PLURAL)
    wait_for(
        lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"],
        f"objects in {name} released by the operator",
        timeout,
    )
    core.delete_namespace(name)


@pytest.fixture
async def lk(stack_env: dict[str, str]) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(stack_env["LIVEKIT_URL"], stack_env["LIVEKIT_API_KEY"], stack_env["LIVEKIT_API_SECRET"])
    yield client
    await client.aclose()


def ad_manifest(name: str, room: str, agent: str = "tutor", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentDispatch",
        "metadata": {"name": name},
        "spec": {"room": room, "agentName": agent, **spec},
    }


def get_ad(custom: kubernetes.client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_phase(
    custom: kubernetes.client.CustomObjectsApi, ns: str, name: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_ad(custom, ns, name)
        return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

    return wait_for(check, f"{ns}/{name} phase {phase}", timeout)


def wait_gone(custom: kubernetes.client.CustomObjectsApi, ns: str, name: str, timeout: float = 30) -> None:
    wait_for(lambda: get_ad(custom, ns, name) is None, f"{ns}/{name} deleted", timeout)


async def live_dispatches(lk: api.LiveKitAPI, room: str, agent: str | None = None) -> list[api.AgentDispatch]:
    """Named dispatches of a room, read from LiveKit directly ([] when the room does not exist:
    livekit-server answers ListDispatch for an unknown room only with a timeout)."""
    if not (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms:
        return []
    try:
        found = await lk.agent_dispatch.list_dispatch(room)
    except api.TwirpError as exc:
        if exc.code == "not_found":
            return []
        raise
    return [d for d in found if d.agent_name and (agent is None or d.agent_name == agent)]


def events_for(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> list[Any]:
    return [e for e in core.list_namespaced_event(ns).items if e.involved_object.name == name]
