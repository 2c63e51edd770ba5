"""Pure lifecycle decisions over time: learners, TTL, agent presence, re-dispatch, orphans.

Inputs are what LiveKit showed (one room's learners and agents) and what the object's status says;
outputs are a status patch (only what changed) and the actions to take. No I/O here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loqua_operator.model import AgentDispatch, DispatchKey, ObservedDispatch
from loqua_operator.status import Phase, condition, iso, parse_iso

AGENT_PRESENT = "AgentPresent"
AGENT_NAME_ATTRIBUTE = "lk.agent_name"
MAX_REDISPATCH_BACKOFF = 600.0


@dataclass(frozen=True)
class RoomView:
    """One room as LiveKit shows it. ``agents`` is None when presence was not looked up.

    ``seen`` is the monotonic time the question was asked: a reconcile never applies a view older than
    one it already applied to the same object (a sweep's snapshot must not undo a webhook's news).
    """

    exists: bool
    sid: str = ""
    learners: int = 0
    agents: frozenset[str] | None = None
    seen: float = 0.0

    def agent_present(self, agent_name: str) -> bool | None:
        return None if self.agents is None else agent_name in self.agents


GONE = RoomView(exists=False)


def room_view_from_participants(sid: str, participants: Iterable[Any], seen: float = 0.0) -> RoomView:
    """Learners are participants that are not agents (``ParticipantInfo.kind != AGENT``)."""
    from livekit.api import ParticipantInfo

    learners = 0
    agents: set[str] = set()
    for p in participants:
        if p.kind == ParticipantInfo.Kind.AGENT:
            agents.add(dict(p.attributes).get(AGENT_NAME_ATTRIBUTE, ""))
        else:
            learners += 1
    return RoomView(exists=True, sid=sid, learners=learners, agents=frozenset(agents), seen=seen)


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
    obj: AgentDispatch,
    room: RoomView,
    now: dt.datetime,
    presence_grace_seconds: float,
    max_redispatches: int,
) -> LifecycleDecision:
    """The next step for one object given its room. Writes only what changed: no heartbeat fields."""
    out = LifecycleDecision()
    if not obj.bound:
        # Never bound (Failed, or not reconciled yet): the TTL still ends it, counted from creation.
        expires = obj.created + dt.timedelta(seconds=obj.spec.ttl_seconds)
        if now >= expires and not (room.exists and room.learners > 0):
            out.expire = True
            out.events.append(
                (
                    "Normal",
                    "Expired",
                    f"never bound to a dispatch; TTL of {obj.spec.ttl_seconds} s since creation reached",
                )
            )
        return out
    st = obj.status
    patch = out.status
    gen = obj.generation
    conds = list(st.get("conditions") or [])
    agent = obj.key.agent_name

    def setf(key: str, value: Any) -> None:
        if st.get(key) != value:
            patch[key] = value

    if room.exists and room.learners > 0:
        if st.get("phase") != Phase.ACTIVE or st.get("participants") != room.learners:
            patch["lastActivityTime"] = iso(now)  # a transition: learners came, or their number changed
        setf("phase", Phase.ACTIVE.value)
        setf("participants", room.learners)
        setf("idleSince", None)
        setf("expiresAt", None)
        if st.get("roomSid") and room.sid and st["roomSid"] != room.sid:
            # LiveKit closed the room (dropping its dispatches) and a learner brought it back. Not a dead
            # agent: the re-dispatch budget is not touched.
            out.rebind = True
            out.events.append(
                ("Normal", "RoomReopened", f"room {obj.key.room} was closed and reopened; binding a fresh dispatch")
            )
            return out
        present = room.agent_present(agent)
        if present is True:
            setf("agentPresent", True)
            setf("agentAbsentSince", None)
            setf("agentLeftTime", None)
            if st.get("redispatches"):
                patch["redispatches"] = 0  # an agent that is back restores the budget
            new = condition(conds, AGENT_PRESENT, True, "AgentJoined", f"agent {agent} is in the room", gen, now)
            if new != conds:
                patch["conditions"] = new
        elif present is False:
            setf("agentPresent", False)
            absent_since = parse_iso(st.get("agentAbsentSince")) or now
            setf("agentAbsentSince", iso(absent_since))
            redispatches = int(st.get("redispatches") or 0)
            # The grace is for an agent that was dispatched and has not arrived yet: it runs from the
            # dispatch. An agent that was here and left (gave up waiting, ended, crashed) is not coming.
            left = bool(st.get("agentLeftTime")) or st.get("agentPresent") is True
            dispatched = parse_iso(st.get("dispatchedAt")) or absent_since
            last = parse_iso(st.get("lastRedispatchTime"))
            backoff = redispatch_backoff(presence_grace_seconds, redispatches - 1) if redispatches else 0.0
            waited = last is None or (now - last).total_seconds() >= backoff
            due = left or (now - dispatched).total_seconds() >= presence_grace_seconds
            message = (
                f"no agent named {agent} is in room {obj.key.room} while learners wait; "
                f"re-dispatched {redispatches} time(s)"
            )
            if due and waited and redispatches < max_redispatches:
                out.redispatch = True
                patch["redispatches"] = redispatches + 1
                patch["lastRedispatchTime"] = iso(now)
                patch["dispatchedAt"] = iso(now)  # the new dispatch gets its own grace period
                patch["agentAbsentSince"] = iso(now)
                setf("agentLeftTime", None)
                why = "the agent left" if left else f"no agent within {presence_grace_seconds:.0f} s of dispatch"
                out.events.append(("Warning", "Redispatched", f"{message}; {why}: replacing the dispatch"))
                message = (
                    f"no agent named {agent} is in room {obj.key.room} while learners wait; "
                    f"re-dispatched {redispatches + 1} time(s)"
                )
            new = condition(conds, AGENT_PRESENT, False, "NoAgentAnswering", message, gen, now)
            if new != conds:
                patch["conditions"] = new
        return out

    # No learner: the TTL clock runs from when the last one left (or from creation). A room that
    # never saw a learner stays Dispatched (waiting for the first one); Idle means they came and left.
    if int(st.get("participants") or 0) > 0:
        patch["lastActivityTime"] = iso(now)  # the last learner left: a transition
    if st.get("lastActivityTime") or "lastActivityTime" in patch:
        setf("phase", Phase.IDLE.value)
    setf("participants", 0)
    setf("agentAbsentSince", None)
    if room.agents is not None:
        present = room.agent_present(agent)
        if present is False and st.get("agentPresent") is True:
            patch["agentLeftTime"] = iso(now)  # remembered: a learner who comes now is served at once
        setf("agentPresent", present)
    idle_since = parse_iso(st.get("idleSince"))
    if idle_since is None:
        idle_since = now if (st.get("lastActivityTime") or "lastActivityTime" in patch) else obj.created
        patch["idleSince"] = iso(idle_since)
    expires = idle_since + dt.timedelta(seconds=obj.spec.ttl_seconds)
    setf("expiresAt", iso(expires))
    if now >= expires:
        out.expire = True
        out.events.append(
            (
                "Normal",
                "Expired",
                f"no learner since {iso(idle_since)}; TTL of "
                f"{obj.spec.ttl_seconds} s reached: deleting the dispatch and this object",
            )
        )
    return out


def quiet_room_status(
    obj: AgentDispatch, now: dt.datetime, presence_grace_seconds: float, max_redispatches: int
) -> dict[str, Any]:
    """What the first sweep would write for a just-bound object whose room shows no learner (learners 0,
    ``idleSince`` = creation, ``expiresAt``): written with the binding itself, so binding an object costs
    one status write, not two. A dispatch just created has no agent in the room yet (``agentPresent:
    false``, what the ``room_started`` webhook's look would find). Nothing when the status knows of
    learners (a look at the room decides)."""
    if int(obj.status.get("participants") or 0) > 0:
        return {}
    decision = decide(obj, RoomView(exists=True), now, presence_grace_seconds, max_redispatches)
    if decision.expire or decision.redispatch or decision.rebind:
        return {}  # acting is the sweep's business, with a fresh look at the room
    if obj.status.get("reused") is False and obj.status.get("agentPresent") is None:
        decision.status["agentPresent"] = False
    return decision.status


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


def rooms_needing_presence(
    objects: Iterable[AgentDispatch], learners_by_room: Mapping[str, int], sids: Mapping[str, str] | None = None
) -> set[str]:
    """Rooms worth a ListParticipants call: learners present and an agent not known to be there; or
    ``ListRooms`` says the learners are gone while the status says they are there; or the room is a new
    instance (another sid) that a learner may have reopened. ``Room.num_participants`` lags a join by
    seconds, so these transitions are confirmed from the participants themselves."""
    need = set()
    for o in objects:
        if not o.bound or o.key.room not in learners_by_room:
            continue
        learners = learners_by_room[o.key.room]
        sid = (sids or {}).get(o.key.room)
        reopened = bool(sid and o.status.get("roomSid") and sid != o.status["roomSid"])
        if (
            reopened
            or (learners > 0 and o.status.get("agentPresent") is not True)
            or (learners == 0 and int(o.status.get("participants") or 0) > 0)
        ):
            need.add(o.key.room)
    return need
