"""Lifecycle decisions over time (TTL, presence, re-dispatch, orphans): pure, with a fixed clock."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from loqua_operator import lifecycle
from loqua_operator.lifecycle import GONE, RoomView, decide
from loqua_operator.model import AgentDispatch, DispatchKey, DispatchSpec, ObjectRef, ObservedDispatch
from loqua_operator.status import iso

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
GRACE = 15.0


def view(name: str, room: str, ttl: int, status: dict[str, Any], created: dt.datetime = T0) -> AgentDispatch:
    return AgentDispatch(ObjectRef("ns", name), "uid-1", DispatchSpec(room, "tutor", "", ttl), created, status)


def obj(status: dict[str, Any] | None = None, ttl: int = 300, created: dt.datetime = T0) -> AgentDispatch:
    base = {"phase": "Dispatched", "dispatchId": "AD_1", "roomSid": "RM_1"}
    return view("a", "room", ttl, {**base, **(status or {})}, created)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def room(learners: int, agents: set[str] | None = None, sid: str = "RM_1") -> RoomView:
    return RoomView(True, sid, learners, None if agents is None else frozenset(agents))


def run(o: AgentDispatch, r: RoomView, seconds: float, max_redispatches: int = 10) -> lifecycle.LifecycleDecision:
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

    def test_steady_state_writes_nothing(self) -> None:
        """Learners and agent present, nothing changes: no field at all, sweep after sweep."""
        status: dict[str, Any] = {}
        writes = []
        for second in range(0, 600, 5):
            d = run(obj(status), room(2, {"tutor"}), second)
            writes.append(len(d.status))
            status = {k: v for k, v in {**status, **d.status}.items() if v is not None}
        assert writes[0] > 0 and writes[1:] == [0] * (len(writes) - 1)

    def test_last_activity_records_transitions_only(self) -> None:
        st = {"phase": "Active", "participants": 1, "lastActivityTime": iso(at(1)), "agentPresent": True}
        assert "lastActivityTime" not in run(obj(st), room(1, None), 50).status
        assert run(obj(st), room(2, None), 50).status["lastActivityTime"] == iso(at(50))  # count changed
        left = run(obj(st), room(0, None), 60).status
        assert left["lastActivityTime"] == iso(at(60)) and left["phase"] == "Idle" and left["idleSince"] == iso(at(60))

    def test_absent_agent_condition_message_does_not_tick(self) -> None:
        st: dict[str, Any] = {"dispatchedAt": iso(T0)}
        first = run(obj(st), room(1, set()), 1)
        st = {k: v for k, v in {**st, **first.status}.items() if v is not None}
        assert run(obj(st), room(1, set()), 5).status == {}


class TestPresence:
    def test_absent_agent_within_grace_waits(self) -> None:
        d = run(obj(), room(1, set()), 0)
        assert not d.redispatch and d.status["agentPresent"] is False
        assert d.status["agentAbsentSince"] == iso(T0)
        cond = next(c for c in d.status["conditions"] if c["type"] == "AgentPresent")
        assert cond["status"] == "False" and cond["reason"] == "NoAgentAnswering"

    def test_absent_past_grace_redispatches(self) -> None:
        d = run(obj({"agentAbsentSince": iso(T0), "dispatchedAt": iso(T0)}), room(1, {"other-agent"}), GRACE)
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
    b = view("b", "quiet", 300, {"phase": "Idle", "dispatchId": "x"})
    c = view("c", "busy", 300, {"phase": "Active", "dispatchId": "y"})
    need = lifecycle.rooms_needing_presence([a, b, c], {"room": 1, "quiet": 0, "busy": 3})
    assert need == {"busy"}


class TestLateLearner:
    def test_grace_runs_from_the_dispatch_not_from_the_learner(self) -> None:
        """Dispatched 35 s ago, no agent ever seen: a learner arriving now is served at once."""
        d = run(obj({"dispatchedAt": iso(T0)}), room(1, set()), 35)
        assert d.redispatch and d.status["redispatches"] == 1 and d.status["dispatchedAt"] == iso(at(35))

    def test_dispatched_recently_waits_out_the_grace(self) -> None:
        d = run(obj({"dispatchedAt": iso(at(30))}), room(1, set()), 35)
        assert not d.redispatch

    def test_agent_seen_leaving_is_replaced_at_once(self) -> None:
        # The agent joined (webhook) and left again before any learner came (it gave up waiting).
        st: dict[str, Any] = {"dispatchedAt": iso(at(30)), "agentPresent": True}
        left = run(obj(st), room(0, set()), 32)
        assert left.status["agentPresent"] is False and left.status["agentLeftTime"] == iso(at(32))
        st = {k: v for k, v in {**st, **left.status}.items() if v is not None}
        d = run(obj(st), room(1, set()), 33)  # well within the grace of the dispatch
        assert d.redispatch and d.status["agentLeftTime"] is None
        assert "the agent left" in d.events[0][2]

    def test_agent_back_restores_the_budget(self) -> None:
        d = run(obj({"redispatches": 4, "agentPresent": False}), room(1, {"tutor"}), 10)
        assert d.status["redispatches"] == 0 and d.status["agentPresent"] is True

    def test_room_reopened_does_not_use_the_budget(self) -> None:
        d = run(obj({"redispatches": 2}), room(1, {"tutor"}, sid="RM_2"), 10)
        assert d.rebind and not d.redispatch and "redispatches" not in d.status


class TestNeverBound:
    def unbound(self, ttl: int = 60) -> AgentDispatch:
        return view("f", "room", ttl, {"phase": "Failed", "lastError": "LiveKit CreateRoom failed: permission_denied"})

    def test_a_failed_object_expires_ttl_after_creation(self) -> None:
        assert not run(self.unbound(), GONE, 59).expire
        d = run(self.unbound(), GONE, 60)
        assert d.expire and d.events[0][1] == "Expired" and d.status == {}

    def test_not_while_learners_are_in_its_room(self) -> None:
        assert not run(self.unbound(), room(1), 600).expire


def test_a_learner_count_drop_is_confirmed_before_it_is_written() -> None:
    """ListRooms' num_participants lags a join by seconds: 0 there while the status says 1 asks for
    ListParticipants first, so a sweep never turns a room with a learner Idle on a stale count."""
    was_active = view("a", "busy", 300, {"phase": "Active", "dispatchId": "x", "participants": 1, "agentPresent": True})
    quiet = view("b", "quiet", 300, {"phase": "Idle", "dispatchId": "y", "participants": 0})
    assert lifecycle.rooms_needing_presence([was_active, quiet], {"busy": 0, "quiet": 0}) == {"busy"}
    assert lifecycle.rooms_needing_presence([was_active], {}) == set()  # the room is gone: nothing to ask


def test_a_reopened_room_is_looked_at_even_before_its_count_catches_up() -> None:
    bound = view("a", "r", 300, {"phase": "Idle", "dispatchId": "x", "roomSid": "RM_old", "participants": 0})
    assert lifecycle.rooms_needing_presence([bound], {"r": 0}, {"r": "RM_new"}) == {"r"}
    assert lifecycle.rooms_needing_presence([bound], {"r": 0}, {"r": "RM_old"}) == set()


class TestQuietRoomAtBind:
    """Binding writes what the first sweep of a quiet room would, so the sweep after it writes nothing."""

    def test_the_first_sweep_after_binding_writes_nothing(self) -> None:
        fresh = obj({"reused": False}, ttl=60)
        extra = lifecycle.quiet_room_status(fresh, at(1), GRACE, 10)
        assert extra == {"participants": 0, "idleSince": iso(T0), "expiresAt": iso(at(60)), "agentPresent": False}
        bound = fresh.with_status({**fresh.status, **extra})
        # What ListRooms shows of a quiet room, or of none; what room_started's ListParticipants finds.
        for r in (room(0), GONE, room(0, set())):
            assert run(bound, r, 30).status == {}
        reused = obj({"reused": True}, ttl=60)
        assert "agentPresent" not in lifecycle.quiet_room_status(reused, at(1), GRACE, 10)  # its agent may be there

    def test_learners_arriving_later_are_still_a_transition(self) -> None:
        fresh = obj(ttl=60)
        bound = fresh.with_status({**fresh.status, **lifecycle.quiet_room_status(fresh, at(1), GRACE, 10)})
        d = run(bound, room(1, {"tutor"}), 5)
        assert d.status["phase"] == "Active" and d.status["idleSince"] is None and d.status["expiresAt"] is None

    def test_nothing_when_the_status_knows_of_learners_or_the_ttl_is_up(self) -> None:
        assert lifecycle.quiet_room_status(obj({"participants": 2, "phase": "Active"}), at(1), GRACE, 10) == {}
        assert lifecycle.quiet_room_status(obj(ttl=60), at(61), GRACE, 10) == {}  # expiry: the sweep looks first
