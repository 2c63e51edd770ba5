"""Pure lifecycle decisions over time: learners, TTL, agent presence, re-dispatch, orphans.

Inputs are what LiveKit showed (one room's learners and agents) and what the object's status says;
outputs are a status patch and the actions to take. No I/O here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loqua_operator.model import DispatchKey, ObservedDispatch
from loqua_operator.status import Phase, condition, iso, parse_iso

AGENT_PRESENT = "AgentPresent"
AGENT_NAME_ATTRIBUTE = "lk.agent_name"
MAX_REDISPATCH_BACKOFF = 600.0


@dataclass(frozen=True)
class RoomView:
    """One room as LiveKit shows it. ``agents`` is None when presence was not looked up."""

    exists: bool
    sid: str = ""
    learners: int = 0
    agents: frozenset[str] | None = None

    def agent_present(self, agent_name: str) -> bool | None:
        return None if self.agents is None else agent_name in self.agents


GONE = RoomView(exists=False)


def room_view_from_participants(sid: str, participants: Iterable[Any]) -> RoomView:
    """Learners are participants that are not agents (``ParticipantInfo.kind != AGENT``)."""
    from livekit.api import ParticipantInfo

    learners = 0
    agents: set[str] = set()
    for p in participants:
        if p.kind == ParticipantInfo.Kind.AGENT:
            agents.add(dict(p.attributes).get(AGENT_NAME_ATTRIBUTE, ""))
        else:
            learners += 1
    return RoomView(exists=True, sid=sid, learners=learners, agents=frozenset(agents))


@dataclass(frozen=True)
class ObjectView:
    """What the lifecycle needs of an AgentDispatch."""

    namespace: str
    name: str
    uid: str
    key: DispatchKey
    ttl_seconds: int
    created: dt.datetime
    status: Mapping[str, Any]
    generation: int = 0
    deleting: bool = False

    @property
    def bound(self) -> bool:
        return bool(self.status.get("dispatchId")) and self.status.get("phase") in (
            Phase.DISPATCHED,
            Phase.ACTIVE,
            Phase.IDLE,
        )


@dataclass
class LifecycleDecision:
    status: dict[str, Any] = field(default_factory=dict)  # only the fields that change
    expire: bool = False
    redispatch: bool = False
    rebind: bool = False  # the room was closed and is back: bind a fresh dispatch
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def redispatch_backoff(grace_seconds: float, redispatches: int) -> float:
    """Wait grace, 2 x grace, 4 x grace … (capped) between re-dispatches, so an agent name with no
    worker does not churn dispatches."""
    return min(MAX_REDISPATCH_BACKOFF, grace_seconds * (2 ** max(0, redispatches)))


def decide(
    obj: ObjectView,
    room: RoomView,
    now: dt.datetime,
    presence_grace_seconds: float,
    max_redispatches: int,
) -> LifecycleDecision:
    """The next step for one bound object given its room."""
    st = obj.status
    out = LifecycleDecision()
    patch = out.status
    gen = obj.generation
    conds = list(st.get("conditions") or [])

    def setf(key: str, value: Any) -> None:
        if st.get(key) != value:
            patch[key] = value

    if room.exists and room.learners > 0:
        setf("phase", Phase.ACTIVE.value)
        setf("participants", room.learners)
        patch["lastActivityTime"] = iso(now)
        setf("idleSince", None)
        setf("expiresAt", None)
        if st.get("roomSid") and room.sid and st["roomSid"] != room.sid:
            # LiveKit closed the room (dropping its dispatches) and a learner brought it back.
            out.rebind = True
            out.events.append(
                (
                    "Normal",
                    "RoomReopened",
                    f"room {obj.key.room} was closed and reopened; binding a fresh dispatch",
                )
            )
            return out
        present = room.agent_present(obj.key.agent_name)
        if present is True:
            setf("agentPresent", True)
            setf("agentAbsentSince", None)
            new = condition(
                conds,
                AGENT_PRESENT,
                True,
                "AgentJoined",
                f"agent {obj.key.agent_name} is in the room",
                gen,
                now,
            )
            if new != conds:
                patch["conditions"] = new
        elif present is False:
            setf("agentPresent", False)
            absent_since = parse_iso(st.get("agentAbsentSince")) or now
            setf("agentAbsentSince", iso(absent_since))
            absent_for = (now - absent_since).total_seconds()
            redispatches = int(st.get("redispatches") or 0)
            last = parse_iso(st.get("lastRedispatchTime"))
            backoff = redispatch_backoff(presence_grace_seconds, redispatches - 1) if redispatches else 0.0
            waited = last is None or (now - last).total_seconds() >= backoff
            message = (
                f"no agent named {obj.key.agent_name} has joined room {obj.key.room} for "
                f"{int(absent_for)} s while learners wait; re-dispatched {redispatches} time(s)"
            )
            if absent_for >= presence_grace_seconds and waited and redispatches < max_redispatches:
                out.redispatch = True
                patch["redispatches"] = redispatches + 1
                patch["lastRedispatchTime"] = iso(now)
                patch["agentAbsentSince"] = iso(now)  # give the new dispatch its own grace period
                out.events.append(("Warning", "Redispatched", message + "; replacing the dispatch"))
            new = condition(conds, AGENT_PRESENT, False, "NoAgentAnswering", message, gen, now)
            if new != conds:
                patch["conditions"] = new
        return out

    # No learner: the TTL clock runs from when the last one left (or from creation). A room that
    # never saw a learner stays Dispatched (waiting for the first one); Idle means they came and left.
    if st.get("lastActivityTime"):
        setf("phase", Phase.IDLE.value)
    setf("participants", 0)
    setf("agentAbsentSince", None)
    if room.agents is not None:
        setf("agentPresent", room.agent_present(obj.key.agent_name))
    idle_since = parse_iso(st.get("idleSince"))
    if idle_since is None:
        idle_since = now if st.get("lastActivityTime") else obj.created
        patch["idleSince"] = iso(idle_since)
    expires = idle_since + dt.timedelta(seconds=obj.ttl_seconds)
    setf("expiresAt", iso(expires))
    if now >= expires:
        out.expire = True
        out.events.append(
            (
                "Normal",
                "Expired",
                f"no learner since {iso(idle_since)}; TTL of "
                f"{obj.ttl_seconds} s reached: deleting the dispatch and this object",
            )
        )
    return out


def orphans(
    room: str,
    dispatches: Sequence[ObservedDispatch],
    referenced: set[DispatchKey],
    managed: set[str],
    now: dt.datetime,
    grace_seconds: float,
) -> list[ObservedDispatch]:
    """Dispatches of managed agent names that no object references and that are old enough."""
    cutoff_ns = int((now.timestamp() - grace_seconds) * 1e9)
    return [
        d
        for d in dispatches
        if d.agent_name in managed
        and DispatchKey(room, d.agent_name) not in referenced
        and 0 < d.created_at <= cutoff_ns
    ]


def rooms_needing_presence(objects: Iterable[ObjectView], learners_by_room: Mapping[str, int]) -> set[str]:
    """Rooms worth a ListParticipants call: learners present and an agent not known to be there."""
    return {
        o.key.room
        for o in objects
        if o.bound and learners_by_room.get(o.key.room, 0) > 0 and o.status.get("agentPresent") is not True
    }
