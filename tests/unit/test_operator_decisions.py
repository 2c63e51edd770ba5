"""Reconcile decisions and status derivation: pure functions, no servers."""

from __future__ import annotations

import datetime as dt

import pytest

from loqua_operator import decisions, status
from loqua_operator.model import AgentDispatch, DispatchKey, DispatchSpec, ObjectRef, ObservedDispatch, SpecError

NOW = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


def d(id_: str, agent: str = "tutor", created: int = 0, room: str = "r1") -> ObservedDispatch:
    return ObservedDispatch(id=id_, room=room, agent_name=agent, created_at=created)


class TestPlanDispatch:
    def test_nothing_live_creates(self) -> None:
        plan = decisions.plan_dispatch("tutor", [], None, None)
        assert plan.create and plan.keep is None and not plan.reused and plan.delete == ()

    def test_default_dispatch_with_empty_name_is_ignored(self) -> None:
        plan = decisions.plan_dispatch("tutor", [d("AD_default", agent="")], None, None)
        assert plan.create and plan.delete == ()

    def test_other_agent_names_are_ignored(self) -> None:
        plan = decisions.plan_dispatch("tutor", [d("AD_x", agent="grammar")], None, None)
        assert plan.create and plan.delete == ()

    def test_existing_live_dispatch_is_reused(self) -> None:
        plan = decisions.plan_dispatch("tutor", [d("AD_1", created=5)], None, None)
        assert not plan.create and plan.keep and plan.keep.id == "AD_1" and plan.reused

    def test_duplicates_keep_most_recent(self) -> None:
        observed = [
            d("AD_old", created=1),
            d("AD_new", created=9),
            d("AD_mid", created=5),
            d("AD_dflt", agent=""),
        ]
        plan = decisions.plan_dispatch("tutor", observed, None, None)
        assert plan.keep and plan.keep.id == "AD_new"
        assert {x.id for x in plan.delete} == {"AD_old", "AD_mid"}
        assert plan.duplicates == 2

    def test_tie_on_created_at_is_stable(self) -> None:
        a = decisions.plan_dispatch("tutor", [d("AD_a"), d("AD_b")], None, None)
        b = decisions.plan_dispatch("tutor", [d("AD_b"), d("AD_a")], None, None)
        assert a.keep == b.keep

    @pytest.mark.parametrize("was_reused", [True, False])
    def test_reused_flag_is_kept_on_same_dispatch(self, was_reused: bool) -> None:
        plan = decisions.plan_dispatch("tutor", [d("AD_1")], "AD_1", was_reused)
        assert plan.reused is was_reused

    def test_switching_to_another_live_dispatch_counts_as_reuse(self) -> None:
        plan = decisions.plan_dispatch("tutor", [d("AD_2")], "AD_1", False)
        assert plan.keep and plan.keep.id == "AD_2" and plan.reused


class TestPlanRelease:
    key = DispatchKey("r1", "tutor")
    me = ObjectRef("ns", "a")

    def test_last_holder_deletes_all_of_ours(self) -> None:
        observed = [d("AD_1"), d("AD_2", created=3), d("AD_dflt", agent=""), d("AD_g", agent="grammar")]
        plan = decisions.plan_release(self.me, self.key, observed, [(self.me, True)])
        assert {x.id for x in plan.delete} == {"AD_1", "AD_2"} and plan.shared_with == ()

    def test_shared_dispatch_is_kept(self) -> None:
        other = ObjectRef("ns2", "b")
        plan = decisions.plan_release(self.me, self.key, [d("AD_1")], [(self.me, True), (other, False)])
        assert plan.delete == () and plan.shared_with == (other,)

    def test_other_holder_being_deleted_does_not_keep_it(self) -> None:
        other = ObjectRef("ns", "b")
        plan = decisions.plan_release(self.me, self.key, [d("AD_1")], [(self.me, True), (other, True)])
        assert [x.id for x in plan.delete] == ["AD_1"]

    def test_nothing_left_in_livekit_is_fine(self) -> None:
        plan = decisions.plan_release(self.me, self.key, [], [(self.me, True)])
        assert plan.delete == () and plan.shared_with == ()


def test_retry_delay_grows_and_caps() -> None:
    delays = [decisions.retry_delay(i, base=10, cap=120) for i in range(6)]
    assert delays == [10, 20, 40, 80, 120, 120]


