"""Pure decisions: observed LiveKit state and object state in, actions out. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from loqua_operator.model import DispatchKey, ObjectRef, ObservedDispatch


@dataclass(frozen=True)
class DispatchPlan:
    """What to do so that exactly one live dispatch serves (room, agent name)."""

    create: bool
    keep: ObservedDispatch | None
    delete: tuple[ObservedDispatch, ...] = field(default_factory=tuple)
    reused: bool = False

    @property
    def duplicates(self) -> int:
        return len(self.delete)


def ours(observed: Iterable[ObservedDispatch], agent_name: str) -> list[ObservedDispatch]:
    """Dispatches for this agent name. The room's hidden default dispatch (empty name) never matches,
    because ``agentName`` is a required DNS label."""
    return [d for d in observed if d.agent_name == agent_name and agent_name]


def newest_first(dispatches: Iterable[ObservedDispatch]) -> list[ObservedDispatch]:
    # Ties on created_at (same nanosecond, or 0 when unknown) fall back to the id for a stable choice.
    return sorted(dispatches, key=lambda d: (d.created_at, d.id), reverse=True)


def plan_dispatch(
    agent_name: str,
    observed: Sequence[ObservedDispatch],
    current_dispatch_id: str | None,
    current_reused: bool | None,
) -> DispatchPlan:
    """Reuse the most recent live dispatch of ``agent_name``, delete the others, or create one.

    ``reused`` records how the object first got its dispatch: true when one already existed, false
    when the operator created it. It is kept as long as the object stays on the same dispatch.
    """
    candidates = newest_first(ours(observed, agent_name))
    if not candidates:
        return DispatchPlan(create=True, keep=None, reused=False)
    keep, *duplicates = candidates
    same_dispatch = bool(current_dispatch_id) and keep.id == current_dispatch_id
    reused = bool(current_reused) if same_dispatch else True
    return DispatchPlan(create=False, keep=keep, delete=tuple(duplicates), reused=reused)


@dataclass(frozen=True)
class ReleasePlan:
    """What the finalizer does with the LiveKit dispatch(es) of a deleted object."""

    delete: tuple[ObservedDispatch, ...]
    shared_with: tuple[ObjectRef, ...]


def plan_release(
    me: ObjectRef,
    key: DispatchKey,
    observed: Sequence[ObservedDispatch],
    holders: Iterable[tuple[ObjectRef, bool]],
) -> ReleasePlan:
    """Delete the (room, agent) dispatches unless another live object still uses them.

    ``holders`` are the objects that reference ``key``, each with whether it is being deleted.
    """
    others = tuple(sorted(ref for ref, deleting in holders if ref != me and not deleting))
    if others:
        return ReleasePlan(delete=(), shared_with=others)
    return ReleasePlan(delete=tuple(newest_first(ours(observed, key.agent_name))), shared_with=())


def retry_delay(retry: int, base: float = 15.0, cap: float = 300.0) -> float:
    """The longer backoff between reconcile attempts once in-call retries are spent."""
    return min(cap, base * (2 ** max(0, retry)))


def replacement_of(
    agent_name: str, observed: Sequence[ObservedDispatch], dead_id: str | None
) -> ObservedDispatch | None:
    """When an object wants to replace its dead dispatch ``dead_id``: a different live dispatch of the
    agent means another object sharing (room, agent name) has just replaced it — adopt that one
    (the most recent) instead of deleting it and starting yet another agent job."""
    others = [d for d in newest_first(ours(observed, agent_name)) if d.id != dead_id]
    return others[0] if others and dead_id else None
