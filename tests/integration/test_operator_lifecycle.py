"""Lifecycle over time with real learners (the livekit rtc SDK) on the real stack: TTL expiry,
reconnect within TTL, self-healing re-dispatch with backoff, orphan sweep, webhook verification.

The session operator sweeps every 2 s with a 4 s agent-presence grace and a 3 s orphan grace.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest
from livekit import api

from loqua_devstack.learner import Learner
from loqua_devstack.services import wait_for
from tests.integration.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    ad_manifest,
    events_for,
    get_ad,
    live_dispatches,
    wait_gone,
    wait_phase,
)
from tests.integration.test_operator_dispatch import metric

pytestmark = pytest.mark.integration


def room_name() -> str:
    return f"life-{uuid.uuid4().hex[:10]}"


def create(custom, ns: str, name: str, room: str, **spec: object) -> dict:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ad_manifest(name, room, **spec))
    return wait_for(
        lambda: (get_ad(custom, ns, name) or {}).get("status", {}).get("dispatchId") and get_ad(custom, ns, name),
        f"{ns}/{name} bound",
        30,
    )


async def test_expiry_without_learners(custom, core, namespace, lk, operator) -> None:
    room = room_name()
    obj = create(custom, namespace, "a", room, ttlSeconds=4)
    status = wait_for(
        lambda: (
            (get_ad(custom, namespace, "a") or {}).get("status", {}).get("expiresAt")
            and get_ad(custom, namespace, "a")["status"]
        ),
        "expiresAt set",
        15,
    )
    assert status["phase"] == "Dispatched" and status["participants"] == 0  # never saw a learner
    assert status["idleSince"] == obj["metadata"]["creationTimestamp"]
    before = metric(operator, "loqua_operator_expired_total")
    wait_gone(custom, namespace, "a", timeout=4 + 2 + 15)
    assert await live_dispatches(lk, room) == []
    assert metric(operator, "loqua_operator_expired_total") > before
    assert "Expired" in {e.reason for e in events_for(core, namespace, "a")}


async def test_learner_reconnect_within_ttl_keeps_the_same_dispatch(stack_env, custom, namespace, lk) -> None:
    room = room_name()
    dispatch_id = create(custom, namespace, "a", room, ttlSeconds=30)["status"]["dispatchId"]
    learner = await Learner(stack_env, room).join()
    try:
        active = wait_phase(custom, namespace, "a", "Active", timeout=15)
        assert active["status"]["participants"] == 1 and active["status"].get("expiresAt") is None
        await learner.leave()
        idle = wait_phase(custom, namespace, "a", "Idle", timeout=15)
        assert idle["status"]["expiresAt"] and idle["status"]["participants"] == 0
        await learner.join()
        back = wait_phase(custom, namespace, "a", "Active", timeout=15)
        assert back["status"].get("expiresAt") is None and back["status"].get("idleSince") is None
        assert back["status"]["dispatchId"] == dispatch_id
        assert [d.id for d in await live_dispatches(lk, room, "tutor")] == [dispatch_id]
    finally:
        await learner.leave()


async def test_expiry_after_the_last_learner_leaves(stack_env, custom, namespace, lk) -> None:
    room = room_name()
    create(custom, namespace, "a", room, ttlSeconds=5)
    learner = await Learner(stack_env, room).join()
    try:
        wait_phase(custom, namespace, "a", "Active", timeout=15)
        time.sleep(7)  # longer than the TTL: with a learner present nothing expires
        assert get_ad(custom, namespace, "a")["status"]["phase"] == "Active"
    finally:
        await learner.leave()
    idle = wait_phase(custom, namespace, "a", "Idle", timeout=15)
    left_at = idle["status"]["idleSince"]
    wait_gone(custom, namespace, "a", timeout=5 + 2 + 15)
    assert await live_dispatches(lk, room) == []
    assert left_at


async def test_agent_name_without_worker_is_redispatched_with_backoff(stack_env, custom, core, namespace, lk) -> None:
    room = room_name()
    create(custom, namespace, "a", room, agent="ghost", ttlSeconds=600)
    learner = await Learner(stack_env, room).join()
    try:
        started = time.monotonic()
        most = 0
        while time.monotonic() - started < 40:
            most = max(most, len(await live_dispatches(lk, room, "ghost")))
            time.sleep(0.25)
        status = get_ad(custom, namespace, "a")["status"]
    finally:
        await learner.leave()
    assert most == 1, "never two dispatches of the agent at once"
    # grace 4 s, then backoff 4, 8, 16 s: re-dispatches at about 4, 8, 16, 32 s into the 40 s window.
    assert 2 <= status["redispatches"] <= 5, status["redispatches"]
    cond = next(c for c in status["conditions"] if c["type"] == "AgentPresent")
    assert cond["status"] == "False" and cond["reason"] == "NoAgentAnswering"
    assert status["agentPresent"] is False
    reasons = [e.reason for e in events_for(core, namespace, "a")]
    assert "Redispatched" in reasons


async def test_orphans_of_managed_names_are_removed_others_kept(lk) -> None:
    managed_room, other_room = room_name(), room_name()
    for r in (managed_room, other_room):
        await lk.room.create_room(api.CreateRoomRequest(name=r, empty_timeout=600))
    orphan = await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="tutor", room=managed_room)
    )
    stranger = await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="somebody-else", room=other_room)
    )
    keep_too = await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="somebody-else", room=managed_room)
    )
    # orphan grace 3 s + one re-check period + a sweep
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and await live_dispatches(lk, managed_room, "tutor"):
        time.sleep(0.5)
    assert await live_dispatches(lk, managed_room, "tutor") == [], f"orphan {orphan.id} still there"
    assert [d.id for d in await live_dispatches(lk, other_room)] == [stranger.id]
    assert [d.id for d in await live_dispatches(lk, managed_room, "somebody-else")] == [keep_too.id]


def test_forged_webhook_is_refused(stack_env, operator) -> None:
    url = f"http://127.0.0.1:{stack_env['WEBHOOK_PORT']}/webhooks/livekit"
    before = metric(operator, 'loqua_operator_webhook_events_total{event="unknown",verdict="rejected"}')
    forged_token = (
        api.AccessToken(stack_env["LIVEKIT_API_KEY"], "not-the-secret-at-all-but-long-enough")
        .with_sha256("AAAA")
        .to_jwt()
    )
    body = b'{"event":"participant_joined","room":{"name":"x"}}'
    for auth in ("", "Bearer nonsense", forged_token):
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Authorization": auth, "Content-Type": "application/webhook+json"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
    after = metric(operator, 'loqua_operator_webhook_events_total{event="unknown",verdict="rejected"}')
    assert after - before == 3


async def test_real_webhooks_are_accepted(stack_env, custom, namespace, operator) -> None:
    room = room_name()
    create(custom, namespace, "a", room, ttlSeconds=60)
    before = metric(operator, 'loqua_operator_webhook_events_total{event="participant_joined",verdict="accepted"}')
    learner = await Learner(stack_env, room).join()
    try:
        wait_phase(custom, namespace, "a", "Active", timeout=15)
        wait_for(
            lambda: (
                metric(operator, 'loqua_operator_webhook_events_total{event="participant_joined",verdict="accepted"}')
                > before
            ),
            "participant_joined webhook",
            10,
        )
    finally:
        await learner.leave()
