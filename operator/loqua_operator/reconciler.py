"""The one reconcile path per object: the only writer of its status and the only caller of LiveKit for it.

Every trigger comes here — the kopf handlers (create, spec change, resume, delete), webhook refreshes
and the periodic sweep — and every call takes the object's lock first, then reads the object afresh
from the index, so two triggers never act on the same object at once or on a stale copy. LiveKit
calls are serialised per (room, agent name) inside the dispatcher. Decisions are the pure functions
in ``decisions`` and ``lifecycle``; this module only sequences I/O around them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loqua_operator import events, lifecycle
from loqua_operator.dispatcher import Dispatcher, Event, Outcome
from loqua_operator.index import ObjectIndex
from loqua_operator.kube import Kube
from loqua_operator.lifecycle import GONE, RoomView
from loqua_operator.livekit_gateway import LiveKitError
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import AgentDispatch, ObjectRef
from loqua_operator.rooms import RoomObserver
from loqua_operator.settings import OperatorSettings

log = logging.getLogger("loqua_operator.reconcile")


def post_event(obj: AgentDispatch, type_: str, reason: str, message: str) -> None:
    events.post(obj.body, type_, reason, message)


def fields(obj: AgentDispatch, **extra: Any) -> dict[str, Any]:
    return {"namespace": obj.namespace, "name": obj.name, "room": obj.key.room, "agent": obj.key.agent_name, **extra}


@dataclass(frozen=True)
class BindResult:
    outcome: Outcome | None  # None: nothing to do (resumed a bound object, or it is gone)
    obj: AgentDispatch | None


class Reconciler:
    def __init__(
        self,
        settings: OperatorSettings,
        dispatcher: Dispatcher,
        kube: Kube,
        index: ObjectIndex,
        rooms: RoomObserver,
        metrics: OperatorMetrics,
    ) -> None:
        self.settings = settings
        self._dispatcher = dispatcher
        self._kube = kube
        self.index = index
        self._rooms = rooms
        self._metrics = metrics
        self._locks: weakref.WeakValueDictionary[ObjectRef, asyncio.Lock] = weakref.WeakValueDictionary()
        self._applied: dict[ObjectRef, float] = {}  # monotonic time of the newest room view applied

    def forget(self, ref: ObjectRef) -> None:
        """The object left the index."""
        self._applied.pop(ref, None)

    def lock(self, ref: ObjectRef) -> asyncio.Lock:
        lock = self._locks.get(ref)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[ref] = lock
        return lock

    # ---- the one status writer --------------------------------------------------------------------
    async def _write(self, obj: AgentDispatch, patch: Mapping[str, Any], source: str) -> AgentDispatch | None:
        """Write the fields that differ from the object's status; nothing at all when none does."""
        changed = {k: v for k, v in patch.items() if obj.status.get(k) != v}
        if not changed:
            return obj
        written = await self._kube.patch_status(obj.ref, changed)
        if written is None:
            self.index.remove(obj.ref)
            return None
        self._metrics.status_updates.labels(source).inc()
        return self.index.observe(written) or obj

    # ---- create / spec change / resume ------------------------------------------------------------
    async def bind(self, body: Mapping[str, Any], resuming: bool) -> BindResult:
        async with self.lock(ObjectRef(body["metadata"]["namespace"], body["metadata"]["name"])):
            obj = self.index.observe(body)
            if obj is None or obj.deleting:
                return BindResult(None, obj)
            st = obj.status
            if resuming and obj.bound and st.get("roomSid") and st.get("observedGeneration") == obj.generation:
                # Cheap resume: a bound object is checked by the first sweep, with one ListRooms for
                # all of them; nothing is created for a live dispatch or for a room nobody is in.
                return BindResult(None, obj)
            outcome = await self._dispatcher.bind(obj.spec, dict(st), obj.generation)
            patch = outcome.status
            if outcome.error is None:
                bound = obj.with_status({**st, **outcome.status})
                patch = {**patch, **self._quiet(bound)}
            written = await self._write(obj, patch, "bind")
            self._post(written or obj, outcome.events)
            return BindResult(outcome, written)

    # ---- lifecycle step (webhook refresh, sweep) --------------------------------------------------
    async def step(self, ref: ObjectRef, room: RoomView, source: str) -> str | None:
        """Decide and act for one object given its room; returns what was done, or None."""
        async with self.lock(ref):
            obj = self.index.get(ref)
            if obj is None or obj.deleting:
                return None
            if room.seen and room.seen < self._applied.get(ref, 0.0):
                return None  # a newer look at this room was applied already (a webhook overtook a sweep)
            self._applied[ref] = max(room.seen, self._applied.get(ref, 0.0))
            now = dt.datetime.now(dt.UTC)
            decision = self._decide(obj, room, now)
            if decision.expire:
                # Act on fresh state only: re-read the room's learners right before deleting.
                try:
                    room = await self._rooms.room(obj.key.room)
                except LiveKitError as exc:
                    if exc.retryable or obj.bound:
                        raise  # an outage: nothing expires while we cannot see the room
                    room = GONE  # LiveKit refuses us for good: a never-bound object cannot be served anyway
                self._applied[ref] = max(room.seen, self._applied.get(ref, 0.0))
                decision = self._decide(obj, room, dt.datetime.now(dt.UTC))
            if not obj.bound and not decision.expire:
                return None
            patch = dict(decision.status)
            done: str | None = None
            events = [Event(*e) for e in decision.events]
            if decision.rebind:
                current = {k: v for k, v in obj.status.items() if k not in ("dispatchId", "roomSid", "dispatchedAt")}
                outcome = await self._dispatcher.bind(obj.spec, current, obj.generation)
                patch.update(outcome.status)
                if outcome.error is None:
                    patch.update(reused=False, agentPresent=False, agentAbsentSince=None, agentLeftTime=None)
                events += outcome.events
                done = "rebound"
            elif decision.redispatch:
                created, sid = await self._dispatcher.redispatch(obj.spec, obj.status.get("dispatchId"))
                patch.update(dispatchId=created.id, reused=False, roomSid=sid or obj.status.get("roomSid"))
                events = [
                    Event(e.type, e.reason, f"{e.message}: new dispatch {created.id}")
                    if e.reason == "Redispatched"
                    else e
                    for e in events
                ]
                done = "redispatched"
            if decision.expire:
                events = [e for e in events if e.reason == "Expired"]
            written = await self._write(obj, patch, source)
            if written is None:
                return None
            self._post(written, events)
            if decision.expire:
                # With a resourceVersion precondition: if anything changed the object since we looked
                # (a learner's return written by a webhook, a spec change), the deletion is refused.
                if await self._kube.delete_object(written.ref, written.resource_version):
                    self._metrics.expired.inc()
                    log.info("TTL expired; deleting", extra={"fields": fields(written)})
                    return "expired"
                return None
            return done

    def _quiet(self, obj: AgentDispatch) -> dict[str, Any]:
        settings = self.settings
        now = dt.datetime.now(dt.UTC)
        return lifecycle.quiet_room_status(obj, now, settings.agent_presence_grace_seconds, settings.max_redispatches)

    def _decide(self, obj: AgentDispatch, room: RoomView, now: dt.datetime) -> lifecycle.LifecycleDecision:
        return lifecycle.decide(
            obj, room, now, self.settings.agent_presence_grace_seconds, self.settings.max_redispatches
        )

    # ---- delete (finalizer) -----------------------------------------------------------------------
    async def release(self, obj: AgentDispatch) -> Outcome:
        async with self.lock(obj.ref):
            try:
                outcome = await self._dispatcher.release(obj.ref, obj.spec, lambda: self._kube.holders(obj.key))
            except LiveKitError as exc:
                if exc.retryable or obj.status.get("dispatchId"):
                    raise
                # Never bound, and LiveKit refuses the operator for good: nothing to release, and a
                # finalizer that waits for a fix nobody is making would leave the object stuck.
                outcome = Outcome(events=[Event("Warning", "ReleaseSkipped", f"never bound; {exc}")])
            # Returning lets kopf remove the finalizer (the object goes): a write like any other, though
            # it made no LiveKit call when the dispatch is shared or already gone. Only the leader may.
            self._kube.gate.check(f"releasing {obj.namespace}/{obj.name}")
            self._post(obj, outcome.events)
            return outcome

    def _post(self, obj: AgentDispatch, events: list[Event]) -> None:
        for event in events:
            post_event(obj, event.type, event.reason, event.message)