class TestStatus:
    def test_dispatched_status_shape(self) -> None:
        s = status.dispatched_status({}, "AD_1", False, 3, NOW)
        assert s["phase"] == "Dispatched" and s["dispatchId"] == "AD_1" and s["reused"] is False
        assert s["observedGeneration"] == 3 and s["lastError"] is None
        conds = {c["type"]: c for c in s["conditions"]}
        assert conds["Ready"]["status"] == "True" and conds["Dispatched"]["reason"] == "DispatchCreated"
        for c in s["conditions"]:
            assert set(c) == {
                "type",
                "status",
                "reason",
                "message",
                "lastTransitionTime",
                "observedGeneration",
            }
            assert c["lastTransitionTime"] == "2026-11-21T12:00:00Z" and c["observedGeneration"] == 3

    def test_transition_time_moves_only_on_change(self) -> None:
        first = status.dispatched_status({}, "AD_1", True, 1, NOW)
        later = NOW + dt.timedelta(minutes=5)
        again = status.dispatched_status(first, "AD_1", True, 2, later)
        ready = next(c for c in again["conditions"] if c["type"] == "Ready")
        assert ready["lastTransitionTime"] == "2026-11-21T12:00:00Z" and ready["observedGeneration"] == 2
        failed = status.failed_status(again, "LiveKit down", "LiveKitError", 2, later)
        ready = next(c for c in failed["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["lastTransitionTime"] == "2026-11-21T12:05:00Z"
        assert ready["message"] == "LiveKit down" and failed["phase"] == "Failed"

    def test_failed_without_dispatch_marks_dispatched_false(self) -> None:
        s = status.failed_status({}, "boom", "LiveKitError", 1, NOW)
        conds = {c["type"]: c["status"] for c in s["conditions"]}
        assert conds == {"Ready": "False", "Dispatched": "False"} and s["lastError"] == "boom"

    def test_lifecycle_phase_survives_rebind_to_same_dispatch(self) -> None:
        current = {"phase": "Active", "dispatchId": "AD_1"}
        assert status.dispatched_status(current, "AD_1", False, 1, NOW)["phase"] == "Active"
        assert status.dispatched_status(current, "AD_2", True, 1, NOW)["phase"] == "Dispatched"


def test_spec_default_ttl() -> None:
    s = DispatchSpec.from_body({"room": "r", "agentName": "a"}, default_ttl=300)
    assert s.ttl_seconds == 300 and s.metadata == "" and s.key == DispatchKey("r", "a")
    assert DispatchSpec.from_body({"room": "r", "agentName": "a", "ttlSeconds": 0}, 300).ttl_seconds == 0


def test_agent_dispatch_is_parsed_once_with_a_clear_error() -> None:
    body = {
        "metadata": {
            "namespace": "ns",
            "name": "a",
            "uid": "u1",
            "resourceVersion": "7",
            "generation": 2,
            "creationTimestamp": "2026-11-21T12:00:00Z",
        },
        "spec": {"room": "r", "agentName": "tutor", "ttlSeconds": 30},
        "status": {"phase": "Dispatched", "dispatchId": "AD_1"},
    }
    obj = AgentDispatch.from_body(body, 300)
    assert obj.ref == ObjectRef("ns", "a") and obj.key == DispatchKey("r", "tutor") and obj.spec.ttl_seconds == 30
    assert obj.bound and obj.resource_version == "7" and obj.generation == 2 and obj.created == NOW
    with pytest.raises(SpecError, match=r"spec\.room and spec\.agentName are required"):
        AgentDispatch.from_body({"metadata": {"name": "x"}, "spec": {"room": "r"}}, 300)


def test_a_replacement_made_by_a_sharing_object_is_adopted() -> None:
    observed = [d("AD_dead", created=1), d("AD_new", created=5), d("AD_x", agent="other", created=9)]
    assert decisions.replacement_of("tutor", observed, "AD_dead").id == "AD_new"
    assert decisions.replacement_of("tutor", [d("AD_dead", created=1)], "AD_dead") is None  # replace it
    assert decisions.replacement_of("tutor", observed, None) is None


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        ("invalid_argument", 400, ("invalid_argument", False)),
        ("permission_denied", 403, ("permission_denied", False)),
        ("unauthenticated", 401, ("unauthenticated", False)),
        ("unknown", 401, ("unauthenticated", False)),  # livekit-server's bare 401 for a wrong key
        ("failed_precondition", 412, ("failed_precondition", False)),
        ("unavailable", 503, ("unavailable", True)),
        ("internal", 500, ("internal", True)),
        ("deadline_exceeded", 504, ("deadline_exceeded", True)),
        ("not_found", 404, ("not_found", False)),  # callers that expect it (a gone dispatch) handle it
        (None, 502, ("unknown", True)),
    ],
)
def test_livekit_errors_are_classified_retryable_or_permanent(code, http_status, expected) -> None:  # type: ignore[no-untyped-def]
    from loqua_operator.livekit_gateway import classify

    assert classify(code, http_status) == expected
