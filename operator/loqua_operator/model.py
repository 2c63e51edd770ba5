"""Plain data the operator reasons about: what LiveKit shows and what an object asks for."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from loqua_common import timefmt


class DispatchKey(NamedTuple):
    """One live LiveKit dispatch per (room, agent name) is the invariant the operator keeps."""

    room: str
    agent_name: str


class ObjectRef(NamedTuple):
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
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

    @property
    def key(self) -> DispatchKey:
        return DispatchKey(self.room, self.agent_name)


@dataclass(frozen=True, slots=True)
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
    def from_body(cls, spec: Mapping[str, Any], default_ttl: int) -> DispatchSpec:
        if not spec.get("room") or not spec.get("agentName"):
            # The CRD schema refuses these; only a CRD installed without its schema gets here.
            raise SpecError("spec.room and spec.agentName are required (is the CRD from deploy/crds/ installed?)")
        ttl = spec.get("ttlSeconds")
        return cls(
            room=str(spec["room"]),
            agent_name=str(spec["agentName"]),
            metadata=str(spec.get("metadata") or ""),
            ttl_seconds=default_ttl if ttl is None else int(ttl),
        )


class SpecError(ValueError):
    """An AgentDispatch whose spec cannot be acted on (says what is wrong and what to do)."""


BOUND_PHASES = ("Dispatched", "Active", "Idle")


SHARED_STRING_MAX = 40  # keys, phases, reasons, timestamps: the same few values across thousands of objects


def compact(value: Any) -> Any:
    """A copy of parsed JSON whose keys and short strings are interned: one copy of ``"lastTransitionTime"``,
    ``"DispatchLive"`` or a timestamp for every object that has it, not one each (~1.6 KiB per status)."""
    if isinstance(value, str):
        return sys.intern(value) if len(value) <= SHARED_STRING_MAX else value
    if isinstance(value, dict):
        return {sys.intern(k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def _parse_time(value: object) -> dt.datetime | None:
    return timefmt.parse_iso(str(value)) if value else None


@dataclass(frozen=True, slots=True)
class AgentDispatch:
    """One AgentDispatch object, parsed once from its body and used everywhere (immutable)."""

    ref: ObjectRef
    uid: str
    spec: DispatchSpec
    created: dt.datetime
    status: Mapping[str, Any] = field(default_factory=dict)
    resource_version: str = ""
    generation: int = 0
    deleting: bool = False

    @property
    def key(self) -> DispatchKey:
        return self.spec.key

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def bound(self) -> bool:
        return bool(self.status.get("dispatchId")) and self.status.get("phase") in BOUND_PHASES

    @property
    def body(self) -> dict[str, Any]:
        """What kopf.event needs to name the object."""
        return {
            "apiVersion": "agents.loqua.app/v1alpha1",
            "kind": "AgentDispatch",
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }

    def with_status(self, status: Mapping[str, Any], resource_version: str | None = None) -> AgentDispatch:
        return replace(self, status=dict(status), resource_version=resource_version or self.resource_version)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], default_ttl: int) -> AgentDispatch:
        """Parse a body from the watch or the API; raises SpecError when spec.room/agentName are missing."""
        meta = body.get("metadata") or {}
        spec = DispatchSpec.from_body(body.get("spec") or {}, default_ttl)
        return cls(
            ref=ObjectRef(str(meta.get("namespace", "")), str(meta.get("name", ""))),
            uid=str(meta.get("uid", "")),
            spec=spec,
            created=_parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
            status=compact(dict(body.get("status") or {})),
            resource_version=str(meta.get("resourceVersion", "")),
            generation=int(meta.get("generation") or 0),
            deleting=bool(meta.get("deletionTimestamp")),
        )
