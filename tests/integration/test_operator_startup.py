"""The operator started right next to the CRD's installation, on a real kube-apiserver of its own.

kopf reads API discovery once at start-up to choose its watches, and later learns of a CRD only by a
change to it: an operator started just after `kubectl apply -f deploy/crds/` (or `helm install`),
before discovery listed AgentDispatch, never watched an object. Each test runs on an empty API server
(a second kube-apiserver on the stack's etcd under its own key prefix), so the CRD can be absent.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from livekit import api

from loqua_devstack.services import ServiceProcess, operator_process, wait_for
from loqua_devstack.stack import CRD_DIR, Stack
from tests.integration.conftest import GROUP, PLURAL, VERSION, ad_manifest, kubectl, live_dispatches, wait_phase

pytestmark = pytest.mark.integration

AGENT = "startup-tutor"  # no worker serves it: the test is about the dispatch, not the agent
CRD = f"{PLURAL}.{GROUP}"


@pytest.fixture
def empty_cluster(stack: Stack) -> Iterator[tuple[dict[str, str], kubernetes.client.ApiClient]]:
    """kubectl environment and an API client for an empty API server."""
    with stack.empty_apiserver(f"startup-{uuid.uuid4().hex[:8]}") as kubeconfig:
        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        try:
            yield {"KUBECONFIG": str(kubeconfig)}, client
        finally:
            client.close()


def start_operator(stack_env: dict[str, str], env: dict[str, str], log: Path, **extra: str) -> ServiceProcess:
    return operator_process(
        {**stack_env, **env},
        log,
        extra_env={"LEASE_NAMESPACE": "default", "WEBHOOK_PORT": "0", "CLEANUP_INTERVAL_MS": "2000", **extra},
    ).start()


def crd_served(client: kubernetes.client.ApiClient) -> bool:
    try:
        found = kubernetes.client.CustomObjectsApi(client).get_api_resources(GROUP, VERSION)
    except kubernetes.client.ApiException:
        return False
    return any(r.name == PLURAL for r in found.resources)


# Seconds between the operator's start and `kubectl apply -f deploy/crds/`: 0 is "applied at once";
# the window that lost every object before the fix (the CRD appearing between kopf's discovery scan and
# its CRD watch's first listing) fell at 1.8 and 2.0 s here, where Python's imports end; the sweep
# covers it on a slower or faster machine too.
CRD_DELAYS = [0.0, 0.6, 1.0, 1.3, 1.6, 1.8, 2.0, 2.2, 2.5, 3.0, 4.0]


async def test_objects_are_bound_however_the_crd_install_and_operator_start_interleave(
    stack_env, empty_cluster, logs_dir, lk: api.LiveKitAPI
) -> None:
    """For each delay: an operator started, the CRD applied that much later, an object created as soon
    as the CRD is served → Dispatched with one LiveKit dispatch. The CRD is deleted after each trial,
    so every trial starts without it."""
    env, client = empty_cluster
    custom = kubernetes.client.CustomObjectsApi(client)
    kubernetes.client.CoreV1Api(client).create_namespace({"metadata": {"name": "learners"}})
    rooms: list[str] = []
    unbound: list[float] = []
    try:
        for delay in CRD_DELAYS:
            log = logs_dir / f"operator-startup-crd-after-{delay}s.log"
            log.unlink(missing_ok=True)
            operator = start_operator(stack_env, env, log)
            try:
                time.sleep(delay)
                assert operator.alive(), f"the operator exited while the CRD was absent; see {log}"
                kubectl(env, "apply", "-f", str(CRD_DIR))
                wait_for(lambda: crd_served(client), "AgentDispatch served", 60)
                room = f"startup-{uuid.uuid4().hex[:8]}"
                rooms.append(room)
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, "learners", PLURAL, ad_manifest("lesson", room, agent=AGENT)
                )
                try:
                    obj = wait_phase(custom, "learners", "lesson", "Dispatched", timeout=30)
                except TimeoutError:
                    unbound.append(delay)
                else:
                    found = await live_dispatches(lk, room, AGENT)
                    assert [d.id for d in found] == [obj["status"]["dispatchId"]], f"CRD after {delay} s; see {log}"
                    # Deleted while the operator runs: its finalizer removes the dispatch.
                    custom.delete_namespaced_custom_object(GROUP, VERSION, "learners", PLURAL, "lesson")
                    wait_for(
                        lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, "learners", PLURAL)["items"],
                        "object released",
                        30,
                    )
            finally:
                operator.stop()
                if unbound and unbound[-1] == delay:  # nobody will remove its finalizer: let it go
                    custom.patch_namespaced_custom_object(
                        GROUP, VERSION, "learners", PLURAL, "lesson", {"metadata": {"finalizers": None}}
                    )
            kubectl(env, "delete", "crd", CRD, "--wait=true", "--timeout=60s")
            wait_for(lambda: not crd_served(client), "AgentDispatch no longer served", 30)
    finally:
        for room in rooms:
            if (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    assert not unbound, f"never Dispatched when the CRD was applied this many seconds after the start: {unbound}"


def test_operator_without_the_crd_says_to_install_it_and_exits_2(stack_env, empty_cluster, logs_dir) -> None:
    """No CRD: alive (not ready) while it waits, then exit code 2 and a message that says what to do."""
    env, _ = empty_cluster
    log = logs_dir / "operator-startup-no-crd.log"
    log.unlink(missing_ok=True)
    operator = start_operator(stack_env, env, log, CRD_WAIT_SECONDS="6")
    try:
        operator.wait_healthy(timeout=20)
        ready = operator.health_url.replace("/healthz", "/readyz")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(ready, timeout=2)
        assert refused.value.code == 503
        assert operator.proc is not None
        exit_code = operator.proc.wait(timeout=30)
    finally:
        operator.stop()
    text = log.read_text()
    assert exit_code == 2, text[-2000:]
    assert f"{CRD} {VERSION} is not served after 6 s" in text
    assert "install the CRDs first" in text and "kubectl apply -f deploy/crds/" in text
