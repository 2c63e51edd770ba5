"""Lifecycle over time: an in-memory index of objects, the periodic sweep and per-room refreshes.

The sweep costs one ``ListRooms`` for every object's learner count, plus ``ListParticipants`` only
for rooms where learners wait and an agent is not known to be present (or for every room with
learners when webhooks are not arriving), plus ``ListDispatch`` only for rooms no object references
(orphan search). Webhooks refresh one room at once with one ``ListParticipants``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from loqua_operator import lifecycle
from loqua_operator.dispatcher import Dispatcher
from loqua_operator.kube import Kube
from loqua_operator.livekit_gateway import LiveKitError, LiveKitGateway, sweep_calls
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import DispatchKey, DispatchSpec, ObjectRef, ObservedDispatch
from loqua_operator.settings import OperatorSettings
from loqua_operator.status import parse_iso

log = logging.getLogger("loqua_operator.lifecycle")
ORPHAN_CHECK_CONCURRENCY = 8
SWEEP_CONCURRENCY = 16


def object_view(body: dict[str, Any], default_ttl: int) -> lifecycle.ObjectView | None:
    spec = body.get("spec") or {}
    meta = body.get("metadata") or {}
    if not spec.get("room") or not spec.get("agentName"):
        return None
    ttl = spec.get("ttlSeconds")
    created = parse_iso(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC)
    return lifecycle.ObjectView(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        key=DispatchKey(spec["room"], spec["agentName"]),
        ttl_seconds=default_ttl if ttl is None else int(ttl),
        created=created,
        status=dict(body.get("status") or {}),
        generation=int(meta.get("generation") or 0),
        deleting=bool(meta.get("deletionTimestamp")),
    )


class ObjectIndex:
    """Objects as last seen on the watch stream, by reference and by room."""

    def __init__(self) -> None:
        self._objects: dict[ObjectRef, lifecycle.ObjectView] = {}
        self._bodies: dict[ObjectRef, dict[str, Any]] = {}
        self._by_room: dict[str, set[ObjectRef]] = {}

    def upsert(self, view: lifecycle.ObjectView, body: dict[str, Any]) -> None:
        ref = ObjectRef(view.namespace, view.name)
        self.remove(ref)
        self._objects[ref] = view
        self._bodies[ref] = body
        self._by_room.setdefault(view.key.room, set()).add(ref)

    def remove(self, ref: ObjectRef) -> None:
        old = self._objects.pop(ref, None)
        self._bodies.pop(ref, None)
        if old is not None:
            refs = self._by_room.get(old.key.room, set())
            refs.discard(ref)
            if not refs:
                self._by_room.pop(old.key.room, None)

    def note_status(self, ref: ObjectRef, patch: dict[str, Any]) -> None:
        """Apply our own status patch locally so the next decision sees it before the watch does."""
        view = self._objects.get(ref)
        if view is None:
            return
        merged = {**view.status, **patch}
        merged = {k: v for k, v in merged.items() if v is not None}
        self._objects[ref] = lifecycle.ObjectView(**{**view.__dict__, "status": merged})

    def get(self, ref: ObjectRef) -> lifecycle.ObjectView | None:
        return self._objects.get(ref)

    def body(self, ref: ObjectRef) -> dict[str, Any] | None:
        return self._bodies.get(ref)

    def in_room(self, room: str) -> list[lifecycle.ObjectView]:
        return [self._objects[r] for r in sorted(self._by_room.get(room, ()))]

    def all(self) -> list[lifecycle.ObjectView]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)


@dataclass
class SweepReport:
    objects: int = 0
    rooms: int = 0
    livekit_calls: int = 0
    expired: int = 0
    redispatched: int = 0
    orphans_removed: int = 0
    errors: int = 0
    seconds: float = 0.0


class LifecycleTracker:
    def __init__(
        self,
        settings: OperatorSettings,
        gateway: LiveKitGateway,
        dispatcher: Dispatcher,
        kube: Kube,
        metrics: OperatorMetrics,
    ) -> None:
        self.settings = settings
        self.index = ObjectIndex()
        self._gw = gateway
        self._dispatcher = dispatcher
        self._kube = kube
        self._metrics = metrics
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._room_tasks: dict[str, asyncio.Task[None]] = {}
        self._room_dirty: set[str] = set()
        self.last_webhook: float = 0.0  # monotonic time of the last verified webhook
        self.last_report = SweepReport()
        self._orphan_checked: dict[str, float] = {}  # room -> monotonic time of its last orphan check

    # ---- index feed (from the watch stream) ------------------------------------------------------
    def observe_body(self, body: dict[str, Any], deleted: bool) -> None:
        meta = body.get("metadata") or {}
        ref = ObjectRef(meta.get("namespace", ""), meta.get("name", ""))
        view = None if deleted else object_view(body, self.settings.agent_ttl_seconds)
        if view is None:
            self.index.remove(ref)
        else:
            self.index.upsert(view, body)

    # ---- acting on one object ----------------------------------------------------------------------
    def _spec(self, view: lifecycle.ObjectView) -> DispatchSpec:
        body = self.index.body(ObjectRef(view.namespace, view.name)) or {}
        spec = body.get("spec") or {}
        return DispatchSpec(view.key.room, view.key.agent_name, spec.get("metadata") or "", view.ttl_seconds)

    def _event(self, view: lifecycle.ObjectView, type_: str, reason: str, message: str) -> None:
        body = self.index.body(ObjectRef(view.namespace, view.name))
        if body is None:
            return

        async def post() -> None:
            try:
                await self._kube.post_event(body, type_, reason, message)
            except Exception as exc:  # an Event is best effort; the status carries the state
                log.debug("could not post event %s: %s", reason, type(exc).__name__)

        task = asyncio.create_task(post())
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def apply(self, view: lifecycle.ObjectView, room: lifecycle.RoomView, source: str) -> str | None:
        """Decide and act for one object; returns what was done (for the report), or None."""
        if not view.bound or view.deleting:
            return None
        ref = ObjectRef(view.namespace, view.name)
        now = dt.datetime.now(dt.UTC)
        decision = lifecycle.decide(
            view, room, now, self.settings.agent_presence_grace_seconds, self.settings.max_redispatches
        )
        patch = dict(decision.status)
        done: str | None = None
        if decision.rebind:
            current = {k: v for k, v in view.status.items() if k not in ("dispatchId", "roomSid")}
            outcome = await self._dispatcher.bind(self._spec(view), current, view.generation)
            patch.update(outcome.status)
            if outcome.error is None:
                patch["reused"] = False
            for event in outcome.events:
                self._event(view, event.type, event.reason, event.message)
            done = "rebound"
        elif decision.redispatch:
            created = await self._dispatcher.redispatch(self._spec(view), view.status.get("dispatchId"))
            patch["dispatchId"] = created.id
            patch["reused"] = False
            done = "redispatched"
        for type_, reason, message in decision.events:
            if decision.redispatch and reason == "Redispatched":
                message = f"{message}: new dispatch {patch.get('dispatchId')}"
            self._event(view, type_, reason, message)
        if patch:
            if not await self._kube.patch_status(ref, patch):
                self.index.remove(ref)
                return None
            self.index.note_status(ref, patch)
            self._metrics.status_updates.labels(source).inc()
            if "phase" in patch:
                self._metrics.phases.set(view.namespace, view.name, patch["phase"])
        if decision.expire:
            # The finalizer deletes the LiveKit dispatch (unless another object shares it) before
            # the object goes, so the order is: dispatch, then object.
            if await self._kube.delete_object(ref, uid=view.uid or None):
                self._metrics.expired.inc()
                log.info(
                    "TTL expired; deleting",
                    extra={"fields": {"namespace": ref.namespace, "name": ref.name, "room": view.key.room}},
                )
            done = "expired"
        return done

    # ---- one room (webhook path) -----------------------------------------------------------------
    async def room_view(self, room: str) -> lifecycle.RoomView:
        rooms = await self._gw.list_rooms([room])
        if not rooms:
            return lifecycle.GONE
        participants = await self._gw.list_participants(room)
        return lifecycle.room_view_from_participants(rooms[0].sid, participants)

    async def refresh_room(self, room: str, gone: bool = False) -> None:
        objects = self.index.in_room(room)
        if not objects:
            return
        view = lifecycle.GONE if gone else await self.room_view(room)
        for obj in objects:
            try:
                await self.apply(obj, view, "webhook")
            except Exception as exc:  # one object's failure must not stop the others
                self._metrics.sweep_errors.inc()
                log.warning(
                    "lifecycle update failed: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"fields": {"room": room, "name": obj.name}},
                )

    def schedule_refresh(self, room: str, gone: bool = False) -> None:
        """Refresh a room soon; coalesces bursts of events for the same room into one refresh."""
        task = self._room_tasks.get(room)
        if task is not None and not task.done():
            self._room_dirty.add(room)
            return

        async def run() -> None:
            try:
                await self.refresh_room(room, gone=gone)
                while room in self._room_dirty:
                    self._room_dirty.discard(room)
                    await self.refresh_room(room)
            except LiveKitError as exc:
                self._metrics.sweep_errors.inc()
                log.warning("room refresh failed: %s", exc, extra={"fields": {"room": room}})
            finally:
                self._room_tasks.pop(room, None)

        self._room_tasks[room] = asyncio.create_task(run(), name=f"refresh-{room}")

    # ---- the periodic sweep ----------------------------------------------------------------------
    def webhooks_healthy(self) -> bool:
        return time.monotonic() - self.last_webhook < 2 * self.settings.cleanup_interval_seconds

    async def sweep(self) -> SweepReport:
        started = time.perf_counter()
        counter = [0]
        token = sweep_calls.set(counter)
        report = SweepReport(objects=len(self.index))
        try:
            await self._sweep(report)
        except Exception as exc:
            report.errors += 1
            self._metrics.sweep_errors.inc()
            log.warning("sweep failed (will retry next interval): %s: %s", type(exc).__name__, exc)
        finally:
            sweep_calls.reset(token)
        report.seconds = time.perf_counter() - started
        report.livekit_calls = counter[0]
        self._metrics.sweep_duration.observe(report.seconds)
        self._metrics.sweep_livekit_calls.set(report.livekit_calls)
        self.last_report = report
        log.debug("sweep: %s", report)
        return report

    async def _sweep(self, report: SweepReport) -> None:
        objects = self.index.all()
        rooms = {r.name: r for r in await self._gw.list_rooms()}
        report.rooms = len(rooms)
        learners = {name: int(r.num_participants) for name, r in rooms.items()}
        # Presence lookups: only where learners wait and no agent is known to be there (webhooks keep
        # presence current); without webhooks, every room with learners is checked.
        if self.webhooks_healthy():
            need = lifecycle.rooms_needing_presence(objects, learners)
        else:
            need = {o.key.room for o in objects if o.bound and learners.get(o.key.room, 0) > 0}
        views: dict[str, lifecycle.RoomView] = {}
        for name, r in rooms.items():
            if name in need:
                try:
                    views[name] = lifecycle.room_view_from_participants(r.sid, await self._gw.list_participants(name))
                except LiveKitError as exc:
                    report.errors += 1
                    self._metrics.sweep_errors.inc()
                    log.warning("ListParticipants failed: %s", exc, extra={"fields": {"room": name}})
                    views[name] = lifecycle.RoomView(True, r.sid, learners[name], None)
            else:
                views[name] = lifecycle.RoomView(True, r.sid, learners[name], None)
        limit = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def one(obj: lifecycle.ObjectView) -> None:
            async with limit:
                try:
                    done = await self.apply(obj, views.get(obj.key.room, lifecycle.GONE), "sweep")
                except Exception as exc:
                    report.errors += 1
                    self._metrics.sweep_errors.inc()
                    log.warning(
                        "lifecycle update failed: %s: %s",
                        type(exc).__name__,
                        exc,
                        extra={"fields": {"namespace": obj.namespace, "name": obj.name}},
                    )
                    return
            if done == "expired":
                report.expired += 1
            elif done == "redispatched":
                report.redispatched += 1

        # Status writes go out a few at a time: after a burst every object gets idleSince/expiresAt.
        await asyncio.gather(*(one(obj) for obj in objects))
        await self._remove_orphans(rooms, objects, report)

    async def _remove_orphans(
        self, rooms: dict[str, Any], objects: list[lifecycle.ObjectView], report: SweepReport
    ) -> None:
        managed = set(self.settings.managed_agent_names) or {o.key.agent_name for o in objects}
        if not managed:
            return
        referenced = {o.key for o in objects}
        referenced_rooms = {k.room for k in referenced}
        now = dt.datetime.now(dt.UTC)
        clock = time.monotonic()
        # A dispatch must be ORPHAN_GRACE_SECONDS old before it is removed, so each unreferenced room
        # needs a look only once per grace period; at most ORPHAN_ROOMS_PER_SWEEP rooms are looked at
        # per sweep (least recently checked first), a few at a time: calls and time stay bounded.
        recheck = max(self.settings.orphan_grace_seconds, self.settings.cleanup_interval_seconds)
        self._orphan_checked = {r: t for r, t in self._orphan_checked.items() if r in rooms}
        due = [
            name
            for name in rooms
            if name not in referenced_rooms and clock - self._orphan_checked.get(name, -recheck) >= recheck
        ]
        due.sort(key=lambda name: self._orphan_checked.get(name, float("-inf")))
        due = due[: self.settings.orphan_rooms_per_sweep]
        for name in due:
            self._orphan_checked[name] = clock
        limit = asyncio.Semaphore(ORPHAN_CHECK_CONCURRENCY)

        async def check(name: str) -> None:
            async with limit:
                try:
                    dispatches = await self._dispatcher.observe(name)
                except LiveKitError as exc:
                    # livekit-server keeps listing a room for a while after no node hosts it any more
                    # (no participant, no dispatch) and answers ListDispatch for it only with a timeout.
                    log.debug("ListDispatch gave no answer for room %s: %s", name, exc.code)
                    return
                for orphan in lifecycle.orphans(
                    name, dispatches, referenced, managed, now, self.settings.orphan_grace_seconds
                ):
                    await self._remove_orphan(name, orphan, report)

        await asyncio.gather(*(check(name) for name in due))

    async def _remove_orphan(self, room: str, orphan: ObservedDispatch, report: SweepReport) -> None:
        self._metrics.orphans_found.inc()
        try:
            if await self._gw.delete_dispatch(room, orphan.id):
                self._metrics.orphans_removed.inc()
                self._metrics.dispatches_deleted.labels("orphan").inc()
                report.orphans_removed += 1
                log.info(
                    "removed orphan dispatch",
                    extra={"fields": {"room": room, "agent": orphan.agent_name, "dispatch_id": orphan.id}},
                )
        except LiveKitError as exc:
            report.errors += 1
            self._metrics.sweep_errors.inc()
            log.warning("could not delete orphan: %s", exc, extra={"fields": {"dispatch_id": orphan.id}})

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every CLEANUP_INTERVAL_MS until ``stop`` is set; errors never end the loop."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.cleanup_interval_seconds)
            if stop.is_set():
                break
            await self.sweep()
