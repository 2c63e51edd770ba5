"""The operator with the project's real tutor worker (issue 11, points 2 and 5).

A learner who arrives after the agent's job gave up waiting is served at once — an agent that is
not in the room long after its dispatch is not "maybe still joining" — and then, with learner and
agent both present and nothing changing, the sweeps write nothing to Kubernetes.

The operator here is a solo one (its own namespace, no webhooks: the stack's webhook port belongs to
the integration suite's operator), so it learns of the learner from its sweep.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import kubernetes
import pytest
from livekit import api

from loqua_devstack.learner import Learner, create_user
from loqua_devstack.services import kubectl, operator_process, wait_for
from tests.e2e.conftest import PARTICIPANT_WAIT_TIMEOUT, until
from tests.integration.conftest import (
    CRD_DIR,
    GROUP,
    PLURAL,
    VERSION,
    ad_manifest,
    events_for,
    get_ad,
    make_namespace,
    release_namespace,
    wait_phase,
)
from tests.integration.test_operator_dispatch import metric
from tests.integration.test_operator_faults import figure

pytestmark = pytest.mark.e2e
PRESENCE_GRACE = 15  # the product default, on purpose: the late learner must not wait it out
SWEEP_MS = 1000


@pytest.fixture(scope="module")
def kube(stack_env: dict[str, str]) -> tuple[kubernetes.client.CustomObjectsApi, kubernetes.client.CoreV1Api]:
    """The CRD installed, and clients for AgentDispatch objects and namespaces."""
    kubectl(stack_env, "apply", "-f", str(CRD_DIR))
    kubectl(stack_env, "wait", "--for=condition=Established", "--timeout=60s", "crd/agentdispatches.agents.loqua.app")
    client = kubernetes.config.new_client_from_config(config_file=stack_env["KUBECONFIG"])
    return kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)


async def agents(lk: api.LiveKitAPI, room: str) -> list[str]:
    resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return [p.identity for p in resp.participants if p.kind == api.ParticipantInfo.Kind.AGENT]


async def test_late_learner_is_served_at_once_then_sweeps_write_nothing(
    stack_env, tutor_worker, tutor_agent_name, kube, logs_dir: Path, lk
) -> None:
    custom, core = kube
    ns = make_namespace(core, "solo")
    op = operator_process(
        stack_env,
        logs_dir / f"operator-e2e-late-{ns}.log",
        namespaces=[ns],
        extra_env={
            "LEADER_ELECTION": "false",
            "LEASE_NAMESPACE": ns,
            "WEBHOOK_PORT": "0",
            "CLEANUP_INTERVAL_MS": str(SWEEP_MS),
            "AGENT_PRESENCE_GRACE_SECONDS": str(PRESENCE_GRACE),
            "MANAGED_AGENT_NAMES": tutor_agent_name,
        },
    ).start()
    room = f"late-{uuid.uuid4().hex[:8]}"
    user = create_user(stack_env, "Late")  # a real user: the tutor's session with it must succeed
    user_id = user.get("user_id") or user["id"]
    learner = Learner(stack_env, room, user_id=user_id, display_name="Late", email=f"{user_id}@example.com")
    try:
        op.wait_healthy(timeout=60, body="ok")
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, ad_manifest("a", room, agent=tutor_agent_name, ttlSeconds=600)
        )
        wait_phase(custom, ns, "a", "Dispatched", timeout=30)
        # The agent's job joins, waits PARTICIPANT_WAIT_TIMEOUT for a learner, and gives up.
        await until(lambda: agents(lk, room), "the agent joins the empty room", 60)
        await until(lambda: _none(agents(lk, room)), "the agent gives up waiting", PARTICIPANT_WAIT_TIMEOUT + 30)
        await learner.join()
        joined = time.monotonic()
        await until(lambda: learner.agents_in_room(), "an agent for the late learner", 60)
        latency = time.monotonic() - joined
        figure("late learner (agent gave up before): join -> agent in the room, s", f"{latency:.2f}")
        assert latency < PRESENCE_GRACE, "the late learner waited out the presence grace"
        status = wait_for(
            lambda: (o := get_ad(custom, ns, "a")) and o["status"].get("agentPresent") is True and o["status"],
            "agentPresent",
            30,
        )
        assert status["phase"] == "Active" and status["redispatches"] in (0, 1)  # 1 spent, or restored once seen
        assert "Redispatched" in {e.reason for e in events_for(core, ns, "a")}

        # Steady state: learner and agent present, nothing changes -> zero status writes per sweep.
        time.sleep(3 * SWEEP_MS / 1000)
        sweeps = metric(op, "loqua_operator_sweep_duration_seconds_count")
        writes = metric(op, "loqua_operator_status_updates_total")
        wait_for(lambda: metric(op, "loqua_operator_sweep_duration_seconds_count") >= sweeps + 6, "6 sweeps", 60)
        done = metric(op, "loqua_operator_sweep_duration_seconds_count") - sweeps
        added = metric(op, "loqua_operator_status_updates_total") - writes
        figure(
            "steady state (learner + agent present): status writes per sweep",
            f"{added / done:.2f} ({added:.0f} in {done:.0f} sweeps)",
        )
        assert added == 0 and metric(op, "loqua_operator_sweep_api_writes") == 0
        assert learner.agents_in_room(), "the agent stayed"
    finally:
        await learner.leave()
        try:
            release_namespace(core, custom, ns)
        finally:
            op.stop()


async def _none(names) -> bool:  # type: ignore[no-untyped-def]
    return not await names
