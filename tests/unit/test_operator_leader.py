"""Leader election (client-go semantics) and the write gate: pure, with fixed clocks."""

from __future__ import annotations

import pytest

from loqua_operator.leader import (
    LEASE_DURATION,
    RENEW_DEADLINE,
    LeaseAction,
    LeaseRecord,
    NotLeader,
    WriteGate,
    decide,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held_by(holder: str | None, renew: str = "2026-11-21T12:00:00Z") -> LeaseRecord:
    return LeaseRecord(holder=holder, renew_time=renew, duration_seconds=15)


class TestDecide:
    def test_no_lease_creates(self) -> None:
        assert decide(None, "me", None, 0) is LeaseAction.CREATE

    def test_own_lease_renews(self) -> None:
        assert decide(held_by("me"), "me", 0, 100) is LeaseAction.RENEW

    def test_expiry_is_judged_from_our_own_observation_not_the_holders_clock(self) -> None:
        # The holder's renewTime says "an hour ago" (its clock is off): we still wait a full lease
        # duration from when we first saw this record.
        record = held_by("other", renew="2026-11-21T11:00:00Z")
        assert decide(record, "me", observed_at=50.0, now=50.0 + 14.9) is LeaseAction.WAIT
        assert decide(record, "me", observed_at=50.0, now=50.0 + 15.0) is LeaseAction.TAKE_OVER

    def test_released_lease_is_taken_over(self) -> None:
        assert decide(held_by(None), "me", 0, 0) is LeaseAction.TAKE_OVER


class TestWriteGate:
    def test_open_only_within_the_renew_deadline_of_the_last_confirmation(self) -> None:
        clock = Clock()
        gate = WriteGate(elected=True, clock=clock)
        assert not gate.is_open()
        with pytest.raises(NotLeader):
            gate.check("CreateDispatch")
        gate.confirm(clock.now)
        clock.now += RENEW_DEADLINE - 0.01
        assert gate.is_open()
        # A write started now may take only what is left of the Lease.
        assert gate.check("CreateDispatch") == pytest.approx(LEASE_DURATION - RENEW_DEADLINE + 0.01)
        clock.now += 0.02
        assert not gate.is_open()  # closes by itself: no renewing task needs to notice
        with pytest.raises(NotLeader, match="leadership not confirmed"):
            gate.check("DeleteDispatch")
        assert gate.refused == 2

    def test_confirmation_never_moves_backwards_and_revoke_closes(self) -> None:
        clock = Clock()
        gate = WriteGate(elected=True, clock=clock)
        gate.confirm(clock.now)
        gate.confirm(clock.now - 30)  # a slow, older renewal answered late
        assert gate.is_open()
        gate.revoke()
        assert not gate.is_open()

    def test_without_leader_election_always_open(self) -> None:
        gate = WriteGate(elected=False)
        assert gate.is_open() and gate.check("x") == float("inf")


def test_no_overlap_between_a_stalled_holder_and_a_standby() -> None:
    """Holder A's last renewal is sent at t=0 and written at t=0.3; standby B sees it at t=1.9
    (its next poll). A's gate closes at 10 s; a write A starts at 9.99 s is allowed at most
    5.01 s, so it ends by 15 s; B may take over at 1.9 + 15 s. Overlap: none."""
    clock = Clock()
    t0 = clock.now
    gate_a = WriteGate(elected=True, clock=clock)
    gate_a.confirm(t0)
    record = held_by("a")
    b_observed = t0 + 1.9
    last_write_end = None
    takeover = None
    for step in range(0, 2500):
        clock.now = t0 + step / 100
        if gate_a.is_open():
            last_write_end = clock.now + gate_a.remaining()
        if takeover is None and decide(record, "b", b_observed, clock.now) is LeaseAction.TAKE_OVER:
            takeover = clock.now
    assert last_write_end is not None and takeover is not None
    assert takeover - last_write_end >= 0, (takeover, last_write_end)


class FakeLeases:
    """An in-memory Lease store with the Kube client's (synchronous) Lease calls."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self._ns = SimpleNamespace
        self.lease = None
        self.writes = 0
        self.fail = False

    def _obj(self, body, version):  # type: ignore[no-untyped-def]
        spec = body["spec"]
        return self._ns(
            spec=self._ns(
                holder_identity=spec.get("holderIdentity"),
                renew_time=spec.get("renewTime"),
                acquire_time=spec.get("acquireTime"),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                lease_transitions=spec.get("leaseTransitions"),
            ),
            metadata=self._ns(resource_version=str(version)),
        )

    def read_lease(self, namespace, name, timeout=5.0):  # type: ignore[no-untyped-def]
        if self.fail:
            raise TimeoutError("partitioned")
        return self.lease

    def create_lease(self, namespace, body, timeout=5.0):  # type: ignore[no-untyped-def]
        self.writes += 1
        self.lease = self._obj(body, self.writes)
        return self.lease

    def replace_lease(self, namespace, name, body, timeout=5.0):  # type: ignore[no-untyped-def]
        return self.create_lease(namespace, body, timeout)


async def test_renewals_go_on_while_the_event_loop_is_blocked() -> None:
    """A burst can keep the event loop busy for seconds: renewals run on their own thread and confirm
    the gate from there, so leadership survives it; a partition still closes the gate and ends keep()."""
    import asyncio
    import time

    from loqua_operator.leader import LeaderElector

    leases = FakeLeases()
    gate = WriteGate(elected=True, renew_deadline=1.0, lease_duration=1.5)
    elector = LeaderElector(leases, gate, "ns", "lease", "me", lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)
    await elector.acquire()
    keeper = asyncio.create_task(elector.keep())
    await asyncio.sleep(0)  # the renewal thread starts
    before = leases.writes
    time.sleep(2.5)  # the loop does nothing for 2.5 renew deadlines
    assert gate.is_open() and leases.writes >= before + 10
    leases.fail = True
    reason = await asyncio.wait_for(keeper, 5)
    assert "renew deadline" in reason and not gate.is_open()
