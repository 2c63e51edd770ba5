"""The finalizer's release lets kopf remove the finalizer only while leadership is confirmed, even when
it made no LiveKit write (the dispatch is shared, or LiveKit lost it already)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from loqua_operator.dispatcher import Event, Outcome
from loqua_operator.leader import NotLeader, WriteGate
from loqua_operator.model import AgentDispatch, DispatchSpec, ObjectRef
from loqua_operator.reconciler import Reconciler


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class SharedDispatcher:
    """Finds the dispatch still used by another object: nothing to delete, no gated LiveKit call."""

    async def release(self, me: ObjectRef, spec: DispatchSpec, holders: Any) -> Outcome:
        return Outcome(events=[Event("Normal", "DispatchKept", "dispatch kept: still used by ns/b")])


@pytest.fixture(autouse=True)
def posted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Events the release posts (kopf's poster is not running in a unit test)."""
    reasons: list[str] = []
    monkeypatch.setattr("loqua_operator.reconciler.post_event", lambda obj, type_, reason, msg: reasons.append(reason))
    return reasons


def reconciler(gate: WriteGate) -> Reconciler:
    kube = SimpleNamespace(gate=gate)
    return Reconciler(None, SharedDispatcher(), kube, None, None, None)  # type: ignore[arg-type]


def obj() -> AgentDispatch:
    spec = DispatchSpec("room", "tutor", "", 300)
    return AgentDispatch(ObjectRef("ns", "a"), "uid-a", spec, dt.datetime(2026, 12, 2, tzinfo=dt.UTC), {})


async def test_release_succeeds_while_leading(posted: list[str]) -> None:
    clock = Clock()
    gate = WriteGate(elected=True, clock=clock)
    gate.confirm(clock.now)
    outcome = await reconciler(gate).release(obj())
    assert [e.reason for e in outcome.events] == posted == ["DispatchKept"]


async def test_release_is_refused_once_leadership_lapsed(posted: list[str]) -> None:
    clock = Clock()
    gate = WriteGate(elected=True, clock=clock)
    gate.confirm(clock.now)
    clock.now += gate.renew_deadline  # no renewal for the whole renew deadline
    with pytest.raises(NotLeader):
        await reconciler(gate).release(obj())  # kopf keeps the finalizer; the new leader releases
    assert posted == []
