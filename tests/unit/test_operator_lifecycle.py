"""Lifecycle decisions over time (TTL, presence, re-dispatch, orphans): pure, with a fixed clock."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from loqua_operator import lifecycle
from loqua_operator.lifecycle import GONE, ObjectView, RoomView, decide
from loqua_operator.model import DispatchKey, ObservedDispatch
from loqua_operator.status import iso

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
GRACE = 15.0


def obj(status: dict[str, Any] | None = None, ttl: int = 300, created: dt.datetime = T0) -> ObjectView:
    base = {"phase": "Dispatched", "dispatchId": "AD_1", "roomSid": "RM_1"}
    return ObjectView("ns", "a", "uid-1", DispatchKey("room", "tutor"), ttl, created, {**base, **(status or {})})


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def room(learners: int, agents: set[str] | None = None, sid: str = "RM_1") -> RoomView:
    return RoomView(True, sid, learners, None if agents is None else frozenset(agents))


def run(o: ObjectView, r: RoomView, seconds: float, max_redispatches: int = 10) -> lifecycle.LifecycleDecision:
    return decide(o, r, at(seconds), GRACE, max_redispatches)


class TestLearners:
    def test_learners_make_it_active(self) -> None:
        d = run(obj(), room(2, {"tutor"}), 5)
        assert d.status["phase"] == "Active" and d.status["participants"] == 2
        assert d.status["lastActivityTime"] == iso(at(5)) and d.status["agentPresent"] is True
        assert not (d.expire or d.redispatch or d.rebind)

    def test_no_learner_ever_expires_ttl_after_creation(self) -> None:
        d = run(obj(ttl=60), room(0), 30)
        assert "phase" not in d.status  # stays Dispatched: waiting for the first learner
        assert d.status["idleSince"] == iso(T0)
        assert d.status["expiresAt"] == iso(at(60)) and not d.expire
        assert run(obj({"idleSince": iso(T0)}, ttl=60), room(0), 60).expire

    def test_last_learner_leaving_starts_the_clock_once(self) -> None:
        active = obj({"phase": "Active", "lastActivityTime": iso(at(10))}, ttl=60)
        d = run(active, room(0), 20)
        assert (
            d.status["phase"] == "Idle"
            and d.status["idleSince"] == iso(at(20))
            and d.status["expiresAt"] == iso(at(80))
        )
        idle = obj({"phase": "Idle", "lastActivityTime": iso(at(10)), "idleSince": iso(at(20))}, ttl=60)
        d = run(idle, room(0), 50)
        assert "idleSince" not in d.status  # set once, not moved
        assert not d.expire and run(idle, room(0), 80).expire

    def test_learner_returning_before_expiry_clears_ttl_and_keeps_dispatch(self) -> None:
        idle = obj({"phase": "Idle", "idleSince": iso(at(20)), "expiresAt": iso(at(80))}, ttl=60)
        d = run(idle, room(1), 70)
        assert d.status["idleSince"] is None and d.status["expiresAt"] is None
        assert d.status["phase"] == "Active" and not (d.rebind or d.redispatch or d.expire)
        assert "dispatchId" not in d.status

    def test_closed_room_counts_as_no_learner(self) -> None:
        d = run(obj({"phase": "Active", "lastActivityTime": iso(at(1))}, ttl=30), GONE, 10)
        assert d.status["phase"] == "Idle" and d.status["expiresAt"] == iso(at(40))

    def test_room_reopened_by_a_learner_gets_a_fresh_dispatch(self) -> None:
        d = run(obj({"phase": "Idle", "idleSince": iso(T0)}), room(1, sid="RM_2"), 30)
        assert d.rebind and not d.redispatch
        assert d.events[0][:2] == ("Normal", "RoomReopened")

    def test_unchanged_state_writes_nothing_but_activity(self) -> None:
        st = {"phase": "Active", "participants": 1, "agentPresent": True}
        d = run(obj(st), room(1, None), 5)
        assert set(d.status) == {"lastActivityTime"}


class TestPresence:
    def test_absent_agent_within_grace_waits(self) -> None:
        d = run(obj(), room(1, set()), 0)
        assert not d.redispatch and d.status["agentPresent"] is False
        assert d.status["agentAbsentSince"] == iso(T0)
        cond = next(c for c in d.status["conditions"] if c["type"] == "AgentPresent")
        assert cond["status"] == "False" and cond["reason"] == "NoAgentAnswering"

    def test_absent_past_grace_redispatches(self) -> None:
        d = run(obj({"agentAbsentSince": iso(T0)}), room(1, {"other-agent"}), GRACE)
        assert d.redispatch and d.status["redispatches"] == 1
        assert d.status["lastRedispatchTime"] == iso(at(GRACE)) and d.events[0][1] == "Redispatched"

    def test_redispatches_back_off_and_are_bounded(self) -> None:
        """An agent name with no worker: count re-dispatches over 30 simulated minutes."""
        status: dict[str, Any] = {}
        times = []
        for second in range(0, 1800, 5):
            d = run(obj(status), room(1, set()), second, max_redispatches=6)
            status = {k: v for k, v in {**status, **d.status}.items() if v is not None}
            if d.redispatch:
                times.append(second)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) == 6  # the cap
        assert all(later >= earlier for earlier, later in itertools.pairwise(gaps))  # backoff grows
        assert gaps[0] >= GRACE

    def test_agent_joining_clears_absence(self) -> None:
        d = run(obj({"agentAbsentSince": iso(T0), "agentPresent": False}), room(1, {"tutor"}), 10)
        assert d.status["agentPresent"] is True and d.status["agentAbsentSince"] is None and not d.redispatch

    def test_no_self_healing_without_learners(self) -> None:
        d = run(obj({"agentAbsentSince": iso(T0)}), room(0, set()), 100)
        assert not d.redispatch and d.status["agentAbsentSince"] is None


def test_backoff_caps() -> None:
    assert lifecycle.redispatch_backoff(15, 0) == 15 and lifecycle.redispatch_backoff(15, 3) == 120
    assert lifecycle.redispatch_backoff(15, 20) == lifecycle.MAX_REDISPATCH_BACKOFF


def test_orphans_only_unreferenced_managed_and_old() -> None:
    old = int((T0.timestamp() - 600) * 1e9)
    new = int((T0.timestamp() - 5) * 1e9)
    ds = [
        ObservedDispatch("AD_orphan", "r", "tutor", created_at=old),
        ObservedDispatch("AD_young", "r", "tutor", created_at=new),
        ObservedDispatch("AD_unmanaged", "r", "someone-else", created_at=old),
        ObservedDispatch("AD_default", "r", "", created_at=old),
        ObservedDispatch("AD_ref", "r", "grammar", created_at=old),
    ]
    found = lifecycle.orphans("r", ds, {DispatchKey("r", "grammar")}, {"tutor", "grammar"}, T0, 120)
    assert [d.id for d in found] == ["AD_orphan"]


def test_presence_lookups_only_where_needed() -> None:
    a = obj({"agentPresent": True})
    b = ObjectView("ns", "b", "u", DispatchKey("quiet", "tutor"), 300, T0, {"phase": "Idle", "dispatchId": "x"})
    c = ObjectView("ns", "c", "u", DispatchKey("busy", "tutor"), 300, T0, {"phase": "Active", "dispatchId": "y"})
    need = lifecycle.rooms_needing_presence([a, b, c], {"room": 1, "quiet": 0, "busy": 3})
    assert need == {"busy"}
