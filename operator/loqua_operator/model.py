"""Plain data the operator reasons about: what LiveKit shows and what an object asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class DispatchKey(NamedTuple):
    """One live LiveKit dispatch per (room, agent name) is the invariant the operator keeps."""

    room: str
    agent_name: str


class ObjectRef(NamedTuple):
    namespace: str
    name: str


@dataclass(frozen=True)
class ObservedDispatch:
    """A dispatch as ListDispatch returns it (LiveKit's state is a snapshot at assignment)."""

    id: str
    room: str
    agent_name: str
    metadata: str = ""
    created_at: int = 0  # LiveKit's state.created_at (nanoseconds since the epoch; 0 when unknown)

    @classmethod
    def from_livekit(cls, dispatch: object) -> ObservedDispatch:
        state = getattr(dispatch, "state", None)
        return cls(
            id=dispatch.id,  # type: ignore[attr-defined]
            room=dispatch.room,  # type: ignore[attr-defined]
            agent_name=dispatch.agent_name,  # type: ignore[attr-defined]
            metadata=dispatch.metadata,  # type: ignore[attr-defined]
            created_at=int(getattr(state, "created_at", 0) or 0),
        )


@dataclass(frozen=True)
class DispatchSpec:
    """The part of an AgentDispatch's spec the reconciler needs."""

    room: str
    agent_name: str
    metadata: str
    ttl_seconds: int

    @property
    def key(self) -> DispatchKey:
        return DispatchKey(self.room, self.agent_name)

    @classmethod
    def from_body(cls, spec: dict, default_ttl: int) -> DispatchSpec:
        ttl = spec.get("ttlSeconds")
        return cls(
            room=spec["room"],
            agent_name=spec["agentName"],
            metadata=spec.get("metadata") or "",
            ttl_seconds=default_ttl if ttl is None else int(ttl),
        )
