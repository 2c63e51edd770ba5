"""Bind objects to LiveKit dispatches and release them: the operator's domain service.

The reconciler calls this; it observes LiveKit through the gateway, asks the pure planners what to
do, acts, and reports back a status patch plus the Events to post. One asyncio lock per
(room, agent name) serialises every LiveKit call on the same dispatch within the (leader) process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from loqua_operator import decisions, status
from loqua_operator.livekit_gateway import LiveKitError, LiveKitGateway, reason_of, with_retries
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import DispatchKey, DispatchSpec, ObjectRef, ObservedDispatch
from loqua_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    error: LiveKitError | None = None

    @property
    def permanent(self) -> bool:
        """The error can never pass by retrying (invalid argument, permission denied …)."""
        return self.error is not None and not self.error.retryable


def room_timeouts(ttl_seconds: int) -> tuple[int, int]:
    """(empty_timeout, departure_timeout) so LiveKit keeps the room through the reconnect window."""
    keep = max(ttl_seconds, 20) + 60  # LiveKit's defaults are 300 s / 20 s; never go below them
    return max(keep, 300), keep


class Dispatcher:
    def __init__(self, gateway: LiveKitGateway, metrics: OperatorMetrics, settings: OperatorSettings) -> None:
        self._gw = gateway
        self._metrics = metrics
        self._settings = settings
        # A lock lives while someone holds or waits for it: an idle (room, agent name) costs nothing.
        self._locks: weakref.WeakValueDictionary[DispatchKey, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, key: DispatchKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def observe(self, room: str) -> list[ObservedDispatch]:
        try:
            return await self._gw.list_dispatches(room)
        except LiveKitError as exc:
            if exc.code == "not_found":  # no such room: no dispatches
                return []
            raise

    async def observe_if_room_exists(self, room: str) -> list[ObservedDispatch]:
        """Dispatches of a room that may be gone: livekit-server answers ListDispatch for an unknown
        room only with a timeout, so ask ListRooms first (closing a room deletes its dispatches)."""
        if not await self._gw.list_rooms([room]):
            return []
        return await self.observe(room)

    async def _remove_duplicates(self, room: str, duplicates: Iterable[ObservedDispatch]) -> list[str]:
        removed = []
        for dup in duplicates:
            if await self._gw.delete_dispatch(room, dup.id):
                self._metrics.duplicates_removed.inc()
                self._metrics.dispatches_deleted.labels("duplicate").inc()
            removed.append(dup.id)
        return removed

    async def _bind_once(
        self, spec: DispatchSpec, current: dict[str, Any]
    ) -> tuple[decisions.DispatchPlan, ObservedDispatch, list[str], str]:
        # The room must exist first: livekit-server cannot answer ListDispatch for an unknown room
        # (it times out), and creating it ourselves sets timeouts that outlast the TTL.
        empty_timeout, departure_timeout = room_timeouts(spec.ttl_seconds)
        room_sid = await self._gw.ensure_room(spec.room, empty_timeout, departure_timeout)
        observed = await self.observe(spec.room)
        plan = decisions.plan_dispatch(spec.agent_name, observed, current.get("dispatchId"), current.get("reused"))
        removed = await self._remove_duplicates(spec.room, plan.delete)
        if plan.create:
            kept = await self._gw.create_dispatch(spec.room, spec.agent_name, spec.metadata)
        else:
            assert plan.keep is not None
            kept = plan.keep
        return plan, kept, removed, room_sid

    async def bind(self, spec: DispatchSpec, current: dict[str, Any], generation: int) -> Outcome:
        """Make sure one live dispatch serves ``spec`` and record it in the status."""
        async with self.lock(spec.key):
            try:
                plan, kept, removed, room_sid = await with_retries(
                    lambda: self._bind_once(spec, current),
                    attempts=self._settings.livekit_retry_attempts,
                    base_seconds=self._settings.livekit_retry_base_seconds,
                )
            except LiveKitError as exc:
                self._metrics.dispatch_failures.inc()
                now = dt.datetime.now(dt.UTC)
                then = "retrying with backoff" if exc.retryable else "not retried: fix the cause, then re-apply"
                return Outcome(
                    status=status.failed_status(current, str(exc), reason_of(exc), generation, now),
                    events=[Event("Warning", "DispatchFailed", f"{exc}; {then}")],
                    error=exc,
                )
        events: list[Event] = []
        if removed:
            events.append(
                Event(
                    "Warning",
                    "DuplicatesRemoved",
                    f"kept dispatch {kept.id} (most recent) and deleted {len(removed)} duplicate(s): "
                    + ", ".join(removed),
                )
            )
        first_binding = current.get("dispatchId") != kept.id
        if first_binding:
            if plan.create:
                self._metrics.dispatches_created.inc()
                events.append(
                    Event(
                        "Normal",
                        "DispatchCreated",
                        f"created LiveKit dispatch {kept.id} for agent {spec.agent_name} in room {spec.room}",
                    )
                )
            else:
                self._metrics.dispatches_reused.inc()
                events.append(
                    Event(
                        "Normal",
                        "DispatchReused",
                        f"reusing live LiveKit dispatch {kept.id} for agent {spec.agent_name} in room {spec.room}",
                    )
                )
        now = dt.datetime.now(dt.UTC)
        new_status = status.dispatched_status(current, kept.id, plan.reused, generation, now)
        new_status["roomSid"] = room_sid
        return Outcome(status=new_status, events=events)

    async def redispatch(self, spec: DispatchSpec, dead_id: str | None) -> tuple[ObservedDispatch, str]:
        """Replace a dispatch whose agent never showed up: delete it first, then create a new one,
        so the room never holds two dispatches of this agent at once. If another object sharing the
        room already replaced it, adopt that replacement (no second new agent job)."""
        async with self.lock(spec.key):

            async def once() -> tuple[ObservedDispatch, str, bool]:
                observed = await self.observe_if_room_exists(spec.room)
                adopt = decisions.replacement_of(spec.agent_name, observed, dead_id)
                for d in decisions.ours(observed, spec.agent_name):
                    if (adopt is None or d.id != adopt.id) and await self._gw.delete_dispatch(spec.room, d.id):
                        self._metrics.dispatches_deleted.labels("redispatch").inc()
                if adopt is not None:
                    return adopt, "", False
                empty_timeout, departure_timeout = room_timeouts(spec.ttl_seconds)
                sid = await self._gw.ensure_room(spec.room, empty_timeout, departure_timeout)
                return await self._gw.create_dispatch(spec.room, spec.agent_name, spec.metadata), sid, True

            created, sid, new = await with_retries(
                once,
                attempts=self._settings.livekit_retry_attempts,
                base_seconds=self._settings.livekit_retry_base_seconds,
            )
        if not new:
            log.info(
                "dispatch %s was already replaced by %s (a shared room): adopted",
                dead_id,
                created.id,
                extra={"fields": {"room": spec.room, "agent": spec.agent_name, "dispatch_id": created.id}},
            )
            return created, sid
        self._metrics.redispatches.inc()
        self._metrics.dispatches_created.inc()
        log.info(
            "replaced dispatch %s by %s",
            dead_id,
            created.id,
            extra={"fields": {"room": spec.room, "agent": spec.agent_name, "dispatch_id": created.id}},
        )
        return created, sid

    async def delete_unreferenced(self, room: str, orphan: ObservedDispatch) -> bool:
        """Delete an orphan under its (room, agent name) lock, so no bind of that key is mid-way."""
        async with self.lock(orphan.key):
            return await self._gw.delete_dispatch(room, orphan.id)

    async def release(
        self,
        me: ObjectRef,
        spec: DispatchSpec,
        holders: Callable[[], Awaitable[Iterable[tuple[ObjectRef, bool]]]],
    ) -> Outcome:
        """The finalizer's work: delete the LiveKit dispatch unless another object still uses it.
        Who else holds it is read (fresh, from the API server) under the same lock as the deletion."""
        async with self.lock(spec.key):
            current_holders = await holders()
            observed = await with_retries(
                lambda: self.observe_if_room_exists(spec.room),
                attempts=self._settings.livekit_retry_attempts,
                base_seconds=self._settings.livekit_retry_base_seconds,
            )
            plan = decisions.plan_release(me, spec.key, observed, current_holders)
            if plan.shared_with:
                names = ", ".join(f"{r.namespace}/{r.name}" for r in plan.shared_with)
                return Outcome(events=[Event("Normal", "DispatchKept", f"dispatch kept: still used by {names}")])
            deleted = []
            for dispatch in plan.delete:
                gone = await with_retries(
                    lambda d=dispatch: self._gw.delete_dispatch(spec.room, d.id),
                    attempts=self._settings.livekit_retry_attempts,
                    base_seconds=self._settings.livekit_retry_base_seconds,
                )
                if gone:
                    self._metrics.dispatches_deleted.labels("finalizer").inc()
                deleted.append(dispatch.id)
        if not deleted:
            return Outcome(events=[Event("Normal", "DispatchGone", "LiveKit had no dispatch left to delete")])
        return Outcome(events=[Event("Normal", "DispatchDeleted", f"deleted LiveKit dispatch {', '.join(deleted)}")])
