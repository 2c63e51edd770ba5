"""The periodic sweep, the safety net under webhooks: every ``CLEANUP_INTERVAL_MS`` one ``ListRooms``
for every object, a reconcile step per object, then the orphan search.

Cost per sweep: ``ListRooms`` once; ``ListParticipants`` only for rooms where learners wait and an
agent is not known to be present (every room with learners while no webhook arrived for two
intervals); ``ListDispatch`` only for rooms no object references (orphan search). At steady state it
writes nothing to Kubernetes (``loqua_operator_sweep_api_writes``).

The sweep never runs before the index holds a full listing, and it re-lists every
``RESYNC_EVERY_SWEEPS`` sweeps so that objects that vanished while the watch was not looking leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from loqua_operator import lifecycle, memory
from loqua_operator.index import ObjectIndex
from loqua_operator.kube import Kube, error_text, sweep_writes
from loqua_operator.livekit_gateway import LiveKitError, sweep_calls
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.orphans import OrphanSweeper
from loqua_operator.reconciler import Reconciler
from loqua_operator.rooms import RoomObserver
from loqua_operator.settings import OperatorSettings

log = logging.getLogger("loqua_operator.lifecycle")
SWEEP_CONCURRENCY = 16
RESYNC_EVERY_SWEEPS = 10


@dataclass
class SweepReport:
    objects: int = 0
    rooms: int = 0
    livekit_calls: int = 0
    api_writes: int = 0
    expired: int = 0
    redispatched: int = 0
    rebound: int = 0
    orphans_removed: int = 0
    errors: int = 0
    seconds: float = 0.0


class Sweeper:
    def __init__(
        self,
        settings: OperatorSettings,
        index: ObjectIndex,
        kube: Kube,
        rooms: RoomObserver,
        reconciler: Reconciler,
        orphans: OrphanSweeper,
        metrics: OperatorMetrics,
    ) -> None:
        self.settings = settings
        self.index = index
        self._kube = kube
        self._rooms = rooms
        self._reconciler = reconciler
        self._orphans = orphans
        self._metrics = metrics
        self.last_webhook: float = 0.0  # monotonic time of the last verified webhook
        self.last_report = SweepReport()
        self.sweeps = 0

    def webhooks_healthy(self) -> bool:
        return time.monotonic() - self.last_webhook < 2 * self.settings.cleanup_interval_seconds

    async def resync(self) -> None:
        """Merge a full, consistent listing into the index (marks it synced)."""
        since = self.index.mark()
        items = await self._kube.list_objects()
        vanished = self.index.merge_listing(items, since)
        if vanished:
            log.info("re-list: %d object(s) vanished while unobserved left the index", vanished)

    async def sweep(self) -> SweepReport:
        started = time.perf_counter()
        calls, writes = [0], [0]
        calls_token, writes_token = sweep_calls.set(calls), sweep_writes.set(writes)
        report = SweepReport(objects=len(self.index))
        try:
            await self._sweep(report)
        except Exception as exc:
            report.errors += 1
            self._metrics.sweep_errors.inc()
            log.warning("sweep failed (will retry next interval): %s: %s", type(exc).__name__, error_text(exc))
        finally:
            sweep_calls.reset(calls_token)
            sweep_writes.reset(writes_token)
        report.seconds = time.perf_counter() - started
        report.livekit_calls, report.api_writes = calls[0], writes[0]
        self._metrics.sweep_duration.observe(report.seconds)
        self._metrics.sweep_livekit_calls.set(report.livekit_calls)
        self._metrics.sweep_api_writes.set(report.api_writes)
        self.last_report = report
        self.sweeps += 1
        log.debug("sweep: %s", report)
        return report

    async def _sweep(self, report: SweepReport) -> None:
        objects = self.index.snapshot()
        try:
            rooms, seen = await self._rooms.rooms()
        except LiveKitError as exc:
            if not exc.retryable:
                # LiveKit refuses this operator for good (a wrong key): nothing can be served, but objects
                # that never bound still end when their TTL is up.
                gone = lifecycle.RoomView(exists=False, seen=time.monotonic())
                for obj in objects:
                    if not obj.bound:
                        with contextlib.suppress(Exception):
                            await self._reconciler.step(obj.ref, gone, "sweep")
            raise
        report.rooms = len(rooms)
        learners = {name: int(r.num_participants) for name, r in rooms.items()}
        need = lifecycle.rooms_needing_presence(objects, learners, {name: r.sid for name, r in rooms.items()})
        if not self.webhooks_healthy():
            need |= {o.key.room for o in objects if o.bound and learners.get(o.key.room, 0) > 0}
        views, failures = await self._rooms.with_presence(rooms, need, seen)
        report.errors += failures
        limit = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def one(obj_ref, room_name: str) -> None:  # type: ignore[no-untyped-def]
            async with limit:
                try:
                    gone = lifecycle.RoomView(exists=False, seen=seen)
                    done = await self._reconciler.step(obj_ref, views.get(room_name, gone), "sweep")
                except Exception as exc:
                    report.errors += 1
                    self._metrics.sweep_errors.inc()
                    log.warning(
                        "lifecycle update failed: %s: %s",
                        type(exc).__name__,
                        error_text(exc),
                        extra={"fields": {"namespace": obj_ref.namespace, "name": obj_ref.name}},
                    )
                    return
            if done == "expired":
                report.expired += 1
            elif done == "redispatched":
                report.redispatched += 1
            elif done == "rebound":
                report.rebound += 1

        await asyncio.gather(*(one(o.ref, o.key.room) for o in objects))
        removed, errors = await self._orphans.sweep(rooms, {o.key for o in objects})
        report.orphans_removed += removed
        report.errors += errors

    async def run(self, stop: asyncio.Event) -> None:
        """Sync the index, sweep at once (the cheap resume check), then every CLEANUP_INTERVAL_MS."""
        while not stop.is_set() and not self.index.synced.is_set():
            try:
                await self.resync()
            except Exception as exc:
                log.warning("initial listing failed (retrying): %s: %s", type(exc).__name__, error_text(exc))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)
        while not stop.is_set():
            await self.sweep()
            memory.trim()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.cleanup_interval_seconds)
            if not stop.is_set() and self.sweeps % RESYNC_EVERY_SWEEPS == 0:
                try:
                    await self.resync()
                except Exception as exc:
                    log.warning("re-list failed: %s: %s", type(exc).__name__, exc)
